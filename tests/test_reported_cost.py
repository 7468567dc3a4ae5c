"""The provider's own figure (issue 24, decision 0036): parsed to the last digit, preferred, stored with its source."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from chat.costs import pricing
from chat.costs.limits import month_spend
from chat.models import Conversation, ModelPrice, Status
from chat.models.choices import CostSource
from chat.streaming.providers import Timeouts, Turn, Usage, UsageUpdate, build_provider
from chat.streaming.providers.http import decode
from chat.streaming.providers.openai import ChunkParser, reported_cost
from tests.conftest import ROOT, ChatClient, stored_exchange, wait_for_status
from tests.fake_upstream import FakeUpstream, Scenario

EXACT = "0.000123456789"  # twelve places: a float's repr would do here, a cost column of ten would not


def usage_of(chunk: str) -> Usage:
    [event] = ChunkParser().feed(decode(chunk, exact=True))
    assert isinstance(event, UsageUpdate)
    return event.usage


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.000123456789", "0.000123456789"),
        ("0.00001234567890123", "0.00001234567890123"),  # more digits than a float holds, all kept
        ("3.6000000000000003e-05", "0.000036000000000000003"),  # a float's repr, as LiteLLM writes one
        ("2", "2"),
        ("0", "0"),
        ('"0.0042"', "0.0042"),
        ('" 0.5 "', "0.5"),
    ],
)
def test_a_reported_cost_is_read_from_the_json_text_without_float_rounding(raw: str, expected: str) -> None:
    usage = usage_of(f'{{"choices":[],"usage":{{"prompt_tokens":10,"completion_tokens":2,"cost":{raw}}}}}')
    assert usage.cost is not None
    assert f"{usage.cost:f}" == expected
    assert (usage.input_tokens, usage.output_tokens) == (10, 2)


def test_usage_without_a_cost_has_none() -> None:
    assert usage_of('{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2}}').cost is None
    assert usage_of('{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"cost":null}}').cost is None


def test_counts_written_with_a_fraction_are_still_counts() -> None:
    usage = usage_of('{"choices":[],"usage":{"prompt_tokens":10.0,"completion_tokens":2e0}}')
    assert (usage.input_tokens, usage.output_tokens) == (10, 2)


TOO_LONG = f'"{"1" * 65}"'  # a numeric string longer than any amount


@pytest.mark.parametrize(
    "raw",
    [
        "-0.01",
        '"-1"',
        '"abc"',
        '""',
        "true",
        "[1]",
        '{"usd":1}',
        "NaN",
        "Infinity",
        "1e6",
        "1000000.0",
        "1e400",
        TOO_LONG,
    ],
)
def test_a_bad_reported_cost_is_ignored_with_a_warning(raw: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chat.streaming.providers.openai"):
        usage = usage_of(f'{{"choices":[],"usage":{{"prompt_tokens":10,"completion_tokens":2,"cost":{raw}}}}}')
    assert usage.cost is None
    assert usage.output_tokens == 2  # the counts still count: the reply is priced by our prices
    assert "ignored the cost the provider reported" in caplog.text


def test_the_bound_is_below_a_million_dollars() -> None:
    assert reported_cost(Decimal("999999.999999")) == Decimal("999999.999999")
    assert reported_cost(1_000_000) is None
    assert reported_cost(Decimal("-0")) == 0


def openai_adapter(sim: FakeUpstream, *, usage_accounting: bool = False) -> Any:
    return build_provider(
        "openai",
        api_key="sk-test-key",
        base_url=sim.openai_base_url,
        timeouts=Timeouts(connect=2, idle=5),
        usage_accounting=usage_accounting,
    )


async def streamed_usage(provider: Any) -> Usage:
    messages = [Turn(role="user", content="Hello")]
    events = [e async for e in provider.stream(model="gpt-4o-mini", messages=messages, max_tokens=100)]
    return [e.usage for e in events if isinstance(e, UsageUpdate)][-1]


async def test_the_adapter_reads_the_cost_of_the_final_usage_chunk(sim: FakeUpstream, transport: str) -> None:
    sim.enqueue(Scenario(reported_cost=EXACT, split="byte"))
    usage = await streamed_usage(openai_adapter(sim))
    assert f"{usage.cost:f}" == EXACT
    assert not sim.log[0].asked_usage_accounting
    assert "usage" not in sim.log[0].body  # a strict server is never sent a field it may not know


async def test_usage_accounting_is_asked_for_only_when_configured(sim: FakeUpstream, transport: str) -> None:
    sim.enqueue(Scenario(reported_cost="0.95"))
    usage = await streamed_usage(openai_adapter(sim, usage_accounting=True))
    assert usage.cost == Decimal("0.95")
    assert sim.log[0].body["usage"] == {"include": True} and sim.log[0].asked_usage_accounting
    assert sim.log[0].body["stream_options"] == {"include_usage": True}


def setting_with(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in {"OPENAI_BASE_URL", "OPENAI_USAGE_ACCOUNTING"}}
    command = [sys.executable, "-c", "from project import settings; print(settings.OPENAI_USAGE_ACCOUNTING)"]
    return subprocess.run(command, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=True).stdout


def test_usage_accounting_defaults_on_for_openrouter_only() -> None:
    assert setting_with(OPENAI_BASE_URL="https://openrouter.ai/api/v1").strip() == "True"
    assert setting_with().strip() == "False"  # api.openai.com
    assert setting_with(OPENAI_BASE_URL="http://127.0.0.1:4000/v1").strip() == "False"  # e.g. a LiteLLM proxy
    assert setting_with(OPENAI_BASE_URL="https://openrouter.ai/api/v1", OPENAI_USAGE_ACCOUNTING="0").strip() == "False"
    assert setting_with(OPENAI_BASE_URL="http://127.0.0.1:4000/v1", OPENAI_USAGE_ACCOUNTING="1").strip() == "True"


COUNTS = {"input_tokens": 1200, "output_tokens": 40}
# gpt-4o-mini in the snapshot: $0.15/M input, $0.60/M output.
SNAPSHOT_COST = (1200 * Decimal("0.15") + 40 * Decimal("0.60")) / 1_000_000


@pytest.mark.django_db
def test_the_providers_figure_is_preferred_and_ours_kept() -> None:
    usage = Usage(**COUNTS, cost=Decimal(EXACT))
    priced = pricing.price_reply(provider="openai", model="gpt-4o-mini", usage=usage)
    assert priced == (Decimal(EXACT), SNAPSHOT_COST, CostSource.PROVIDER)
    # A figure past the column's twelve places is a float's noise: rounded off, in memory as in the row.
    usage = Usage(**COUNTS, cost=Decimal("0.0000360000000000000003"))
    assert pricing.price_reply(provider="openai", model="gpt-4o-mini", usage=usage).cost == Decimal("0.000036")


@pytest.mark.django_db
def test_without_a_figure_the_source_says_which_of_our_prices() -> None:
    usage = Usage(**COUNTS)
    assert pricing.price_reply(provider="openai", model="gpt-4o-mini", usage=usage) == (
        SNAPSHOT_COST,
        SNAPSHOT_COST,
        CostSource.SNAPSHOT,
    )
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        effective_from=datetime.now(UTC).date(),
        input_per_mtok=1,
        output_per_mtok=2,
    )
    table = (1200 * Decimal(1) + 40 * Decimal(2)) / 1_000_000
    assert pricing.price_reply(provider="openai", model="gpt-4o-mini", usage=usage) == (
        table,
        table,
        CostSource.PRICE_TABLE,
    )
    assert pricing.price_reply(provider="openai", model="local-llama", usage=usage) == (None, None, "")
    assert pricing.price_reply(provider="demo", model="demo", usage=usage) == (0, 0, CostSource.FREE)
    assert pricing.price_reply(provider="openai", model="gpt-4o-mini", usage=Usage(source="")) == (None, None, "")


live_db = pytest.mark.django_db(transaction=True)


@live_db
def test_a_provider_reported_cost_is_stored_to_the_last_digit(chat: ChatClient, sim: FakeUpstream) -> None:
    sim.enqueue(Scenario(reported_cost=EXACT, input_tokens=1200, output_tokens=40))
    reply, _ = chat.exchange(chat.conversation("openai:gpt-4o-mini"))
    assert reply.status == Status.COMPLETED
    assert f"{reply.cost.normalize():f}" == EXACT and reply.cost == Decimal(EXACT)
    assert reply.cost_source == CostSource.PROVIDER
    assert reply.computed_cost == SNAPSHOT_COST
    assert not sim.log[0].asked_usage_accounting  # the simulator is not OpenRouter: not asked by default


@live_db
def test_without_a_reported_cost_the_reply_is_priced_by_the_table_or_the_snapshot(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(input_tokens=1200, output_tokens=40))
    reply, _ = chat.exchange(chat.conversation("openai:gpt-4o-mini"))
    assert (reply.cost, reply.computed_cost, reply.cost_source) == (SNAPSHOT_COST, SNAPSHOT_COST, "snapshot")

    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        effective_from=datetime.now(UTC).date(),
        input_per_mtok=1,
        output_per_mtok=2,
    )
    sim.enqueue(Scenario(input_tokens=1200, output_tokens=40))
    reply, _ = chat.exchange(chat.conversation("openai:gpt-4o-mini"))
    assert (reply.cost, reply.cost_source) == (Decimal("0.00128"), "price_table")

    sim.enqueue(Scenario(input_tokens=1200, output_tokens=40))
    reply, _ = chat.exchange(chat.conversation("openai:local-llama"))
    assert (reply.cost, reply.computed_cost, reply.cost_source) == (None, None, "")


@live_db
def test_a_stopped_reply_without_its_final_chunk_is_priced_by_us(chat: ChatClient, sim: FakeUpstream) -> None:
    sim.enqueue(Scenario(tokens=400, interval=0.01, reported_cost=EXACT))
    reply = chat.ask(chat.conversation("openai:gpt-4o-mini"))
    chat.stream(reply, stop_after=lambda s: len(s.text()) > 20)  # the tab closes: the reply is cancelled
    reply = wait_for_status(reply, {Status.CANCELLED, Status.COMPLETED, Status.FAILED})
    assert reply.status == Status.CANCELLED and reply.usage_source == "estimated"
    assert reply.cost_source == "snapshot" and reply.cost == reply.computed_cost and reply.cost > 0


@live_db
def test_usage_accounting_is_asked_for_when_the_setting_is_on(server_factory, user, sim: FakeUpstream) -> None:
    client = ChatClient(server_factory(OPENAI_USAGE_ACCOUNTING="1"), user)
    try:
        sim.enqueue(Scenario(reported_cost="0.0021"))
        reply, _ = client.exchange(client.conversation("openai:gpt-4o-mini"))
    finally:
        client.close()
    assert sim.log[0].asked_usage_accounting and sim.log[0].body["usage"] == {"include": True}
    assert (reply.cost, reply.cost_source) == (Decimal("0.0021"), "provider")


@pytest.mark.django_db
def test_a_months_spend_counts_the_providers_figure(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user(username="payer")
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    stored_exchange(conversation, cost=Decimal(EXACT), computed_cost=Decimal("0.0002"), cost_source="provider")
    stored_exchange(conversation, cost=Decimal("0.001"), computed_cost=Decimal("0.001"), cost_source="snapshot")
    assert month_spend(user).spent == Decimal(EXACT) + Decimal("0.001")


@pytest.mark.django_db
def test_the_admin_shows_the_source_and_the_difference(admin_client: Client, django_user_model: Any) -> None:
    user = django_user_model.objects.create_user(username="bob")
    conversation = Conversation.objects.create(user=user, model="openai:gpt-4o-mini")
    above = stored_exchange(conversation, cost=Decimal(EXACT), computed_cost=Decimal("0.0001"), cost_source="provider")
    below = stored_exchange(
        conversation, cost=Decimal("0.001"), computed_cost=Decimal("0.0015"), cost_source="provider"
    )
    ours = stored_exchange(conversation, cost=Decimal("0.002"), computed_cost=Decimal("0.002"), cost_source="snapshot")

    page = admin_client.get("/admin/chat/message/").content.decode()
    assert "Reported by the provider" in page and "The genai-prices snapshot" in page
    assert '<span title="+$0.000023456789">+&lt;$0.0001</span>' in page  # under $0.0001, as usd says
    assert '<span title="\N{MINUS SIGN}$0.0005">\N{MINUS SIGN}$0.0005</span>' in page
    assert admin_client.get("/admin/chat/message/?cost_source__exact=provider").context["cl"].result_count == 2

    detail = admin_client.get(f"/admin/chat/message/{above.pk}/change/").content.decode()
    assert "Reported by the provider" in detail and "+&lt;$0.0001" in detail and "0.000123456789" in detail
    detail = admin_client.get(f"/admin/chat/message/{ours.pk}/change/").content.decode()
    assert "The genai-prices snapshot" in detail and "+$" not in detail
    inline = admin_client.get(f"/admin/chat/conversation/{conversation.pk}/change/").content.decode()
    assert inline.count("Reported by the provider") == 2
    assert below.cost_source == "provider"

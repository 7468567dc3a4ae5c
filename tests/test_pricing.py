"""Costs of known usages against hand-computed values, the operator's price table, and unpriced replies."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from chat.costs import pricing
from chat.models import Message, ModelPrice, Status
from chat.streaming.providers import Usage
from tests.conftest import ChatClient
from tests.fake_upstream import Scenario

M = Decimal(1_000_000)


def test_it_prices_an_openai_reply_counting_cached_tokens_once() -> None:
    # OpenAI: prompt_tokens 1200 of which 1000 were cached; reasoning 8 of the 40 completion tokens.
    usage = Usage(input_tokens=1200, output_tokens=40, cache_read_tokens=1000, reasoning_tokens=8)
    cost = pricing.cost_of(provider="openai", model="gpt-4o-mini", usage=usage)
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output (reasoning is output).
    by_hand = (200 * Decimal("0.15") + 1000 * Decimal("0.075") + 40 * Decimal("0.60")) / M
    assert by_hand == Decimal("0.000129")
    assert cost == by_hand
    double_counted = (1200 * Decimal("0.15") + 1000 * Decimal("0.075") + 40 * Decimal("0.60")) / M
    assert cost != double_counted


def test_it_prices_an_anthropic_reply_whose_cache_tokens_were_added_to_its_input() -> None:
    # Anthropic reports input_tokens=30 beside cache_read=2000 and cache_creation=500; we store 2530.
    usage = Usage(input_tokens=30 + 2000 + 500, output_tokens=77, cache_read_tokens=2000, cache_write_tokens=500)
    cost = pricing.cost_of(provider="anthropic", model="claude-sonnet-4-5", usage=usage)
    # claude-sonnet-4-5: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
    by_hand = (30 * 3 + 2000 * Decimal("0.30") + 500 * Decimal("3.75") + 77 * 15) / M
    assert by_hand == Decimal("0.00372")
    assert cost == by_hand


def test_it_prices_a_claude_haiku_reply_by_hand_too() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=8_000, cache_write_tokens=0)
    cost = pricing.cost_of(provider="anthropic", model="claude-haiku-4-5", usage=usage)
    # claude-haiku-4-5: $1/M input, $0.10/M cache read, $5/M output.
    assert cost == (2_000 * 1 + 8_000 * Decimal("0.10") + 1_000 * 5) / M == Decimal("0.0078")


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "local-llama"), ("openai", "no-such-model"), ("nobody", "gpt-4o-mini")]
)
def test_a_model_without_a_known_price_costs_null_not_zero(provider: str, model: str) -> None:
    assert pricing.cost_of(provider=provider, model=model, usage=Usage(input_tokens=10, output_tokens=10)) is None


def test_unknown_usage_costs_null_and_the_demo_model_costs_nothing() -> None:
    assert pricing.cost_of(provider="openai", model="gpt-4o-mini", usage=Usage(source="")) is None
    assert pricing.cost_of(provider="openai", model="gpt-4o-mini", usage=Usage(input_tokens=5)) is None
    assert pricing.cost_of(provider="demo", model="demo", usage=Usage(input_tokens=5, output_tokens=5)) == 0


def table_price(**prices: str) -> ModelPrice:
    values = {"input_per_mtok": "2", "output_per_mtok": "8", **prices}
    return ModelPrice(provider="openai", model="o-test", **{k: Decimal(v) for k, v in values.items()})


def test_a_table_price_charges_each_token_kind_once() -> None:
    usage = Usage(input_tokens=1200, output_tokens=40, cache_read_tokens=1000, cache_write_tokens=100)
    price = table_price(cache_read_per_mtok="0.5", cache_write_per_mtok="2.5")
    cost = pricing.cost_of(provider="openai", model="o-test", usage=usage, price=price)
    # 100 uncached input at $2, 1000 cache reads at $0.50, 100 cache writes at $2.50, 40 output at $8.
    assert cost == (100 * 2 + 1000 * Decimal("0.5") + 100 * Decimal("2.5") + 40 * 8) / M == Decimal("0.00127")


def test_a_table_price_without_cache_prices_charges_the_input_price_for_cached_tokens() -> None:
    usage = Usage(input_tokens=1200, output_tokens=40, cache_read_tokens=1000)
    cost = pricing.cost_of(provider="openai", model="o-test", usage=usage, price=table_price())
    assert cost == (1200 * 2 + 40 * 8) / M


def test_reasoning_tokens_move_out_of_the_output_count_only_when_priced_apart() -> None:
    usage = Usage(input_tokens=100, output_tokens=40, reasoning_tokens=30)
    plain = pricing.cost_of(provider="openai", model="o-test", usage=usage, price=table_price())
    assert plain == (100 * 2 + 40 * 8) / M
    apart = pricing.cost_of(provider="openai", model="o-test", usage=usage, price=table_price(reasoning_per_mtok="20"))
    assert apart == (100 * 2 + 10 * 8 + 30 * 20) / M


def test_a_table_price_wins_over_the_snapshot_and_prices_a_model_it_does_not_know() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    known = table_price()
    assert pricing.cost_of(provider="openai", model="gpt-4o-mini", usage=usage, price=known) == Decimal(10)
    assert pricing.cost_of(provider="openai", model="local-llama", usage=usage, price=known) == Decimal(10)


@pytest.mark.django_db
def test_the_finish_price_is_the_one_in_force_on_the_day() -> None:
    today = date(2026, 11, 15)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        effective_from=today - timedelta(days=30),
        input_per_mtok=1,
        output_per_mtok=2,
    )
    ModelPrice.objects.create(
        provider="openai", model="gpt-4o-mini", effective_from=today, input_per_mtok=3, output_per_mtok=4
    )
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        effective_from=today + timedelta(days=1),
        input_per_mtok=5,
        output_per_mtok=6,
    )
    assert pricing.priced_cost(provider="openai", model="gpt-4o-mini", usage=usage, on=today) == Decimal(7)
    assert pricing.priced_cost(provider="openai", model="gpt-4o-mini", usage=usage, on=today - timedelta(1)) == 3
    # Before the first row the snapshot prices it: $0.15 + $0.60.
    early = today - timedelta(days=31)
    assert pricing.priced_cost(provider="openai", model="gpt-4o-mini", usage=usage, on=early) == Decimal("0.75")
    # Another model is not touched by these rows.
    assert pricing.priced_cost(provider="openai", model="local-llama", usage=usage, on=today) is None


live_db = pytest.mark.django_db(transaction=True)


@live_db
def test_a_reply_from_a_model_without_a_price_is_stored_with_a_null_cost(chat: ChatClient, sim) -> None:
    sim.enqueue(Scenario(input_tokens=120, output_tokens=30))
    reply = chat.ask(chat.conversation("openai:local-llama"))
    chat.stream(reply)
    reply.refresh_from_db()
    assert reply.status == Status.COMPLETED
    assert (reply.input_tokens, reply.output_tokens) == (120, 30)
    assert reply.cost is None
    assert list(Message.objects.without_cost()) == [reply]


@live_db
def test_a_reply_is_priced_with_the_operators_price_and_a_later_change_keeps_its_cost(chat: ChatClient, sim) -> None:
    ModelPrice.objects.create(
        provider="openai", model="local-llama", effective_from=date(2020, 1, 1), input_per_mtok=1, output_per_mtok=3
    )
    sim.enqueue(Scenario(input_tokens=1000, output_tokens=100))
    reply = chat.ask(chat.conversation("openai:local-llama"))
    chat.stream(reply)
    reply.refresh_from_db()
    assert reply.cost == (1000 * 1 + 100 * 3) / M
    ModelPrice.objects.update(input_per_mtok=100, output_per_mtok=300)
    reply.refresh_from_db()
    assert reply.cost == Decimal("0.0013")


def test_a_model_the_snapshot_lacks_is_looked_for_once(monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []
    real = pricing.calc_price

    def counting(usage, model, **kwargs):  # type: ignore[no-untyped-def]
        looked.append(model)
        return real(usage, model, **kwargs)

    monkeypatch.setattr(pricing, "calc_price", counting)
    usage = Usage(input_tokens=10, output_tokens=5)
    model = "a-local-model-nobody-prices"
    assert [pricing.cost_of(provider="openai", model=model, usage=usage) for _ in range(3)] == [None] * 3
    assert looked == [model]
    # A model it knows is still priced every time (genai-prices keeps its own cache of those).
    assert pricing.cost_of(provider="openai", model="gpt-4o-mini", usage=usage) > 0

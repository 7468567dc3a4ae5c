"""Cost of a reply: the provider's own figure when it sent one, else usage times price, from the operator's
ModelPrice table or else the genai-prices snapshot."""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from chat.models import ModelPrice
from chat.models.choices import CostSource
from chat.streaming.providers import Usage

logger = logging.getLogger(__name__)
FREE_PROVIDERS = frozenset({"demo"})
MILLION = Decimal(1_000_000)
# Computed costs are rounded to ten decimal places (Message.cost keeps twelve, for providers' own figures);
# rounding here makes the value in memory the one stored.
STORED_PLACES = Decimal("1e-10")
# A provider's figure keeps every digit the column holds (a figure with more is a float's noise past them).
PROVIDER_PLACES = Decimal("1e-12")


class Priced(NamedTuple):
    """A finished reply's cost (the preferred figure), what our prices said, and where the cost came from."""

    cost: Decimal | None
    computed_cost: Decimal | None
    source: str


def price_reply(*, provider: str, model: str, usage: Usage, on: date | None = None) -> Priced:
    """The provider's own figure when it reported one, else ours; ours is kept either way, to show the difference.

    The provider's figure is what the account is charged (OpenRouter's credits, a LiteLLM proxy's discounts
    and margins); ours is a list price times counts, right only as far as the table or snapshot is."""
    computed, source = computed_cost(provider=provider, model=model, usage=usage, on=on)
    if usage.cost is not None:
        return Priced(usage.cost.quantize(PROVIDER_PLACES), computed, CostSource.PROVIDER)
    return Priced(computed, computed, source)


def cost_of(*, provider: str, model: str, usage: Usage, price: ModelPrice | None = None) -> Decimal | None:
    """USD for this usage, or None when the model has no known price or the counts are unknown.

    Pure and free of database access, so async code may call it; `price` is an operator's
    ModelPrice that was already loaded (see priced_cost) and wins over the snapshot.
    """
    if usage.input_tokens is None or usage.output_tokens is None:
        return None
    try:
        if price is not None:
            cost = cost_from_table(price, usage)
        elif provider in FREE_PROVIDERS:
            return Decimal(0)
        else:
            cost = cost_from_snapshot(provider=provider, model=model, usage=usage)
    except LookupError:
        return None
    except Exception:  # a pricing bug must never lose a reply; the cost is then unknown
        logger.exception("pricing failed for %s:%s", provider, model)
        return None
    return cost.quantize(STORED_PLACES)


def priced_cost(*, provider: str, model: str, usage: Usage, on: date | None = None) -> Decimal | None:
    """cost_of for the finish path: with the operator's ModelPrice in force on `on` (today, UTC), if any."""
    return computed_cost(provider=provider, model=model, usage=usage, on=on)[0]


def computed_cost(*, provider: str, model: str, usage: Usage, on: date | None = None) -> tuple[Decimal | None, str]:
    """priced_cost and which of our prices made it: the table, the snapshot, free (the demo), or none ("")."""
    if usage.input_tokens is None or usage.output_tokens is None:
        return None, CostSource.UNKNOWN
    on = on or datetime.now(UTC).date()
    try:
        price = ModelPrice.objects.effective(provider=provider, model=model, on=on).first()
    except Exception:
        # Falling back to the snapshot could silently ignore the operator's price: unpriced is honest,
        # and the reply then shows up in the admin's list of unpriced replies.
        logger.exception("could not load the price of %s:%s", provider, model)
        return None, CostSource.UNKNOWN
    cost = cost_of(provider=provider, model=model, usage=usage, price=price)
    if cost is None:
        return None, CostSource.UNKNOWN
    if price is not None:
        return cost, CostSource.PRICE_TABLE
    return cost, CostSource.FREE if provider in FREE_PROVIDERS else CostSource.SNAPSHOT


def cost_from_snapshot(*, provider: str, model: str, usage: Usage) -> Decimal:
    """genai-prices counts input_tokens as ALL prompt tokens with cache reads and writes as parts of
    it, which is exactly how we store them (the Anthropic adapter adds its separate cache counts to
    input_tokens); reasoning tokens are a part of output tokens. LookupError for an unknown model."""
    if (provider, model) in _not_in_snapshot:
        raise LookupError(f"{provider}:{model} has no price in the snapshot")
    price_usage = PriceUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens or 0,
        cache_write_tokens=usage.cache_write_tokens or 0,
    )
    try:
        return calc_price(price_usage, model, provider_id=provider).total_price
    except LookupError:
        # genai-prices remembers the models it found, not the ones it did not: it would match every one of
        # the provider's models against this name again for each reply (0.5 ms of CPU, a local model's
        # every reply). The snapshot does not change while the process runs.
        _not_in_snapshot.add((provider, model))
        raise


_not_in_snapshot: set[tuple[str, str]] = set()


def cost_from_table(price: ModelPrice, usage: Usage) -> Decimal:
    """Each token kind at its own price per million; cached tokens are taken out of the input count
    so they are never paid twice, and reasoning tokens out of the output count only when priced apart."""
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    uncached_input = max((usage.input_tokens or 0) - cache_read - cache_write, 0)
    output = usage.output_tokens or 0
    # Reasoning tokens are a part of the output count (OpenAI), so they move out of it, never add to it.
    reasoning = min(usage.reasoning_tokens or 0, output) if price.reasoning_per_mtok is not None else 0
    input_price = price.input_per_mtok
    total = (
        uncached_input * input_price
        + cache_read * (price.cache_read_per_mtok if price.cache_read_per_mtok is not None else input_price)
        + cache_write * (price.cache_write_per_mtok if price.cache_write_per_mtok is not None else input_price)
        + (output - reasoning) * price.output_per_mtok
        + reasoning * (price.reasoning_per_mtok or 0)
    )
    return Decimal(total) / MILLION


def snapshot_price(*, provider: str, model: str) -> str:
    """The snapshot's price list for a model, as text for the admin; empty when it has none."""
    try:
        result = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model, provider_id=provider)
    except LookupError:
        return ""
    return str(result.model_price)


def estimate_tokens(*, chars: int) -> int:
    """About four characters a token for English; used only when the provider reported nothing."""
    return math.ceil(chars / 4)


def warm_up() -> None:
    """Load the price snapshot at start-up instead of inside the first reply's finish."""
    cost_of(provider="openai", model="gpt-4o-mini", usage=Usage(input_tokens=1, output_tokens=1))

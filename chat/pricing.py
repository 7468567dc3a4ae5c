"""Cost of a reply: usage times price from the genai-prices snapshot, as a Decimal computed once at finish."""

from __future__ import annotations

import logging
import math
from decimal import Decimal

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from chat.providers import Usage

logger = logging.getLogger(__name__)
FREE_PROVIDERS = frozenset({"demo"})


def cost_of(*, provider: str, model: str, usage: Usage) -> Decimal | None:
    """USD for this usage, or None when the model has no known price or the counts are unknown."""
    if usage.input_tokens is None or usage.output_tokens is None:
        return None
    if provider in FREE_PROVIDERS:
        return Decimal(0)
    # genai-prices counts input_tokens as ALL prompt tokens with cache reads/writes as parts of it,
    # which is exactly how we store them; reasoning tokens are a part of output tokens.
    price_usage = PriceUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens or 0,
        cache_write_tokens=usage.cache_write_tokens or 0,
    )
    try:
        return calc_price(price_usage, model, provider_id=provider).total_price
    except LookupError:
        return None
    except Exception:  # a pricing bug must never lose a reply; the cost is then unknown
        logger.exception("pricing failed for %s:%s", provider, model)
        return None


def estimate_tokens(*, chars: int) -> int:
    """About four characters a token for English; used only when the provider reported nothing."""
    return math.ceil(chars / 4)


def warm_up() -> None:
    """Load the price snapshot at start-up instead of inside the first reply's finish."""
    cost_of(provider="openai", model="gpt-4o-mini", usage=Usage(input_tokens=1, output_tokens=1))

"""Money for people to read: the one format of every page (chat, usage, admin); machines get reports.money."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

SMALLEST_SHOWN = Decimal("0.0001")
CENT = Decimal("0.01")


def usd(value: Decimal | int | float | None) -> str:
    """An amount as every page shows it: "unpriced" when unknown, "$0", "<$0.0001", at most two significant
    digits under a dollar but at least two decimals ("$0.50", "$0.02", "$0.012", "$0.0012"), and cents with
    thousands separators from a dollar up ("$1,234.50").

    Under a dollar, cents alone would show a day of small replies as "$0.00", and ten places are noise;
    two significant digits tell $0.0012 from $0.012 at a glance. Amounts are costs (usage times a price),
    their sums and budgets, never negative, so a sign is not handled.
    """
    if value is None:
        return "unpriced"  # no price known for the model, or the usage is unknown
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if amount == 0:
        return "$0"
    if amount < SMALLEST_SHOWN:
        return "<$0.0001"
    if amount < 1:
        rounded = _two_significant(amount)
        if rounded < 1:
            # A zero that carries no digit goes ($0.020 is $0.02), but never below two decimals ($0.50).
            places = max(2, -int(rounded.normalize().as_tuple().exponent))
            return f"${rounded:.{places}f}"
        amount = rounded  # 0.995 and up round to a dollar, shown as one: "$1.00"
    return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


def _two_significant(amount: Decimal) -> Decimal:
    """Rounded to two significant digits (a carry, 0.0999 -> 0.100, only adds a zero that is dropped later)."""
    return amount.quantize(Decimal(1).scaleb(-(1 - amount.adjusted())), rounding=ROUND_HALF_UP)

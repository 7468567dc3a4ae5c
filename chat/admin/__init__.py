"""The admin: what each reply cost, who spent it, on which model, which replies went wrong (records); the cost
report (report); prices, limits, and the groups' budgets and models (spending). Importing the package registers
them all."""

from chat.admin import records, report, spending  # noqa: F401 (registration)

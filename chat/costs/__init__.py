"""What replies cost: pricing at finish (pricing.py), budgets and rate limits before a call (limits.py),
the admin's and the terminal's reports (reports.py), a user's own usage (usage.py), and the one way
money is written for people (money.py)."""

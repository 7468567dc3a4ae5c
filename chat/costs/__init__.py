"""What replies cost: pricing at finish (pricing.py), budgets and rate limits before a call (limits.py), and
the admin's and the terminal's reports (reports.py)."""

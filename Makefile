# One command to run the app, one to run the tests; both set up what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: setup
	$(PY) manage.py migrate --noinput
	@echo
	@echo "  streamchat is starting on http://$(HOST):$(PORT)/"
	@echo "  Log in with the 'Continue as the demo user' button (DEBUG only; no account needed)."
	@echo "  The offline demo model is selected by default; set OPENAI_API_KEY / ANTHROPIC_API_KEY for real ones."
	@echo
	$(PY) manage.py runserver $(HOST):$(PORT)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) db.sqlite3 test-db.sqlite3* staticfiles artifacts

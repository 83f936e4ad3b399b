# The two README commands are `make demo` and `make test`; both set up what they need first.
VENV := .venv
PYTEST_ARGS ?= -q -rfEs

.PHONY: setup test demo lint bench schema sql-api

setup:
	@scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/pgsnap demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python scripts/squawk_lint.py

bench: setup
	$(VENV)/bin/python -m bench

# Rebuild the committed schema dump (schema/pgsnap.schema.sql) after a schema change.
schema: setup
	$(VENV)/bin/python scripts/dump_schema.py

# Rebuild the SQL API reference (docs/sql-api.md) from the routines' COMMENT ON.
sql-api: setup
	$(VENV)/bin/python scripts/sql_api.py

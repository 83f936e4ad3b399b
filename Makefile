# The two README commands are `make demo` and `make test`; both set up what they need first.
VENV := .venv
PYTEST_ARGS ?= -q -rfEs

.PHONY: setup test demo lint bench

setup:
	@scripts/setup.sh

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/pgsnap demo

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/python -m bench

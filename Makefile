PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean token

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Run the whole local cloud (embedded AWS, WebSocket gateway, SQS event source) plus the app.
run: $(STAMP)
	$(PY) -m infra.local

## Run the test suite.
test: $(STAMP)
	$(PY) -m pytest -q

## Mint a development token: make token USER=alice ROLE=customer
token: $(STAMP)
	@$(PY) -m infra.local token --sub $(or $(USER_ID),$(USER),dev) --role $(or $(ROLE),customer)

clean:
	rm -rf $(VENV) .pytest_cache

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean token chat

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip>=24,<26.3"  # chalice packages with pip and needs <26.3
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Run the whole local cloud (embedded AWS, WebSocket gateway, SQS event source) plus the app.
run: $(STAMP)
	$(PY) -m infra.local

## Run the test suite.
test: $(STAMP)
	$(PY) -m pytest -q

SUB ?= alice
ROLE ?= customer

## Print a development token of the local stage: make token SUB=bob ROLE=agent
token: $(STAMP)
	@$(PY) -m infra.local token --sub $(SUB) --role $(ROLE)

## Chat from a terminal against `make run`: make chat SUB=alice ROLE=customer ARGS=--new
chat: $(STAMP)
	@$(PY) -m client --user $(SUB) --role $(ROLE) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

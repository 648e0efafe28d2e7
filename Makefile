PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint chaos install clean token chat dlq-list dlq-redrive bench-flood

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

## Lint and type-check: ruff over the repo, mypy --strict over the Lambda code (configuration in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict chalicelib app.py

## The fast loop: pure core, services, property tests, storage contract on memory (no moto, no sockets)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m fast

## The CI-sized chaos run (about 2,000 messages, every fault kind on); larger: make chaos ARGS="-C 500 -M 100 -K 60"
chaos: $(STAMP)
	$(PY) -m bench.chaos $(ARGS)

## Gateway isolation benchmark: one client floods 2,000 frames while 200 new connections each send one (prints p99 connect time)
bench-flood: $(STAMP)
	$(PY) -m bench.flood $(ARGS)

SUB ?= alice
ROLE ?= customer

## Print a development token of the local stage: make token SUB=bob ROLE=agent
token: $(STAMP)
	@$(PY) -m infra.local token --sub $(SUB) --role $(ROLE)

## Chat from a terminal against `make run`: make chat SUB=alice ROLE=customer ARGS=--new
chat: $(STAMP)
	@$(PY) -m client --user $(SUB) --role $(ROLE) $(ARGS)

STAGE ?= local
# The local cloud's embedded AWS unless the environment names another endpoint.
AWS_ENV = AWS_ENDPOINT_URL=$${AWS_ENDPOINT_URL:-http://127.0.0.1:4566} \
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} \
	AWS_ACCESS_KEY_ID=$${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=$${AWS_SECRET_ACCESS_KEY:-test}

## List the delivery dead-letter queue of STAGE (default: the running local cloud)
dlq-list: $(STAMP)
	@$(AWS_ENV) $(PY) -m infra.dlq list --stage $(STAGE)

## Move the dead-letter queue's deliveries back to the delivery queue
dlq-redrive: $(STAMP)
	@$(AWS_ENV) $(PY) -m infra.dlq redrive --stage $(STAGE)

clean:
	rm -rf $(VENV) .pytest_cache

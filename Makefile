PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# npm ci writes node_modules/.package-lock.json: the Node side is reinstalled when the lock file changes.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: run test chromium test-fast lint chaos interleavings burden bench scale bench-flood install clean token chat dlq-list dlq-redrive screenshots package cfn-lint deploy smoke smoke-local flood

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip>=24,<26.3"  # chalice packages with pip and needs <26.3
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

# The browser SDK's type checker (typescript, exactly as package-lock.json pins it).
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

## Run the whole local cloud (embedded AWS, WebSocket gateway, SQS event source) plus the app.
run: $(STAMP)
	$(PY) -m infra.local

## Run the test suite: pytest, then the browser SDK's core under Node's test runner.
test: install chromium
	$(PY) -m pytest -q
	node --test tests/js/

# The browser tests drive Debian's Chromium: installed here when missing and apt-get can (root).
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q && apt-get install -y -q chromium; } \
		|| { test -x /usr/bin/chromium || echo "the browser tests need Chromium: apt-get install chromium"; }

## Screenshots of the widget (desktop, 360 px) and the console into docs/img/ (needs Chromium)
screenshots: $(STAMP)
	$(PY) -m tests.web.screenshots

## Lint and type-check: ruff over the repo, mypy --strict over the Lambda code, the Python SDK and the local cloud
## (configuration in pyproject.toml), tsc over the browser SDK's JSDoc types (jsconfig.json)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict chalicelib app.py client infra/local
	node_modules/.bin/tsc -p jsconfig.json

## The fast loop: pure core, services, property tests, storage contract on memory, pure bench checks
## (no moto, no sockets, no subprocess: tests/conftest.py makes a fast test that tries fail),
## and the browser SDK's pure core (node --test)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m fast
	node --test tests/js/

## The CI-sized chaos run (about 2,000 messages, every fault kind on); larger: make chaos ARGS="-C 500 -M 100 -K 60"
chaos: $(STAMP)
	$(PY) -m bench.chaos $(ARGS)

## Every interleaving of the send, lifecycle and replay protocols in deeper scenarios than make test runs
interleavings: $(STAMP)
	$(PY) -m tests.property.interleavings $(ARGS)

## Cost and speed per delivered message against the wschat and relay baselines (docs/performance.md);
## smoke-sized: make bench ARGS=--quick
bench: $(STAMP)
	$(PY) -m bench.perf $(ARGS)

## How a send, a delivery, a resume and a sweep grow: AWS requests counted (not timed)
scale: $(STAMP)
	$(PY) -m bench.scale $(ARGS)

## What a client written from the protocol alone copes with, fault-free: repeated frames and resumes per message
burden: $(STAMP)
	$(PY) -m bench.burden $(ARGS)

## Gateway isolation benchmark: one client floods 2,000 frames while 200 new connections each send one (prints p99 connect time)
bench-flood: $(STAMP)
	$(PY) -m bench.gateway_flood $(ARGS)

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

## Package STAGE as one CloudFormation template: build/$(STAGE)/sam.yaml + deployment.zip
package: $(STAMP)
	$(PY) -m infra.package --stage $(STAGE) $(if $(REGION),--region $(REGION))

## Lint the packaged template of STAGE with cfn-lint (CI: make cfn-lint STAGE=prod)
cfn-lint: package
	$(VENV)/bin/cfn-lint build/$(STAGE)/sam.yaml

## Deploy STAGE as the stack oncechat-STAGE: make deploy STAGE=prod REGION=eu-west-1 BUCKET=... ALARM_TOPIC_ARN=...
deploy: $(STAMP)
	@test -n "$(REGION)" -a -n "$(BUCKET)" -a -n "$(ALARM_TOPIC_ARN)" || \
	  { echo "make deploy needs STAGE, REGION, BUCKET and ALARM_TOPIC_ARN (README: Deploying to AWS)"; exit 2; }
	$(PY) -m infra.deploy --stage $(STAGE) --region $(REGION) --bucket $(BUCKET) \
	  --alarm-topic-arn $(ALARM_TOPIC_ARN) $(foreach p,$(PARAMS),--parameter $(p))

## Black-box protocol check of a deployment: make smoke WS_URL=wss://... REST_URL=https://...
smoke: $(STAMP)
	@test -n "$(WS_URL)" -a -n "$(REST_URL)" || { echo "make smoke needs WS_URL and REST_URL"; exit 2; }
	$(PY) -m infra.smoke --ws-url $(WS_URL) --rest-url $(REST_URL) $(if $(REGION),--region $(REGION)) \
	  $(if $(SMOKE_SECRET_PARAMETER),--secret-parameter $(SMOKE_SECRET_PARAMETER))

## The smoke check against a local cloud it starts (CI)
smoke-local: $(STAMP)
	$(PY) -m infra.smoke --local

## Measure: one connection floods while 200 others connect and send once (prints p50/p99)
flood: $(STAMP)
	$(PY) -m bench.flood $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build node_modules

"""The local cloud: run any Chalice project with WebSockets, SQS and schedules.

``python -m infra.local`` starts, in one process:

* embedded AWS (a ``moto`` server subprocess, or a configured endpoint such as
  LocalStack) with the project's ``infra/template.yaml`` deployed as a stack;
* an API Gateway WebSocket emulator with the ``@connections`` management API,
  sending back the responses of the routes the project's templates make
  two-way (``AWS::ApiGatewayV2::RouteResponse``) and dropping the others',
  as AWS does;
* an SQS event source (pollers that invoke ``@app.on_sqs_message`` handlers);
* a runner for ``@app.schedule`` handlers;
* Chalice's own local REST gateway;
* the project's ``web/`` pages with their ``config.json`` and a development
  sign-in (``web``);
* optional fault injection (``--faults``, ``/_local/faults``): dropped and
  duplicated frames, crashes around commits, enqueues and pushes, failing
  pushes and throttling, each at its own rate and counted.

The layers mirror AWS: transport (``gateway``) -> event (``events``) ->
handler (``handlers``), so each layer can be tested on its own.

Modules: ``cli`` (flags, ``token``), ``runtime`` (wiring), ``aws`` (endpoint,
moto subprocess, stack deployment), ``motoserver`` (that subprocess: moto
with one request at a time), ``moto_patches`` (moto's DynamoDB at scale),
``gateway`` (WebSocket + ``@connections``), ``events`` (pure event
builders), ``handlers`` (handler strings, Lambda context), ``environ``
(per-function environment variables), ``rest`` (Chalice's REST gateway with
AWS's authorizer answers), ``redirect`` (management client -> emulator),
``worker`` (the thread shape of an event source), ``sqs`` (event source
pollers), ``schedule`` (rate/cron), ``tokens`` (dev JWTs), ``faults``
(fault injection), ``web`` (the pages), ``launcher`` (the local cloud as a
subprocess, for tests and tools).

Where it knowingly differs from AWS (each is also noted at its code):

* Handler timeouts are not enforced (a thread cannot be killed); the 29 s
  WebSocket integration timeout neither.
* The 32 KB frame limit is not enforced, only the 128 KB message limit.
* Only data frames reset the idle timer; ``$disconnect`` close codes for a
  management DELETE (1000) and a dropped TCP connection (1006) are our choice
  where AWS documents none.
* A fixed number of batches at once per SQS source (``--sqs-concurrency``,
  4) where Lambda scales its pollers; ``--sqs-retry-delay`` shortens the
  visibility timeout of failed batches when set.
* Schedules fire on time, never late or twice.
* All handlers share one process, so module-level state is shared between
  "functions" that would be separate Lambdas on AWS; an injected crash ends
  the invocation but, unlike a dead Lambda process, keeps that state.
* Fault injection: ``push_fail`` and ``push_lost_ack`` strike every
  ``@connections`` POST (any caller, each retry attempt); the app-side
  kinds strike only inside invocations the local cloud made (not REST
  routes, not threads the handler starts itself).
"""

"""The local cloud: run any Chalice project with WebSockets, SQS and schedules.

``python -m infra.local`` starts, in one process:

* embedded AWS (a ``moto`` server subprocess, or a configured endpoint such as
  LocalStack) with the project's ``infra/template.yaml`` deployed as a stack;
* an API Gateway WebSocket emulator with the ``@connections`` management API;
* an SQS event source (pollers that invoke ``@app.on_sqs_message`` handlers);
* a runner for ``@app.schedule`` handlers;
* Chalice's own local REST gateway.

The layers mirror AWS: transport (``gateway``) -> event (``events``) ->
handler (``handlers``), so each layer can be tested on its own.
"""

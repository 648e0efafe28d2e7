"""The services: they read state, ask the pure core (chalicelib.core) what to do, and write.

One module per responsibility, each a mixin over ``ServiceBase`` (the ports
and the clock): ``connections``, ``messaging`` (the hot path), ``desk``
(conversations, lifecycle, assignment, agents), ``outbox`` (enqueue and
sweep), ``presence`` (reconciliation) and ``delivery`` (the SQS consumer).
``chalicelib.service.ChatService`` composes them.
"""

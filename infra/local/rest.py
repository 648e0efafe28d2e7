"""The REST API: Chalice's own local gateway, with two differences from AWS removed.

- A Lambda authorizer that raises ``UnauthorizedError`` (Chalice's way to say
  "Unauthorized") is answered 401 ``{"message":"Unauthorized"}``, as API
  Gateway answers it; any other exception of an authorizer is API Gateway's
  500 ``AuthorizerConfigurationException``. Chalice's local gateway lets
  both escape and ends the connection without a response.
- The view function and each authorizer see their own
  ``lambda_functions.NAME.environment_variables`` (:mod:`infra.local.environ`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from collections.abc import Callable

from chalice.app import UnauthorizedError
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    LocalGateway,
    LocalGatewayAuthorizer,
    LocalGatewayException,
    NotAuthorizedError,
)

from infra.local import environ

log = logging.getLogger("infra.local.rest")

#: Chalice's name of the Lambda function behind every REST route.
API_HANDLER = "api_handler"

FunctionEnv = Callable[[str], Mapping[str, str]]


class AuthorizerFailedError(LocalGatewayException):
    """API Gateway's answer when a Lambda authorizer fails: 500, ``{"message": null}``."""

    CODE = 500


class _Authorizer(LocalGatewayAuthorizer):
    def __init__(self, app_object: Any, function_env: FunctionEnv) -> None:
        super().__init__(app_object)
        self._function_env = function_env

    def authorize(self, raw_path: str, lambda_event: Any, lambda_context: Any) -> Any:
        route = self._route_for_event(lambda_event)
        name = getattr(getattr(route, "authorizer", None), "name", None)
        headers = {"x-amzn-RequestId": lambda_context.aws_request_id}
        try:
            with environ.function_scope(self._function_env(name) if name else None):
                return super().authorize(raw_path, lambda_event, lambda_context)
        except LocalGatewayException:
            raise
        except UnauthorizedError:
            raise NotAuthorizedError(
                {**headers, "x-amzn-ErrorType": "UnauthorizedException"}, b'{"message":"Unauthorized"}'
            ) from None
        except Exception:
            log.exception("authorizer %s raised", name)
            raise AuthorizerFailedError(
                {**headers, "x-amzn-ErrorType": "AuthorizerConfigurationException"}, b'{"message":null}'
            ) from None


class _Gateway(LocalGateway):
    def __init__(self, app_object: Any, config: Any, function_env: FunctionEnv) -> None:
        super().__init__(app_object, config)
        self._authorizer = _Authorizer(app_object, function_env)
        self._function_env = function_env

    def handle_request(self, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        with environ.function_scope(self._function_env(API_HANDLER)):
            return super().handle_request(method, path, headers, body)


def create_server(app: Any, config: Any, host: str, port: int, function_env: FunctionEnv) -> LocalDevServer:
    """Chalice's ``create_local_server`` with the gateway above."""

    class Handler(ChaliceRequestHandler):
        def __init__(self, request: Any, client_address: Any, server: Any, app_object: Any, config: Any) -> None:
            self.local_gateway = _Gateway(app_object, config, function_env)
            BaseHTTPRequestHandler.__init__(self, request, client_address, server)

    # What chalice.local.create_local_server does to the app object.
    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
    return LocalDevServer(app, config, host, port, handler_cls=Handler)

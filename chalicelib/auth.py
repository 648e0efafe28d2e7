"""Token verification (HS256 JWT) and, for development, token minting."""

from __future__ import annotations

import time
from typing import Any

import jwt

from chalicelib.errors import Unauthorized
from chalicelib.models import Principal

ISSUER = "oncechat"
AUDIENCE = "oncechat"
ALGORITHM = "HS256"
ROLES = ("customer", "agent")


#: Default longest a token may live (``exp - iat``); TOKEN_MAX_LIFETIME_SECONDS overrides it.
MAX_LIFETIME_SECONDS = 24 * 3600
#: Clock skew tolerated on ``iat`` (a token issued slightly in the future).
LEEWAY_SECONDS = 60
MAX_CLAIM_LENGTH = 128


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    """A short claim string that any store and socket can carry."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_LENGTH
            and value.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in value))


def verify_token(token: str | None, secret: str, *,
                 max_lifetime_seconds: int = MAX_LIFETIME_SECONDS,
                 now: float | None = None) -> Principal:
    """Return the caller of a valid token, or raise Unauthorized.

    Only HS256 is accepted (an ``alg: none`` or RS256 token is refused);
    ``exp``, ``iat``, ``sub``, ``role``, ``iss`` and ``aud`` are all required;
    ``exp``, ``iat`` (and ``nbf`` if present) must be JSON numbers (PyJWT
    alone would take the string ``" 1796040000"``); ``iat`` may not lie in
    the future beyond a minute of skew, and ``exp - iat`` may not exceed
    ``max_lifetime_seconds``.
    """
    if not token:
        raise Unauthorized("missing token")
    if len(token) > 8192:
        raise Unauthorized("invalid token: too long")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # odd claim values PyJWT does not wrap
        raise Unauthorized("invalid token: bad claims") from exc
    for claim in ("exp", "iat", "nbf"):
        if claim in claims and not _number(claims[claim]):
            raise Unauthorized(f"invalid token: {claim} must be a number")
    issued, expires = claims["iat"], claims["exp"]
    current = time.time() if now is None else now
    if issued > current + LEEWAY_SECONDS:
        raise Unauthorized("invalid token: issued in the future")
    if expires - issued > max_lifetime_seconds:
        raise Unauthorized(f"invalid token: lifetime exceeds {max_lifetime_seconds} s")
    sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name")
    if not isinstance(sub, str) or not _text(sub) or "#" in sub:
        raise Unauthorized("invalid token: bad sub")
    if role not in ROLES:
        raise Unauthorized("invalid token: role must be customer or agent")
    if name is not None and not _text(name):
        raise Unauthorized("invalid token: bad name")
    return Principal(user_id=sub, role=role, name=name)


def single_token(query: dict[str, str] | None, multi: dict[str, list[str]] | None) -> str | None:
    """The one ``token`` query parameter of a ``$connect``; Unauthorized when it is repeated.

    API Gateway puts the last of repeated parameters in ``queryStringParameters``
    (``?token=garbage&token=<valid>`` would pass on the valid one): the
    multi-value map shows the repetition.
    """
    values = (multi or {}).get("token")
    if values is not None and len(values) != 1:
        raise Unauthorized("give exactly one token parameter")
    return (query or {}).get("token")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def mint_token(
    secret: str, sub: str, role: str, *, name: str | None = None, ttl_seconds: int = 3600,
    now: float | None = None,
) -> str:
    """Sign a token (for development, tests and tools; production tokens come from your IdP)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE,
        "iat": issued, "exp": issued + ttl_seconds,
    }
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=ALGORITHM)

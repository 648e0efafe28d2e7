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


def verify_token(token: str | None, secret: str) -> Principal:
    """Return the caller of a valid token, or raise Unauthorized.

    Only HS256 is accepted (an ``alg: none`` or RS256 token is refused), and
    ``exp``, ``sub``, ``role``, ``iss`` and ``aud`` are all required.
    """
    if not token:
        raise Unauthorized("missing token")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name")
    if not isinstance(sub, str) or not sub or "#" in sub:
        raise Unauthorized("invalid token: bad sub")
    if role not in ROLES:
        raise Unauthorized("invalid token: role must be customer or agent")
    if name is not None and not isinstance(name, str):
        raise Unauthorized("invalid token: bad name")
    return Principal(user_id=sub, role=role, name=name)


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

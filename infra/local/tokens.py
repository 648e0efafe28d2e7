"""Development tokens: HS256 JWTs signed with the stage's ``JWT_SECRET``."""

from __future__ import annotations

import time

import jwt

ISSUER = "oncechat"
AUDIENCE = "oncechat"
DEFAULT_TTL_S = 3600


def mint_token(
    secret: str,
    sub: str,
    role: str,
    name: str | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """Return an HS256 JWT with the claims sub, role, name (if given), iat, exp, iss, aud."""
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": sub,
        "role": role,
        "iat": issued_at,
        "exp": issued_at + ttl_s,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")

"""Bearer-token check for the write endpoints (and, when configured, the reads).

The token comes from ``ServeConfig.write_token`` or, when that is empty, from the environment
variable named by ``ServeConfig.write_token_env`` (``ITEMSAGE_WRITE_TOKEN``), so it can stay out of
config files. With neither set, writes are refused (403): a server must never accept writes from
anyone because someone forgot to set a token.

The token is never logged and never echoed: :class:`WriteToken` hides it from ``repr``, the checks
raise errors that do not contain what the client sent, and the comparison is constant-time.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from itemsage.config import ServeConfig

# The scheme FastAPI puts in the OpenAPI document (``securitySchemes``); ``auto_error=False``: a
# missing header is answered here, with our own message and status.
BEARER = HTTPBearer(auto_error=False, description="the write token (ServeConfig.write_token or $ITEMSAGE_WRITE_TOKEN)")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class WriteToken:
    """The configured token; ``check`` raises 401/403 unless a request's credentials carry it."""

    __slots__ = ("_token", "source")

    def __init__(self, token: str, source: str) -> None:
        self._token = token.encode()
        self.source = source

    @classmethod
    def from_config(cls, cfg: ServeConfig, environ: Mapping[str, str] | None = None) -> WriteToken:
        env = os.environ if environ is None else environ
        configured = cfg.write_token.get_secret_value().strip()
        if configured:
            return cls(configured, "serve.write_token")
        return cls(env.get(cfg.write_token_env, "").strip(), f"${cfg.write_token_env}")

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def __repr__(self) -> str:
        return f"WriteToken(source={self.source!r}, configured={self.configured})"

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if not self.configured:
            raise HTTPException(
                403, f"writes are disabled on this server: no write token is configured (set {self.source})"
            )
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <write token>'", headers=CHALLENGE)
        if not hmac.compare_digest(credentials.credentials.encode(), self._token):
            raise HTTPException(401, "wrong token", headers=CHALLENGE)


def token_dependency(token: WriteToken) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with ``token`` (``Depends(...)``)."""

    async def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        token.check(credentials)

    return require_token

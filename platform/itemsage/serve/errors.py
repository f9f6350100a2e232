"""Errors a serving request can end in, each with the HTTP status it maps to.

They are raised deep inside replicas (a Retriever that does not know an item id, an encoder that
cannot decode an upload) and cross Ray handles as ``RayTaskError`` subclasses of the same class, so
the ingress can still tell "the client sent something bad" (4xx, never retried) from "a replica
failed" (retried once, then 503).
"""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """Base: an error whose ``status_code`` and ``detail`` go back to the client as-is."""

    status_code: int = 400
    # Response headers to send with it (which replica answered: itemsage.serve.write_api).
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    # Ray re-creates exceptions in the caller from their args; keep ``detail`` the only argument
    # (the headers travel as state).
    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.detail,), {"headers": self.headers} if self.headers else None)


class BadRequestError(ServeError):
    """Well-formed JSON whose values make no sense together (422, like pydantic's own errors)."""

    status_code = 422


class ItemNotFoundError(ServeError):
    """An item id that is not in the serving catalog."""

    status_code = 404


class InvalidImageError(ServeError):
    """An upload or image path that is not a decodable image."""

    status_code = 422


class PayloadTooLargeError(ServeError):
    """An upload over ``ServeConfig.max_upload_bytes`` (or a body over ``max_request_bytes``)."""

    status_code = 413


class ForbiddenPathError(ServeError):
    """A local image path outside ``ServeConfig.allowed_image_roots``."""

    status_code = 403


class NotReadyError(ServeError):
    """Nothing is loaded yet (no model/index), or the model cannot do what was asked."""

    status_code = 503


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a Ray ``RayTaskError`` (or ``exc`` itself).

    Ray raises a dual subclass (RayTaskError + the original class) whose ``str`` is the whole
    remote traceback; the original, in ``.cause``, carries the short message meant for clients.
    """
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def as_serve_error(exc: BaseException) -> ServeError | None:
    """The :class:`ServeError` behind ``exc``, or None for an infrastructure/bug failure."""
    inner = unwrap(exc)
    return inner if isinstance(inner, ServeError) else None

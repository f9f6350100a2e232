"""The HTTP side of catalog writes: reading a PUT body (JSON or multipart), and the replica headers.

``PUT /items/{item_id}`` takes the item as JSON (images base64, like ``/embed/item``) or as
``multipart/form-data`` (text fields as form fields, ``attributes`` as a JSON string, image files
as ``image`` parts), so a shop can upload a photo without base64. FastAPI binds one body type per
route, so this handler reads the body itself and validates it with the same request model; the
OpenAPI document declares both content types (:func:`openapi_request_body`).

Every read answer of a Retriever replica names the replica and the change-log position it had
applied when the request started (``X-Itemsage-Replica``, ``X-Itemsage-Applied-Seq``): a client
that got ``seq`` for its write knows the write is visible in any answer whose applied seq is at
least ``seq``, and ``experiments/bench/live.py`` measures time-to-visible from them.
"""

# No ``from __future__ import annotations``: FastAPI reads the wrapper's parameter annotations.
import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from itemsage.config import TEXT_FIELDS, ServeConfig
from itemsage.serve.errors import BadRequestError, PayloadTooLargeError
from itemsage.serve.uploads import decode_base64

# Key of a backend answer that says who answered; turned into the response headers below.
SERVED_KEY = "_served"
REPLICA_HEADER = "X-Itemsage-Replica"
APPLIED_SEQ_HEADER = "X-Itemsage-Applied-Seq"
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
IMAGE_PART = "image"


def openapi_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the item body as JSON or as a multipart form with image files."""
    schema = model.model_json_schema()
    if "$defs" in schema:  # would not resolve inside the OpenAPI document
        raise ValueError(f"{model.__name__} must not nest models to be declared inline")
    form_props: dict[str, Any] = {
        name: {"type": "string", "description": prop.get("description", "")}
        for name, prop in schema["properties"].items()
        if name in TEXT_FIELDS
    }
    form_props["attributes"] = {"type": "string", "description": "JSON object of filterable attributes"}
    form_props[IMAGE_PART] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "image files",
    }
    form = {"type": "object", "properties": form_props, "required": ["title"], "additionalProperties": False}
    return {
        "requestBody": {
            "required": True,
            "content": {JSON_TYPE: {"schema": schema}, MULTIPART_TYPE: {"schema": form}},
        }
    }


def _invalid(exc: ValidationError) -> RequestValidationError:
    errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
    return RequestValidationError(errors)


async def read_item_write(request: Request, model: type[BaseModel], cfg: ServeConfig) -> dict[str, Any]:
    """The validated item of a PUT body as the backend payload: text fields, ``attributes``, and
    ``images`` as raw bytes (422 for a bad body, 413 for an image over ``max_upload_bytes``)."""
    content_type = request.headers.get("content-type", JSON_TYPE).split(";")[0].strip().lower()
    if content_type == MULTIPART_TYPE:
        fields, images = await _read_form(request, cfg)
        try:
            item = model.model_validate(fields)
        except ValidationError as e:
            raise _invalid(e) from None
    elif content_type == JSON_TYPE:
        try:
            item = model.model_validate_json(await request.body())
        except ValidationError as e:
            raise _invalid(e) from None
        images = [decode_base64(s, cfg.max_upload_bytes) for s in item.images]  # type: ignore[attr-defined]
    else:
        raise BadRequestError(f"send the item as {JSON_TYPE} or {MULTIPART_TYPE}, not {content_type!r}")
    payload = item.model_dump()
    payload["images"] = images
    return payload


async def _read_form(request: Request, cfg: ServeConfig) -> tuple[dict[str, Any], list[bytes]]:
    try:
        form = await request.form(
            max_files=cfg.max_item_images,
            max_fields=len(TEXT_FIELDS) + 2,
            # a text field's characters as UTF-8, at most 4 bytes each
            max_part_size=4 * cfg.max_text_field_chars + 1,
        )
    except StarletteHTTPException as e:  # Starlette's 400 for a malformed or over-limit form
        raise BadRequestError(f"unreadable multipart body: {e.detail}") from None
    fields: dict[str, Any] = {}
    images: list[bytes] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != IMAGE_PART:
                    raise BadRequestError(f"form part {name!r} is a file; only {IMAGE_PART!r} parts may be")
                data = await value.read(cfg.max_upload_bytes + 1)
                if len(data) > cfg.max_upload_bytes:
                    raise PayloadTooLargeError(f"image is larger than the {cfg.max_upload_bytes}-byte upload limit")
                if not data:
                    raise BadRequestError("an image part is empty")
                images.append(data)
            elif name == IMAGE_PART:
                raise BadRequestError(f"form part {IMAGE_PART!r} must be a file")
            elif name in fields:
                raise BadRequestError(f"form field {name!r} is given more than once")
            elif name == "attributes":
                try:
                    fields[name] = json.loads(value)
                except ValueError:
                    raise BadRequestError("form field 'attributes' must be a JSON object") from None
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, images


def core_item(item_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An HTTP item (``attributes`` nested) as the core's write item (attributes beside the text
    fields, ``itemsage.serve.live.check_item``); empty text fields are left out."""
    item = {k: v for k, v in payload.items() if k != "attributes" and v not in ("", None)}
    return {**item, **payload.get("attributes", {}), "item_id": item_id, "images": payload.get("images", [])}


def served_headers(served: dict[str, Any]) -> dict[str, str]:
    return {REPLICA_HEADER: str(served["replica"]), APPLIED_SEQ_HEADER: str(int(served["applied_seq"]))}


def with_served_headers(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``handler`` whose answer's :data:`SERVED_KEY` (if any) becomes the replica headers."""
    sig = inspect.signature(handler)

    @functools.wraps(handler)
    async def wrapper(*args: Any, served_response: Response, **kwargs: Any) -> Any:
        result = await handler(*args, **kwargs)
        if isinstance(result, dict) and SERVED_KEY in result:
            served_response.headers.update(served_headers(result.pop(SERVED_KEY)))
        return result

    extra = inspect.Parameter("served_response", inspect.Parameter.KEYWORD_ONLY, annotation=Response)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])  # type: ignore[attr-defined]
    return wrapper

"""Request bodies: read the same way whatever the transfer encoding, then checked against their
schema (web/schemas.py).

Werkzeug limits a body sent without Content-Length (chunked) to MAX_CONTENT_LENGTH by cutting
it there silently; reading one byte past the limit here tells a body of exactly the limit from
a longer one, which is refused with 413 whatever its encoding.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

Model = TypeVar("Model", bound=BaseModel)


class InvalidPayload(Exception):
    """A body that does not match its schema; ``problems`` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {problem}" for field, problem in problems.items()))


def read_body() -> bytes:
    """The request body, with or without Content-Length; 413 past the app's MAX_CONTENT_LENGTH."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    # Content-Length over limit + 1 is refused here at once; a chunked body is cut at limit + 1.
    body = get_input_stream(request.environ, max_content_length=limit + 1).read()
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def load_json(body: bytes) -> Any:
    """JSON, or ValueError: not JSON, not UTF-8, or nested deeper than the parser's stack."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def parse_payload(model: type[Model], body: bytes) -> Model:
    """``body`` as ``model``; InvalidPayload naming every field at fault (pydantic reads the
    JSON itself, with a nesting limit, so no body raises anything else)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidPayload(problems_of(exc)) from None


def parse_query(model: type[Model]) -> Model:
    """The request's query string as ``model``; InvalidPayload naming every parameter at fault."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise InvalidPayload(problems_of(exc)) from None


def problems_of(exc: ValidationError) -> dict[str, str]:
    """Field name → what is wrong. The Android/iOS branch of a payload is not a field; an error
    of the whole body (not JSON, not an object, no platform) is under ``body`` or ``platform``."""
    problems: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = [part for part in error["loc"] if part not in ("android", "ios")]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field = "platform"
        else:
            field = str(loc[0]) if loc else "body"  # the documented field, not the union branch within it
        problems.setdefault(field, error["msg"])
    return problems

"""Batch input lines: parsing a JSONL file, running one line, and OpenAI's output line format.

The server's runner and the offline ``vlmserve batch`` command share everything here, so a line
gives the same result either way. A line runs through the same :class:`ChatHandler` steps as an
interactive request (``prepare`` then ``complete``), only at batch priority.

Each input line is ``{"custom_id", "method": "POST", "url": ENDPOINT, "body": {...}}``. A line
that breaks these rules fails alone (its error goes to the error file); a file with no valid JSON
line at all, an empty file or one over the line limit is refused whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from vlmserve.api.chat import ChatHandler
from vlmserve.api.errors import (
    APIError,
    BadRequestError,
    InternalError,
    as_api_error,
    validation_param,
)
from vlmserve.api.protocol import ChatCompletionRequest
from vlmserve.engine.errors import EngineError

logger = logging.getLogger(__name__)

#: Endpoints a batch may target.
ENDPOINTS = ("/v1/chat/completions",)
#: Engine priority of batch lines: vLLM schedules lower values first; interactive requests are 0.
BATCH_PRIORITY = 10


@dataclass(frozen=True)
class ParsedLine:
    """One non-blank input line: where it is, its ``custom_id``, and why it is invalid (if so)."""

    line_no: int
    offset: int
    length: int
    custom_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class LineResult:
    """A finished line: its output line, whether it succeeded, and the tokens it used."""

    ok: bool
    line: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0


def scan_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, length, raw)`` for each non-blank line of ``path``."""
    offset = 0
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield offset, len(raw), raw
            offset += len(raw)


def parse_file(path: Path, endpoint: str, max_lines: int, max_line_bytes: int) -> list[ParsedLine]:
    """Check every line of a batch input file; a 400 when the file as a whole is unusable.

    A line longer than ``max_line_bytes`` (the chat route's request body limit) fails alone.
    """
    parsed: list[ParsedLine] = []
    seen: set[str] = set()
    for line_no, (offset, length, raw) in enumerate(scan_lines(path)):
        if line_no >= max_lines:
            raise BadRequestError(
                f"The input file has more than {max_lines} requests, this server's limit per "
                "batch; split it into several batches.",
                param="input_file_id",
                code="too_many_requests_in_file",
            )
        if length > max_line_bytes:
            parsed.append(ParsedLine(line_no, offset, length, None, _too_long(max_line_bytes)))
            continue
        custom_id, error = _check_line(raw, endpoint, seen)
        parsed.append(ParsedLine(line_no, offset, length, custom_id, error))
    if not parsed:
        raise BadRequestError("The input file is empty.", param="input_file_id", code="empty_file")
    if all(p.error is not None and p.error.startswith("not JSON") for p in parsed):
        raise BadRequestError(
            "The input file is not JSONL: no line is a JSON object. Each line must be "
            '{"custom_id", "method": "POST", "url", "body"}.',
            param="input_file_id",
            code="invalid_file_format",
        )
    return parsed


def _too_long(limit: int) -> str:
    return f"the line is longer than this server's request body limit of {limit} bytes"


def _check_line(raw: bytes, endpoint: str, seen: set[str]) -> tuple[str | None, str | None]:
    """The line's ``custom_id`` and what is wrong with it (``None`` when it may run)."""
    try:
        item = json.loads(raw)
    except ValueError:
        return None, "not JSON: the line does not parse"
    if not isinstance(item, dict):
        return None, "not JSON: the line is not a JSON object"
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, "custom_id must be a non-empty string"
    if custom_id in seen:
        return custom_id, f"duplicate custom_id {custom_id!r}: custom_ids must be unique"
    seen.add(custom_id)
    if item.get("method") != "POST":
        return custom_id, "method must be POST"
    if item.get("url") != endpoint:
        return custom_id, f"url {item.get('url')!r} differs from the batch's endpoint {endpoint!r}"
    if not isinstance(item.get("body"), dict):
        return custom_id, "body must be a JSON object"
    return custom_id, None


def read_line(path: Path, offset: int, length: int) -> dict[str, Any]:
    """The request object of one (valid) line of an input file."""
    with path.open("rb") as handle:
        handle.seek(offset)
        item: dict[str, Any] = json.loads(handle.read(length))
    return item


def invalid_line(custom_id: str | None, message: str) -> dict[str, Any]:
    """The error-file line of a line that could not run at all."""
    return _output(custom_id, None, {"code": "invalid_request", "message": message})


def expired_line(custom_id: str | None) -> dict[str, Any]:
    """The error-file line of a line the batch's completion window ran out on."""
    message = "This request could not be executed before the completion window expired."
    return _output(custom_id, None, {"code": "batch_expired", "message": message})


async def run_line(
    handler: ChatHandler, custom_id: str, body: dict[str, Any], timeout: float
) -> LineResult:
    """Run one request body through the chat handler; every failure becomes the line's error."""
    request_id = f"batch_req_{uuid.uuid4().hex}"
    try:
        request = _chat_request(body)
        loop = asyncio.get_running_loop()
        job = await handler.prepare(request, request_id)
        job.prepared.request.priority = BATCH_PRIORITY
        answer = await handler.complete(job, loop.time() + timeout)
    except (APIError, EngineError) as exc:
        # The chat route's exception handlers map engine errors the same way.
        error = as_api_error(exc) if isinstance(exc, EngineError) else exc
        return LineResult(False, _response(request_id, custom_id, error.status_code, error.body()))
    except Exception:
        logger.exception("batch line %s failed", custom_id)
        error = InternalError("The server had an error while processing this request.")
        return LineResult(False, _response(request_id, custom_id, 500, error.body()))
    usage = answer.usage
    return LineResult(
        True,
        _response(request_id, custom_id, 200, answer.model_dump()),
        usage.prompt_tokens,
        usage.completion_tokens,
        len(job.prepared.request.images),
    )


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """The body as a chat request; 400 for what the HTTP route would refuse, and for streams."""
    try:
        request = ChatCompletionRequest.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        param = validation_param(("body", *first["loc"]))
        raise BadRequestError(f"{first['msg']} (at {param})", param=param) from None
    if request.stream:
        raise BadRequestError("Batch requests cannot stream; drop 'stream'.", param="stream")
    return request


def _response(request_id: str, custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": status, "request_id": request_id, "body": body}
    return _output(custom_id, response, None, request_id)


def _output(
    custom_id: str | None,
    response: dict[str, Any] | None,
    error: dict[str, Any] | None,
    request_id: str | None = None,
) -> dict[str, Any]:
    line_id = request_id or f"batch_req_{uuid.uuid4().hex}"
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}

"""Logging setup: one request id per request on every log line, plain text or JSON."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

#: The id of the request being served in this task ("-" outside requests).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def for_request(request_id: str) -> dict[str, str]:
    """``extra=`` for a log call about ``request_id`` made outside its task (a worker thread).

    Context variables do not cross into threads the server did not start with the request's
    context, so the engine's worker thread names the request explicitly.
    """
    return {"request_id": request_id}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, json_logs: bool) -> None:
    """Send every logger (uvicorn's too) through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        _JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    if json_logs:
        # Progress bars write straight to stderr and would break one-object-per-line.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        # transformers' weight-loading bar ignores both variables in some releases (5.16).
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

"""OpenAI's JSON shapes for files, batches and list pages, rendered from the store's records."""

from __future__ import annotations

import json
from typing import Any

from vlmserve.batch.store import BatchRecord, Counts, FileRecord


def file_object(record: FileRecord) -> dict[str, Any]:
    """A ``file`` object as ``GET /v1/files/{id}`` returns it."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(record: BatchRecord, counts: Counts) -> dict[str, Any]:
    """A ``batch`` object with its current ``request_counts`` and token usage."""
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "model": record.model,
        "errors": None,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
        },
        "usage": {
            "input_tokens": counts.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts.prompt_tokens + counts.completion_tokens,
        },
        "metadata": json.loads(record.metadata) if record.metadata else None,
    }


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page: ``after`` the last id fetches the next one."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }

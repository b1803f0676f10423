"""HTTP routes of the Batch API: ``/v1/files`` and ``/v1/batches`` in OpenAI's shapes.

Thin: each route finds the caller's owner id and hands over to
:class:`~vlmserve.batch.service.BatchService`. With API keys on, a key sees only its own files
and batches; uploads and batch creations count against the key's request rate limit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from vlmserve.api.errors import BadRequestError
from vlmserve.api.json_body import JsonRoute
from vlmserve.api.protocol import ErrorResponse
from vlmserve.batch.objects import file_object
from vlmserve.batch.service import BatchService, owner_of

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429)
}
_bearer = HTTPBearer(auto_error=False, description="One of the server's API keys, if it has any.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
router = APIRouter(prefix="/v1", responses=_ERRORS, route_class=JsonRoute)
FILES_PATH = "/v1/files"


def _identify(request: Request, credentials: Credentials) -> tuple[str, str]:
    """The caller's rate-limit id and owner id (401 when keys are on and the key is wrong)."""
    keys = request.app.state.vlm.keys
    token = credentials.credentials if credentials else None
    caller = keys.caller(token)
    return caller, owner_of(token if keys.enabled else None)


async def _owner(request: Request, credentials: Credentials) -> str:
    """The caller's owner id."""
    return _identify(request, credentials)[1]


async def _admitted_owner(request: Request, credentials: Credentials) -> str:
    """The owner, once the key's request rate limit admits one more request (else 429)."""
    caller, owner = _identify(request, credentials)
    await request.app.state.vlm.limiter.admit(caller)
    return owner


Owner = Annotated[str, Depends(_owner)]
AdmittedOwner = Annotated[str, Depends(_admitted_owner)]


async def _service(request: Request) -> BatchService:
    service: BatchService = request.app.state.batches
    return service


Service = Annotated[BatchService, Depends(_service)]


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class BatchCreateRequest(BaseModel):
    """``POST /v1/batches``; unknown fields are ignored, as on the chat route."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: StrictStr
    endpoint: StrictStr
    completion_window: StrictStr
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    output_expires_after: dict[str, Any] | None = None


@router.post(FILES_PATH.removeprefix("/v1"))
async def upload_file(
    service: Service,
    owner: AdmittedOwner,
    file: Annotated[UploadFile, File(description="The JSONL input of a batch.")],
    purpose: Annotated[str, Form(description="Must be 'batch'.")],
) -> dict[str, Any]:
    """Upload a batch input file."""
    try:
        return await service.upload(owner, file, file.filename or "upload.jsonl", purpose)
    finally:
        await file.close()


@router.get("/files")
async def list_files(
    service: Service,
    owner: Owner,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    """The caller's files, newest first unless ``order=asc``."""
    return service.list_files(owner, purpose, after, limit, order)


@router.get("/files/{file_id}")
async def retrieve_file(service: Service, owner: Owner, file_id: str) -> dict[str, Any]:
    """One file's metadata."""
    return file_object(service.file(owner, file_id))


@router.get("/files/{file_id}/content", response_class=FileResponse)
async def file_content(service: Service, owner: Owner, file_id: str) -> FileResponse:
    """A file's body (a batch's output and error files included)."""
    record = service.file(owner, file_id)
    return FileResponse(
        service.area.path(file_id), media_type="application/jsonl", filename=record.filename
    )


@router.delete("/files/{file_id}")
async def delete_file(service: Service, owner: Owner, file_id: str) -> dict[str, Any]:
    """Delete a file."""
    return service.delete_file(owner, file_id)


@router.post("/batches")
async def create_batch(
    body: BatchCreateRequest, service: Service, owner: AdmittedOwner
) -> dict[str, Any]:
    """Queue a batch from an uploaded JSONL file."""
    if body.output_expires_after is not None:
        raise BadRequestError(
            "output_expires_after is not supported: this server keeps output files until "
            "they are deleted.",
            param="output_expires_after",
        )
    return await service.create(
        owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )


@router.get("/batches")
async def list_batches(
    service: Service,
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The caller's batches, newest first."""
    return service.list_batches(owner, after, limit)


@router.get("/batches/{batch_id}")
async def retrieve_batch(service: Service, owner: Owner, batch_id: str) -> dict[str, Any]:
    """One batch, with its current ``request_counts``."""
    return service.batch(owner, batch_id)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(service: Service, owner: Owner, batch_id: str) -> dict[str, Any]:
    """Cancel a batch: no new lines start, finished lines are kept."""
    return service.cancel(owner, batch_id)

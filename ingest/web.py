"""Web intake as a FastAPI router the UI app mounts: STOW-RS (`POST /dicomweb/studies`,
PS3.18 §10.5) and file upload (`POST /ingest/upload`: one DICOM file, a zip of them, or a
browser form holding either). Both take the same path as a C-STORE and answer as STOW-RS does.
"""

import json
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ingest.batch import ZIP_MAGIC, Outcome, receive_files, stow_response, zip_members
from ingest.errors import CannotUnderstand
from ingest.intake import Intake, IntakeKind, Origin
from ingest.multipart import boundary_of, split_parts

DICOM_JSON = "application/dicom+json"

FileSource = Callable[[], list[bytes]]


def intake_router(intake: Intake) -> APIRouter:
    """The intake endpoints, bound to `intake`."""
    router = APIRouter(tags=["intake"])

    @router.post("/dicomweb/studies")
    async def store_instances(request: Request) -> Response:
        """STOW-RS: multipart/related; type="application/dicom"."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            return _problem(415, "expected multipart/related; type=application/dicom")
        body = await request.body()
        return await _offer(intake, request, "stow", lambda: _stow_files(body, content_type))

    @router.post("/ingest/upload")
    async def upload(request: Request) -> Response:
        """A DICOM file, a zip of DICOM files, or a multipart/form-data form of either."""
        content_type = request.headers.get("content-type", "")
        body = await request.body()
        return await _offer(intake, request, "upload", lambda: _uploaded_files(body, content_type))

    return router


async def _offer(intake: Intake, request: Request, kind: IntakeKind, files: FileSource) -> Response:
    client = request.client
    origin = Origin(
        intake=kind,
        peer_address=client.host if client else "",
        peer_port=client.port if client else 0,
    )
    try:
        outcomes: list[Outcome] = await run_in_threadpool(
            lambda: receive_files(intake, files(), origin)
        )
    except CannotUnderstand as error:
        return _problem(400, str(error))
    if not outcomes:
        return _problem(400, "the request holds no files")
    status, body = stow_response(outcomes)
    return Response(json.dumps(body), status_code=status, media_type=DICOM_JSON)


def _stow_files(body: bytes, content_type: str) -> list[bytes]:
    return [part.content for part in split_parts(body, boundary_of(content_type))]


def _uploaded_files(body: bytes, content_type: str) -> list[bytes]:
    if content_type.lower().startswith("multipart/form-data"):
        parts = split_parts(body, boundary_of(content_type))
        return [file for part in parts for file in _files_in(part.content)]
    return _files_in(body)


def _files_in(blob: bytes) -> list[bytes]:
    return list(zip_members(blob)) if blob.startswith(ZIP_MAGIC) else [blob]


def _problem(status: int, detail: str) -> Response:
    return Response(
        json.dumps({"detail": detail}), status_code=status, media_type="application/json"
    )

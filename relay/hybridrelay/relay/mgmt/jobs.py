"""Bulk export and import of device identities as long-running jobs (issue 5).

Endpoints (all need the Manage right, like the rest of ``/$mgmt/v1``):

- ``POST /jobs/export`` → 202 and a job document; the job writes every device
  document (the shape of ``GET /devices/{id}``, keys included) as JSON Lines to
  ``{data_dir}/jobs/{id}.jsonl``, served by ``GET /jobs/{id}/output``
  (``application/x-ndjson``, streamed from the file) once the job has completed.
- ``POST /jobs/import`` with a JSON Lines body → 202 and a job document. The body is
  read as a stream (at most 256 MiB, else 413) into ``{data_dir}/jobs/{id}.import``
  before the answer; the job then applies it line by line. Each line is a device
  document plus ``importMode``:

  ``create``             create; an existing deviceId is an error (409)
  ``update``             create or replace unconditionally (default when absent;
                         ``createOrUpdate`` is accepted as an alias)
  ``updateIfMatchETag``  replace when the line's ``etag`` matches (412 otherwise;
                         404 when the device does not exist)
  ``delete``             delete whatever the etag (404 when it does not exist)
  ``deleteIfMatchETag``  delete when the line's ``etag`` matches (required)

  A bad line (malformed JSON, longer than 64 KiB, invalid deviceId, unknown mode, a
  store refusal) is recorded with its 1-based line number, the deviceId when known,
  the error code and a message, and the batch goes on. Blank lines are skipped but
  counted. The job document carries ``succeeded``, ``failed``, ``errorCount`` and the
  first 1,000 errors; ``GET /jobs/{id}/errors`` returns all of them as JSON Lines.
- ``GET /jobs`` lists the most recent jobs (newest first, at most 100 kept in memory;
  the files of evicted jobs are deleted); ``GET /jobs/{id}`` is one job.

Jobs are tasks owned by the app: :func:`install` adds a cleanup context that cancels
and awaits them before the store closes (a cancelled job ends ``failed``). Each job
start and finish is one ``mgmt_job`` line on the audit logger (ids and counts only) and
one lifecycle event of this node (``startJob``, then ``completeJob`` or ``failJob``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal

from aiohttp import web

from hybridrelay.errors import (
    EntityNotFoundError,
    HybridRelayError,
    PayloadTooBigError,
    QuotaExceededError,
    ValidationError,
)
from hybridrelay.relay.config import data_dir
from hybridrelay.relay.mgmt.access import Manager
from hybridrelay.relay.mgmt.audit import AUDIT
from hybridrelay.relay.mgmt.events import EVENTS, EventHub
from hybridrelay.relay.mgmt.json_body import body_chunks, parse_json_object
from hybridrelay.relay.mgmt.serving import serve_managed
from hybridrelay.relay.mgmt.views import IMPORT_ERROR, JOB, MAX_REPORTED_ERRORS, ImportErrorRow
from hybridrelay.relay.private_files import open_private, private_dir
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.models import MAX_PAGE, Device, validate_device_id

__all__ = [
    "JOBS",
    "MAX_LINE_BYTES",
    "MAX_REPORTED_ERRORS",
    "Job",
    "JobRegistry",
    "install",
    "job_routes",
]

JobType = Literal["export", "import"]
JobStatus = Literal["enqueued", "running", "completed", "failed"]
ImportMode = Literal["create", "update", "updateIfMatchETag", "delete", "deleteIfMatchETag"]

# One import line is one device document, whose fields are bounded (store/models.py):
# a line over this is that line's error ("import_line_size"), the job goes on.
MAX_LINE_BYTES: Final = 64 * 1024
MAX_JOBS_KEPT: Final = 100  # finished jobs remembered (the oldest are forgotten first)
_PREFIX: Final = "/$mgmt/v1"
_CHUNK: Final = 1 << 20
_BATCH_LINES: Final = 512
_MODES: Final[dict[str, ImportMode]] = {
    "create": "create",
    "update": "update",
    "createorupdate": "update",
    "updateifmatchetag": "updateIfMatchETag",
    "delete": "delete",
    "deleteifmatchetag": "deleteIfMatchETag",
}
_NDJSON: Final = "application/x-ndjson"

log = logging.getLogger(AUDIT)
_log = logging.getLogger(__name__)


# --- the jobs -------------------------------------------------------------------------------


@dataclass(eq=False, kw_only=True)
class Job:
    """One export or import; mutated only by its own task."""

    job_id: str
    type: JobType
    directory: Path
    who: str
    status: JobStatus = "enqueued"
    progress: int = 0
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    device_count: int = 0
    failure_reason: str | None = None
    succeeded: int = 0
    failed: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def output_path(self) -> Path:
        return self.directory / f"{self.job_id}.jsonl"

    @property
    def input_path(self) -> Path:
        return self.directory / f"{self.job_id}.import"

    @property
    def errors_path(self) -> Path:
        return self.directory / f"{self.job_id}.errors.jsonl"

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def output_url(self) -> str | None:
        return f"{_PREFIX}/jobs/{self.job_id}/output" if self.type == "export" else None

    @property
    def errors_url(self) -> str:
        return f"{_PREFIX}/jobs/{self.job_id}/errors"

    def to_json(self) -> dict[str, object]:
        """The job document (mgmt/views.py: JOB); an import job's adds its counts."""
        return JOB.encode(self)


class JobRegistry:
    """The app's jobs: the most recent ``MAX_JOBS_KEPT`` in memory, tasks owned here."""

    def __init__(self, state: RelayState, events: EventHub) -> None:
        self.state = state
        self.events = events  # startJob, completeJob, failJob
        self.directory = data_dir(state.config) / "jobs"
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._closing = False

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise EntityNotFoundError(f"job {job_id!r} does not exist")
        return job

    def recent(self) -> list[Job]:
        return list(reversed(self._jobs.values()))

    def new_job(self, kind: JobType, who: str) -> Job:
        if self._closing:
            raise QuotaExceededError("the relay is shutting down")
        running = self.state.config.relay.max_running_jobs
        if sum(not j.finished for j in self._jobs.values()) >= running:
            raise QuotaExceededError(
                f"at most {running} jobs may run at once", limit="max_running_jobs"
            )
        job = Job(job_id=uuid.uuid4().hex, type=kind, directory=self.directory, who=who)
        self._jobs[job.job_id] = job
        return job

    def forget(self, job: Job) -> None:
        """Drop a job that never started (its body was refused)."""
        self._jobs.pop(job.job_id, None)

    def start(self, job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
        job.task = asyncio.create_task(self._run(job, work), name=f"mgmt-job-{job.job_id}")
        self._evict()

    async def _run(self, job: Job, work: Callable[[Job], Awaitable[None]]) -> None:
        _audit_job(job, "start")
        job.status = "running"
        self.events.publish_job(job.to_json())  # startJob (this node's own event)
        try:
            await work(job)
        except asyncio.CancelledError:
            job.status, job.failure_reason = "failed", "the relay shut down"
            raise
        except HybridRelayError as exc:
            job.status, job.failure_reason = "failed", f"{exc.error_code}: {exc}"
        except OSError as exc:
            job.status, job.failure_reason = "failed", f"I/O error: {exc.strerror or exc}"
        except Exception:  # noqa: BLE001 - logged; the job ends failed, the relay goes on
            _log.exception("job %s failed", job.job_id)
            job.status, job.failure_reason = "failed", "InternalServerError"
        else:
            job.status, job.progress = "completed", 100
        finally:
            job.end_time = time.time()
            _audit_job(job, "finish")
            self.events.publish_job(job.to_json())  # completeJob or failJob
            if job.type == "import":
                with contextlib.suppress(OSError):
                    job.input_path.unlink(missing_ok=True)

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        excess = len(self._jobs) - MAX_JOBS_KEPT
        for job in finished[: max(excess, 0)]:
            del self._jobs[job.job_id]
            for path in (job.output_path, job.errors_path, job.input_path):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    async def close(self) -> None:
        self._closing = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


JOBS: Final = web.AppKey("hybridrelay_mgmt_jobs", JobRegistry)


def _audit_job(job: Job, phase: str) -> None:
    log.info(
        "mgmt_job",
        extra={
            "who": job.who,
            "phase": phase,
            "job_id": job.job_id,
            "job_type": job.type,
            "status": job.status,
            "device_count": job.device_count,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "failure_reason": job.failure_reason or "-",
        },
    )


def install(app: web.Application) -> None:
    """Hold the app's job registry; add it after the store's cleanup context."""
    app.cleanup_ctx.append(_jobs_ctx)


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = JobRegistry(app[STATE], app[EVENTS])
    app[JOBS] = registry
    yield
    await registry.close()


def _registry(request: web.Request) -> JobRegistry:
    registry = request.app.get(JOBS)
    if registry is None:  # the app was built without install(): no jobs here
        raise EntityNotFoundError("jobs are not enabled on this relay")
    return registry


# --- export ---------------------------------------------------------------------------------


def _write_block(path: Path, lines: list[bytes], *, first: bool) -> None:
    # Device credentials: 0600 in a 0700 directory, whatever the umask.
    with open_private(path, "wb" if first else "ab") as f:
        f.writelines(lines)


async def _export(state: RelayState, job: Job) -> None:
    await asyncio.to_thread(private_dir, job.directory)
    continuation: str | None = None
    first = True
    while True:
        page = await state.store.list_devices(limit=MAX_PAGE, continuation=continuation)
        lines = [_dump(d.to_json()) for d in page.items]
        await asyncio.to_thread(_write_block, job.output_path, lines, first=first)
        first = False
        job.device_count += len(lines)
        continuation = page.continuation
        if continuation is None:
            return


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


# --- import ---------------------------------------------------------------------------------


async def _spool(request: web.Request, job: Job) -> int:
    """Copy the request body to the job's input file; returns its size.

    413 over ``max_import_size``, 408 when the body stalls for ``body_idle_timeout``.
    """
    relay = request.app[STATE].config.relay
    limit = relay.max_import_size
    too_big = PayloadTooBigError(
        f"an import body is at most {limit} bytes", limit="max_import_size"
    )
    length = request.content_length
    if length is not None and length > limit:
        raise too_big
    await asyncio.to_thread(private_dir, job.directory)
    f = await asyncio.to_thread(open_private, job.input_path, "wb")
    total = 0
    try:
        buffer = bytearray()
        async for chunk in body_chunks(request, relay.body_idle_timeout, _CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_big
            buffer += chunk
            if len(buffer) >= _CHUNK:
                await asyncio.to_thread(f.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(f.write, bytes(buffer))
    finally:
        await asyncio.to_thread(f.close)
    return total


def _read_lines(f: IO[bytes], count: int) -> tuple[list[bytes | None], int]:
    """Up to ``count`` lines (None for one over MAX_LINE_BYTES, skipped to its end)."""
    lines: list[bytes | None] = []
    for _ in range(count):
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            break
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
                pass
            lines.append(None)
        else:
            lines.append(line)
    return lines, f.tell()


def _parse_line(raw: bytes) -> dict[str, object]:
    return parse_json_object(raw, "line")


def _mode(doc: Mapping[str, object]) -> ImportMode:
    value = doc.get("importMode", "update")
    mode = _MODES.get(value.lower()) if isinstance(value, str) else None
    if mode is None:
        raise ValidationError(
            "importMode",
            "must be create, update, updateIfMatchETag, delete or deleteIfMatchETag",
        )
    return mode


def _etag(doc: Mapping[str, object], mode: str) -> str:
    etag = doc.get("etag")
    if not isinstance(etag, str) or not etag.strip():
        raise ValidationError("etag", f"{mode} needs the line's etag")
    return etag.strip()


async def _apply(state: RelayState, doc: dict[str, object]) -> None:
    """Apply one import line. Raises HybridRelayError for a refused line."""
    mode = _mode(doc)
    store = state.store
    if mode in ("delete", "deleteIfMatchETag"):
        raw_id = doc.get("deviceId")
        if not isinstance(raw_id, str):
            raise ValidationError("deviceId", "must be a string")
        device_id = validate_device_id(raw_id)
        if_match = "*" if mode == "delete" else _etag(doc, mode)
        await store.delete_device(device_id, if_match=if_match)
        return
    device = Device.from_json(doc)
    if mode == "create":
        await store.create_device(device)
    elif mode == "updateIfMatchETag":
        await store.replace_device(device, if_match=_etag(doc, mode))
    else:  # update: create or replace, whatever the etag
        for _ in range(3):  # a concurrent create or delete between the two calls: retry
            try:
                await store.replace_device(device, if_match="*")
                return
            except EntityNotFoundError:
                pass
            with contextlib.suppress(HybridRelayError):
                await store.create_device(device)
                return
        await store.replace_device(device, if_match="*")


def _line_error(number: int, device_id: object, exc: HybridRelayError) -> dict[str, object]:
    known = device_id if isinstance(device_id, str) else None
    return IMPORT_ERROR.encode(ImportErrorRow(number, known, exc))


async def _import(state: RelayState, job: Job, size: int) -> None:
    f = await asyncio.to_thread(job.input_path.open, "rb")
    errors_file = await asyncio.to_thread(open_private, job.errors_path, "wb")
    try:
        number = 0
        while True:
            lines, position = await asyncio.to_thread(_read_lines, f, _BATCH_LINES)
            if not lines:
                break
            failures: list[bytes] = []
            for raw in lines:
                number += 1
                if raw is not None and not raw.strip():
                    continue
                job.device_count += 1
                device_id: object = None
                try:
                    if raw is None:
                        state.metrics.limit_hit("import_line_size")
                        raise PayloadTooBigError(f"a line is at most {MAX_LINE_BYTES} bytes")
                    doc = _parse_line(raw)
                    device_id = doc.get("deviceId")
                    await _apply(state, doc)
                except HybridRelayError as exc:
                    error = _line_error(number, device_id, exc)
                    job.failed += 1
                    if len(job.errors) < MAX_REPORTED_ERRORS:
                        job.errors.append(error)
                    failures.append(_dump(error))
                else:
                    job.succeeded += 1
            if failures:
                await asyncio.to_thread(errors_file.writelines, failures)
            job.progress = min(99, position * 100 // size) if size else 99
    finally:
        await asyncio.to_thread(f.close)
        await asyncio.to_thread(errors_file.close)


# --- handlers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    request: web.Request
    state: RelayState
    manager: Manager
    jobs: JobRegistry


Operation = Callable[[_Call], Awaitable[web.StreamResponse]]


async def _serve(request: web.Request, operations: Mapping[str, Operation]) -> web.StreamResponse:
    state = request.app[STATE]

    async def call(manager: Manager) -> _Call:
        return _Call(request=request, state=state, manager=manager, jobs=_registry(request))

    return await serve_managed(request, operations, call)


def _json(doc: object, *, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if location is not None:
        headers["Location"] = location
    return web.json_response(doc, status=status, headers=headers)


def _accepted(job: Job) -> web.Response:
    return _json(job.to_json(), status=202, location=f"{_PREFIX}/jobs/{job.job_id}")


async def _start_export(call: _Call) -> web.StreamResponse:
    job = call.jobs.new_job("export", call.manager.who)
    state = call.state

    async def work(j: Job) -> None:
        await _export(state, j)

    call.jobs.start(job, work)
    return _accepted(job)


async def _start_import(call: _Call) -> web.StreamResponse:
    job = call.jobs.new_job("import", call.manager.who)
    try:
        size = await _spool(call.request, job)
    except BaseException:
        call.jobs.forget(job)
        with contextlib.suppress(OSError):
            job.input_path.unlink(missing_ok=True)
        raise
    state = call.state

    async def work(j: Job) -> None:
        await _import(state, j, size)

    call.jobs.start(job, work)
    return _accepted(job)


async def _list_jobs(call: _Call) -> web.StreamResponse:
    return _json({"value": [j.to_json() for j in call.jobs.recent()]})


async def _get_job(call: _Call, job_id: str) -> web.StreamResponse:
    return _json(call.jobs.get(job_id).to_json())


def _finished_file(call: _Call, job_id: str, kind: JobType, what: str) -> Path:
    job = call.jobs.get(job_id)
    if job.type != kind:
        raise EntityNotFoundError(f"a {job.type} job has no {what}")
    if job.status != "completed":
        raise EntityNotFoundError(f"the job's {what} is there once it has completed")
    return job.output_path if kind == "export" else job.errors_path


async def _file(path: Path) -> web.StreamResponse:
    if not await asyncio.to_thread(path.is_file):
        raise EntityNotFoundError("the job's file is gone")
    return web.FileResponse(path, headers={"Content-Type": _NDJSON, "Cache-Control": "no-store"})


async def _job_output(call: _Call, job_id: str) -> web.StreamResponse:
    return await _file(_finished_file(call, job_id, "export", "output"))


async def _job_errors(call: _Call, job_id: str) -> web.StreamResponse:
    return await _file(_finished_file(call, job_id, "import", "errors"))


def _one(
    operation: Callable[[_Call, str], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job"]

        async def bound(call: _Call) -> web.StreamResponse:
            return await operation(call, job_id)

        return await _serve(request, {"GET": bound})

    return handler


def _table(
    operations: Mapping[str, Operation],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve(request, operations)

    return handler


def job_routes() -> list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
    """``(path under /$mgmt/v1, handler)`` pairs; the fixed paths come first."""
    return [
        ("/jobs", _table({"GET": _list_jobs})),
        ("/jobs/export", _table({"POST": _start_export})),
        ("/jobs/import", _table({"POST": _start_import})),
        ("/jobs/{job}", _one(_get_job)),
        ("/jobs/{job}/output", _one(_job_output)),
        ("/jobs/{job}/errors", _one(_job_errors)),
    ]

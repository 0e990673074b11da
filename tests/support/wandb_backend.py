"""A fake, test-only W&B server that answers the *write path* of the wandb SDK 0.31.

The real SDK (its Go ``wandb-core`` service does the HTTP) talks to it exactly as
it would talk to api.wandb.ai; the backend records what arrives so tests can
assert on it, and can inject faults (HTTP errors, 429 + Retry-After, delays,
a server that dies mid-request).

Endpoints:

* ``POST /graphql``                                - operations in ``GRAPHQL_HANDLERS``
* ``POST /files/<entity>/<project>/<run>/file_stream`` - history/summary/console/exit
* ``PUT  /upload/<token>``                         - uploads to URLs this server hands out
* ``POST /sdk/otel/v1/{metrics,logs}``             - answered 404 ("no telemetry proxy")
* ``GET  /healthz``                                 - 200 (the exporter's `mode: auto` probe)

Anything else is *not understood*: it is answered 400 (unknown GraphQL operation,
malformed body) or 404 (unknown path), printed to stderr as
``wandb_backend: unhandled request: <METHOD> <path> <operation>`` and recorded in
``backend.unhandled``.

Run by hand::

    python -m tests.support.wandb_backend --port 8080
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import gzip
import hashlib
import json
import math
import re
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

RunKey = tuple[str, str, str]

DEFAULT_ENTITY = "test-entity"
DEFAULT_PROJECT = "uncategorized"
_FILE_STREAM_PATH = re.compile(r"^/files/([^/]+)/([^/]+)/([^/]+)/file_stream$")
_OPERATION_NAME = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")
# Request kinds answered without an API key: upload URLs are presigned, the SDK's
# telemetry probe sends none, and requests not understood are reported regardless.
_NO_AUTH_KINDS = ("upload", "otel", "healthz", "unknown", "malformed")


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRun:
    """Everything the backend knows about one run (entity, project, run_id)."""

    entity: str
    project: str
    run_id: str
    storage_id: str
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    host: str | None = None
    program: str | None = None
    state: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    artifacts_logged: list[str] = field(default_factory=list)
    artifacts_used: list[str] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    upsert_count: int = 0
    file_stream_requests: int = 0
    exit_code: int | None = None
    finished: bool = False
    # The config exactly as the SDK sent it ({"key": {"value": ...}}), for resume.
    raw_config: dict[str, Any] = field(default_factory=dict, repr=False)
    logged_artifact_ids: list[str] = field(default_factory=list, repr=False)

    def user_config(self) -> dict[str, Any]:
        """The config without wandb's internal ``_wandb`` entry."""
        return {k: v for k, v in self.config.items() if k != "_wandb"}

    def user_summary(self) -> dict[str, Any]:
        """The summary without wandb's internal keys (``_step``, ``_runtime``, ...)."""
        return {k: v for k, v in self.summary.items() if not k.startswith("_")}


@dataclass
class RecordedArtifact:
    """One artifact version. ``version`` is ``None`` until the artifact is committed."""

    id: str
    entity: str
    project: str
    name: str
    type: str
    digest: str
    state: str = "PENDING"
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    description: str | None = None
    metadata: str | None = None
    created_by_run: str | None = None
    manifest: dict[str, Any] | None = None
    created_at: str = ""
    updated_at: str | None = None
    requested_aliases: list[str] = field(default_factory=list, repr=False)
    # Filled in snapshots (artifact_versions()): manifest path -> uploaded bytes,
    # and the manifest paths whose bytes never arrived.
    files: dict[str, bytes] = field(default_factory=dict)
    missing_files: list[str] = field(default_factory=list)

    @property
    def version_index(self) -> int | None:
        return None if self.version is None else int(self.version[1:])


@dataclass
class Fault:
    kind: str
    status: int | None = None
    count: int = 1
    retry_after: float | None = None
    delay: float | None = None
    die: bool = False


class _NotUnderstood(Exception):
    """The backend does not know how to answer this request."""


@dataclass
class _Request:
    method: str
    path: str
    headers: Any
    body: bytes
    kind: str = "unknown"
    operation: str = ""
    payload: Any = None
    error: str = ""


# --------------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], backend: WandbBackend) -> None:
        self.backend = backend
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets are normal here
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.server.backend._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        return body


# --------------------------------------------------------------------------- the backend


class WandbBackend:
    """In-memory fake W&B server; state survives ``stop()``/``start()``."""

    # GraphQL operation name -> handler method. Each handler gets (variables, query).
    GRAPHQL_HANDLERS: ClassVar[dict[str, str]] = {
        "Viewer": "_gql_viewer",
        "ServerFeaturesQuery": "_gql_server_features",
        "OrganizationCoreWeaveOrganizationID": "_gql_coreweave_org",  # system monitor
        "UpsertBucket": "_gql_upsert_bucket",
        "RunResumeStatus": "_gql_run_resume_status",
        "RunStoppedStatus": "_gql_run_stopped_status",
        "CreateRunFiles": "_gql_create_run_files",
        "NotifyScriptableRunAlert": "_gql_run_alert",  # run.alert()
        "ArtifactType": "_gql_artifact_type",
        "CreateArtifact": "_gql_create_artifact",
        "CreateArtifactManifest": "_gql_create_artifact_manifest",
        "UpdateArtifactManifest": "_gql_update_artifact_manifest",
        "CreateArtifactFiles": "_gql_create_artifact_files",
        "CommitArtifact": "_gql_commit_artifact",
        "ArtifactByID": "_gql_artifact_by_id",
        "UseArtifact": "_gql_use_artifact",
    }

    def __init__(
        self, port: int = 0, *, host: str = "127.0.0.1", api_key: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key or "local-" + secrets.token_hex(20)
        self.username = "test-user"
        self.default_entity = DEFAULT_ENTITY
        self.reject_auth = False
        # Server features reported by ServerFeaturesQuery (name -> enabled).
        self.features: dict[str, bool] = {"FILESTREAM_GZIP": True}
        self.verbose = False  # print every request to stderr
        self.trace_path: str | None = None  # append every request + answer here (debug)
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[str] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._runs: dict[RunKey, RecordedRun] = {}
        self._artifacts: dict[str, RecordedArtifact] = {}  # id -> artifact
        self._manifests: dict[str, str] = {}  # manifest id -> artifact id
        self._blobs: dict[str, bytes] = {}  # md5 (base64) -> bytes
        self._uploads: dict[str, tuple[Any, ...]] = {}  # token -> upload target
        self._ids = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> WandbBackend:
        with self._lock:
            if self._server is not None:
                return self
            server = _Server((self.host, self.port), self)
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"wandb-backend-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and drop every open connection."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def __enter__(self) -> WandbBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API

    def run(self, entity: str, project: str, run_id: str) -> RecordedRun:
        """A snapshot of what was recorded for one run (KeyError if none)."""
        with self._lock:
            try:
                run = copy.deepcopy(self._runs[(entity, project, run_id)])
            except KeyError:
                raise KeyError(
                    f"no run {entity}/{project}/{run_id}; known runs: {sorted(self._runs)}"
                ) from None
            run.artifacts_logged = [
                f"{a.name}:{a.version}"
                for a in map(self._artifacts.__getitem__, run.logged_artifact_ids)
                if a.state == "COMMITTED"
            ]
            return run

    def runs(self) -> list[RunKey]:
        with self._lock:
            return sorted(self._runs)

    def artifact_versions(
        self, entity: str, project: str, name: str, *, include_pending: bool = False
    ) -> list[RecordedArtifact]:
        """Committed versions of an artifact collection, oldest (v0) first."""
        with self._lock:
            found = [
                a
                for a in self._collection(entity, project, name)
                if include_pending or a.state == "COMMITTED"
            ]
            found.sort(key=lambda a: (a.version_index is None, a.version_index or 0, a.id))
            return [self._artifact_snapshot(a) for a in found]

    def _artifact_snapshot(self, artifact: RecordedArtifact) -> RecordedArtifact:
        snap = copy.deepcopy(artifact)
        for path, entry in (artifact.manifest or {}).get("contents", {}).items():
            blob = self._blobs.get(entry.get("digest"))
            if blob is None:
                snap.missing_files.append(path)
            else:
                snap.files[path] = blob
        return snap

    def inject(
        self,
        kind: str,
        *,
        status: int | None = None,
        count: int = 1,
        retry_after: float | None = None,
        delay: float | None = None,
        die: bool = False,
    ) -> None:
        """Make the next ``count`` requests of ``kind`` misbehave.

        ``kind`` is a GraphQL operation name, ``"file_stream"``, ``"upload"`` or
        ``"*"`` (any request). ``delay`` sleeps before answering; ``status`` answers
        that HTTP status instead of handling the request (with ``Retry-After:
        ceil(retry_after)`` when given, wandb-core only parses whole seconds);
        ``die`` stops the whole server when the request arrives, without answering.
        """
        if status is None and delay is None and not die:
            raise ValueError("inject() needs status, delay or die")
        with self._lock:
            self._faults.append(Fault(kind, status, count, retry_after, delay, die))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, kind: str, status: int | None = None) -> int:
        """How many requests of ``kind`` (optionally answered ``status``) arrived."""
        with self._lock:
            return sum(
                1 for k, _, s in self.requests if k == kind and (status is None or s == status)
            )

    # ------------------------------------------------------------------ dispatch

    def _serve(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        req = _Request(h.command, path, h.headers, b"")
        try:
            req.body = h.read_body()
            self._classify(req)
        except Exception as exc:  # unreadable body, bad JSON, ...
            req.kind, req.error = "malformed", f"malformed request: {exc!r}"

        if self.verbose:
            print(f"wandb_backend: {req.method} {req.path} {req.operation}", file=sys.stderr)

        if self.reject_auth or (req.kind not in _NO_AUTH_KINDS and not self._authorized(req)):
            self._respond(h, req, 401, {"errors": [{"message": "user is not logged in"}]})
            return

        fault = self._take_fault(req.kind)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.die:
                with self._lock:
                    self.requests.append((req.kind, req.path, 0))
                h.close_connection = True
                self.stop()
                return
            if fault.status is not None:
                headers = {}
                if fault.retry_after is not None:  # delay-seconds: a whole number
                    headers["Retry-After"] = str(math.ceil(fault.retry_after))
                body = {"errors": [{"message": f"injected fault: HTTP {fault.status}"}]}
                self._respond(h, req, fault.status, body, headers)
                return

        try:
            status, body = self._handle(req)
        except _NotUnderstood as exc:
            self._unhandled(req, str(exc))
            status = 404 if req.kind == "unknown" else 400
            self._respond(h, req, status, {"errors": [{"message": f"not understood: {exc}"}]})
            return
        except Exception:
            tb = traceback.format_exc()
            self._unhandled(req, f"handler crashed:\n{tb}")
            self._respond(h, req, 500, {"errors": [{"message": "backend handler crashed"}]})
            return
        self._respond(h, req, status, body)

    def _classify(self, req: _Request) -> None:
        if req.method == "POST" and req.path == "/graphql":
            req.payload = json.loads(req.body or b"{}")
            query = req.payload.get("query") or ""
            match = _OPERATION_NAME.match(query)
            req.operation = req.payload.get("operationName") or (match and match[1]) or ""
            req.kind = req.operation or "graphql"
        elif req.method == "POST" and _FILE_STREAM_PATH.match(req.path):
            req.kind = "file_stream"
            req.payload = json.loads(req.body or b"{}")
        elif req.method == "PUT" and req.path.startswith("/upload/"):
            req.kind = "upload"
        elif req.path.startswith("/sdk/otel/"):
            req.kind = "otel"
        elif req.method == "GET" and req.path == "/healthz":
            req.kind = "healthz"  # nemo_wandb_hook's `mode: auto` probe

    def _authorized(self, req: _Request) -> bool:
        auth = req.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user_pass = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return False
            return user_pass.partition(":")[2] == self.api_key
        if auth.startswith("Bearer "):
            return auth[7:] == self.api_key
        return False

    def _take_fault(self, kind: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in (kind, "*") and kind != "otel":
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _handle(self, req: _Request) -> tuple[int, Any]:
        if req.kind == "malformed":
            raise _NotUnderstood(req.error)
        if req.kind == "file_stream":
            return 200, self._file_stream(req)
        if req.kind == "upload":
            return 200, self._upload(req)
        if req.kind == "otel":
            return 404, {"error": "the OpenTelemetry proxy is not supported"}
        if req.kind == "healthz":
            return 200, {"status": "ok"}
        if req.path == "/graphql" and req.method == "POST":
            method = self.GRAPHQL_HANDLERS.get(req.operation)
            if method is None:
                raise _NotUnderstood(f"unknown GraphQL operation {req.operation or '?'}")
            variables = req.payload.get("variables") or {}
            data = getattr(self, method)(variables, req.payload.get("query") or "")
            return 200, {"data": data}
        raise _NotUnderstood("unknown endpoint")

    def _unhandled(self, req: _Request, why: str) -> None:
        line = f"{req.method} {req.path} {req.operation}".rstrip()
        print(f"wandb_backend: unhandled request: {line}\n    ({why})", file=sys.stderr)
        with self._lock:
            self.unhandled.append(line)

    def _respond(
        self,
        h: _Handler,
        req: _Request,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self.requests.append((req.kind, req.path, status))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        if self.trace_path:
            self._trace(req, status, data)
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.end_headers()
            if req.method != "HEAD":
                h.wfile.write(data)
        except OSError:
            h.close_connection = True

    def _trace(self, req: _Request, status: int, data: bytes) -> None:
        with self._lock, open(self.trace_path or "", "a") as f:
            f.write(f"=== {req.method} {req.path} {req.operation} -> {status}\n")
            f.write(req.body[:6000].decode(errors="replace") + "\n--- answer:\n")
            f.write(data[:6000].decode(errors="replace") + "\n")

    # ------------------------------------------------------------------ helpers

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return _b64(f"{prefix}:{self._ids}")

    def _upload_url(self, *target: Any) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._uploads[token] = target
        return f"{self.base_url}/upload/{token}"

    def _get_run(self, entity: str, project: str, run_id: str, create: bool = False) -> RecordedRun:
        key = (entity, project, run_id)
        run = self._runs.get(key)
        if run is None:
            if not create:
                raise _NotUnderstood(f"no such run {entity}/{project}/{run_id}")
            storage_id = _b64(f"Run:v1:{run_id}:{project}:{entity}")
            run = self._runs[key] = RecordedRun(entity, project, run_id, storage_id)
        return run

    def _run_by_storage_id(self, storage_id: str) -> RecordedRun | None:
        return next((r for r in self._runs.values() if r.storage_id == storage_id), None)

    def _project_json(self, entity: str, project: str) -> dict[str, Any]:
        return {
            "id": _b64(f"Project:v1:{project}:{entity}"),
            "internalId": _b64(f"Project:{entity}/{project}"),
            "name": project,
            "entity": {"id": _b64(f"Entity:{entity}"), "name": entity},
        }

    # ------------------------------------------------------------------ GraphQL: auth

    def _gql_viewer(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        return {
            "viewer": {
                "id": _b64(f"User:{self.username}"),
                "entity": self.default_entity,
                "username": self.username,
                "email": f"{self.username}@example.invalid",
                "flags": "{}",
                "admin": False,
                "photoUrl": None,
                "teams": {"edges": [{"node": {"name": self.default_entity}}]},
                "defaultFramework": None,
            }
        }

    def _gql_server_features(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        features = [{"name": n, "isEnabled": on} for n, on in self.features.items()]
        return {"serverInfo": {"features": features}}

    def _gql_coreweave_org(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        return {"entity": {"organization": None}}  # not a CoreWeave organization

    # ------------------------------------------------------------------ GraphQL: runs

    def _gql_upsert_bucket(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            run = self._run_by_storage_id(v["id"]) if v.get("id") else None
            inserted = False
            if run is None:
                entity = v.get("entity") or self.default_entity
                project = v.get("project") or DEFAULT_PROJECT
                run_id = v.get("name") or secrets.token_hex(4)
                inserted = (entity, project, run_id) not in self._runs
                run = self._get_run(entity, project, run_id, create=True)
            run.upsert_count += 1
            for var, attr in [
                ("displayName", "name"),
                ("groupName", "group"),
                ("jobType", "job_type"),
                ("notes", "notes"),
                ("host", "host"),
                ("program", "program"),
                ("state", "state"),
            ]:
                if v.get(var) is not None:
                    setattr(run, attr, v[var])
            if v.get("tags") is not None:
                run.tags = list(v["tags"])
            if v.get("config"):
                raw = json.loads(v["config"])
                run.raw_config.update(raw)
                run.config.update(
                    {k: (e.get("value") if isinstance(e, dict) else e) for k, e in raw.items()}
                )
            if v.get("summaryMetrics"):
                run.summary.update(json.loads(v["summaryMetrics"]))
            return {"upsertBucket": {"bucket": self._bucket_json(run), "inserted": inserted}}

    def _bucket_json(self, run: RecordedRun) -> dict[str, Any]:
        return {
            "id": run.storage_id,
            "name": run.run_id,
            "displayName": run.name,
            "description": run.notes,
            "config": json.dumps(run.raw_config),
            "sweepName": None,
            "project": self._project_json(run.entity, run.project),
            "historyLineCount": len(run.history),
        }

    def _gql_run_resume_status(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        entity = v.get("entity") or self.default_entity
        project = v.get("project") or DEFAULT_PROJECT
        with self._lock:
            if not any(k[:2] == (entity, project) for k in self._runs):
                return {"model": None}  # no such project (yet)
            run = self._runs.get((entity, project, v["name"]))
            model = self._project_json(entity, project)
            model["bucket"] = None if run is None else self._resume_bucket_json(run)
            return {"model": model}

    def _resume_bucket_json(self, run: RecordedRun) -> dict[str, Any]:
        wandb_value = (run.raw_config.get("_wandb") or {}).get("value") or {}
        return {
            "id": run.storage_id,
            "name": run.run_id,
            "displayName": run.name,
            "summaryMetrics": json.dumps(run.summary),
            "logLineCount": len(run.output),
            "historyLineCount": len(run.history),
            "eventsLineCount": len(run.events),
            "historyTail": json.dumps([json.dumps(h) for h in run.history[-10:]]),
            "eventsTail": json.dumps([json.dumps(e) for e in run.events[-10:]]),
            "config": json.dumps(run.raw_config),
            "tags": list(run.tags),
            "notes": run.notes,
            # Only the keys asked for (wandbConfig(keys: ["t"])); wandb-core treats a
            # run as resumable only when "t" is present.
            "wandbConfig": json.dumps({k: wandb_value[k] for k in ("t",) if k in wandb_value}),
        }

    def _gql_run_stopped_status(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        return {"project": {"run": {"stopped": False}}}

    def _gql_create_run_files(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            run = self._get_run(v["entity"], v["project"], v["run"], create=True)
            key = (run.entity, run.project, run.run_id)
            files = [
                {"name": name, "uploadUrl": self._upload_url("run_file", key, name)}
                for name in v["files"]
            ]
        return {"createRunFiles": {"runID": run.storage_id, "uploadHeaders": [], "files": files}}

    def _gql_run_alert(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            run = self._get_run(v["entityName"], v["projectName"], v["runName"], create=True)
            alert = {k: v.get(k) for k in ("title", "text", "severity")}
            run.alerts.append(alert)
        return {"notifyScriptableRunAlert": {"success": True}}

    # ------------------------------------------------------------------ file_stream

    def _file_stream(self, req: _Request) -> dict[str, Any]:
        match = _FILE_STREAM_PATH.match(req.path)
        assert match is not None
        body = req.payload
        with self._lock:
            run = self._get_run(*match.groups(), create=True)
            run.file_stream_requests += 1
            for name, chunk in (body.get("files") or {}).items():
                offset, lines = chunk.get("offset", 0), chunk.get("content", [])
                if name == "wandb-history.jsonl":
                    _put_lines(run.history, offset, [json.loads(x) for x in lines])
                elif name == "wandb-summary.json":
                    for line in lines:
                        run.summary.update(json.loads(line))
                elif name == "wandb-events.jsonl":
                    _put_lines(run.events, offset, [json.loads(x) for x in lines])
                elif name == "output.log":
                    _put_lines(run.output, offset, list(lines))
                else:
                    raise _NotUnderstood(f"file_stream file {name!r}")
            if body.get("complete"):
                run.finished = True
                run.exit_code = body.get("exitcode")
        return {"exitcode": None, "limits": {}}

    # ------------------------------------------------------------------ uploads

    def _upload(self, req: _Request) -> dict[str, Any]:
        token = req.path.rsplit("/", 1)[1]
        with self._lock:
            target = self._uploads.get(token)
            if target is None:
                raise _NotUnderstood("upload to an unknown URL")
            what = target[0]
            if what == "run_file":
                _, run_key, name = target
                self._get_run(*run_key).files[name] = req.body
            elif what == "blob":
                self._blobs[_b64md5(req.body)] = req.body
            else:  # the manifest of an artifact
                self._artifact(target[1]).manifest = json.loads(req.body)
        return {}

    # ------------------------------------------------------------------ artifacts

    def _gql_artifact_type(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        entity = v.get("entity") or self.default_entity
        project = v.get("project") or DEFAULT_PROJECT
        with self._lock:
            artifact = self._find_artifact(entity, project, v["name"])
        found = None if artifact is None else {"artifactType": {"name": artifact.type}}
        return {"project": {"artifact": found}}

    def _artifact(self, artifact_id: str) -> RecordedArtifact:
        try:
            return self._artifacts[artifact_id]
        except KeyError:
            raise _NotUnderstood(f"unknown artifact id {artifact_id}") from None

    def _find_artifact(self, entity: str, project: str, spec: str) -> RecordedArtifact | None:
        """Resolve ``name``, ``name:vN`` or ``name:<alias>`` to a committed version."""
        name, _, ref = spec.partition(":")
        committed = [a for a in self._collection(entity, project, name) if a.version]
        for artifact in sorted(committed, key=lambda a: -(a.version_index or 0)):
            if ref in ("", artifact.version) or ref in artifact.aliases:
                return artifact
        return None

    def _gql_create_artifact(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        inp = v["input"]
        entity = inp.get("entityName") or self.default_entity
        project = inp.get("projectName") or DEFAULT_PROJECT
        name = inp["artifactCollectionName"]
        aliases = [a["alias"] for a in inp.get("aliases") or []]
        with self._lock:
            collection = self._collection(entity, project, name)
            committed = sorted(
                (a for a in collection if a.state == "COMMITTED"), key=lambda a: a.version_index
            )
            latest = committed[-1] if committed else None
            pending_twin = next(
                (a for a in collection if a.state == "PENDING" and a.digest == inp["digest"]),
                None,
            )
            if latest is not None and latest.digest == inp["digest"]:
                # Same content as the latest version: no new version (real W&B dedup).
                artifact = latest
                self._add_aliases(artifact, aliases)
            elif pending_twin is not None:
                artifact = pending_twin  # a retried CreateArtifact
            else:
                artifact = RecordedArtifact(
                    id=self._new_id("Artifact"),
                    entity=entity,
                    project=project,
                    name=name,
                    type=inp["artifactTypeName"],
                    digest=inp["digest"],
                    description=inp.get("description"),
                    metadata=inp.get("metadata"),
                    created_by_run=inp.get("runName"),
                    created_at=_now(),
                )
                artifact.requested_aliases = aliases
                self._artifacts[artifact.id] = artifact
            if inp.get("runName"):
                run = self._get_run(entity, project, inp["runName"], create=True)
                if artifact.id not in run.logged_artifact_ids:
                    run.logged_artifact_ids.append(artifact.id)
            return {
                "createArtifact": {
                    "artifact": {
                        "id": artifact.id,
                        "state": artifact.state,
                        "artifactSequence": {
                            "latestArtifact": None if latest is None else {"id": latest.id}
                        },
                    }
                }
            }

    def _gql_create_artifact_manifest(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            artifact = self._artifact(v["artifactID"])
            manifest_id = self._new_id("ArtifactManifest")
            self._manifests[manifest_id] = artifact.id
        return {"createArtifactManifest": self._manifest_json(manifest_id, artifact, v)}

    def _gql_update_artifact_manifest(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            artifact_id = self._manifests.get(v["artifactManifestID"])
            if artifact_id is None:
                raise _NotUnderstood(f"unknown artifact manifest {v['artifactManifestID']}")
            artifact = self._artifact(artifact_id)
        return {"updateArtifactManifest": self._manifest_json(v["artifactManifestID"], artifact, v)}

    def _manifest_json(
        self, manifest_id: str, artifact: RecordedArtifact, v: dict[str, Any]
    ) -> dict[str, Any]:
        file: dict[str, Any] = {"id": self._new_id("File")}
        if v.get("includeUpload", True):
            file["uploadUrl"] = self._upload_url("manifest", artifact.id)
            file["uploadHeaders"] = []
        return {"artifactManifest": {"id": manifest_id, "file": file}}

    def _gql_create_artifact_files(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        edges = []
        with self._lock:
            for f in v["input"]["artifactFiles"]:
                artifact = self._artifact(f["artifactID"])
                known = f["md5"] in self._blobs
                edges.append(
                    {
                        "node": {
                            "storagePath": f"wandb_artifacts/{artifact.entity}/{_hex(f['md5'])}",
                            # Like W&B: no upload URL when the content is already stored.
                            "uploadUrl": None if known else self._upload_url("blob", f["md5"]),
                            "uploadHeaders": [],
                            "uploadMultipartUrls": None,
                            "artifact": {"id": artifact.id},
                        }
                    }
                )
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _gql_commit_artifact(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            artifact = self._artifact(v["artifactID"])
            if artifact.state != "COMMITTED":
                siblings = self._collection(artifact.entity, artifact.project, artifact.name)
                index = sum(1 for a in siblings if a.state == "COMMITTED")
                artifact.version = f"v{index}"
                artifact.state = "COMMITTED"
                artifact.updated_at = _now()
                self._add_aliases(artifact, ["latest", *artifact.requested_aliases])
            return {"commitArtifact": {"artifact": {"id": artifact.id, "digest": artifact.digest}}}

    def _collection(self, entity: str, project: str, name: str) -> list[RecordedArtifact]:
        key = (entity, project, name)
        return [a for a in self._artifacts.values() if (a.entity, a.project, a.name) == key]

    def _add_aliases(self, artifact: RecordedArtifact, aliases: list[str]) -> None:
        """Give ``aliases`` to ``artifact``; an alias lives on one version at a time."""
        for other in self._collection(artifact.entity, artifact.project, artifact.name):
            if other is not artifact:
                other.aliases = [a for a in other.aliases if a not in aliases]
        artifact.aliases += [a for a in dict.fromkeys(aliases) if a not in artifact.aliases]

    def _gql_artifact_by_id(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            artifact = self._artifacts.get(v["id"])
            return {"artifact": None if artifact is None else self._artifact_json(artifact)}

    def _artifact_json(self, artifact: RecordedArtifact) -> dict[str, Any]:
        """The ``ArtifactFragment`` the Python SDK validates with pydantic."""
        project = self._project_json(artifact.entity, artifact.project)
        collection = {"__typename": "ArtifactSequence", "name": artifact.name, "project": project}
        contents = (artifact.manifest or {}).get("contents", {})
        return {
            "__typename": "Artifact",
            "id": artifact.id,
            "artifactSequence": collection,
            "versionIndex": artifact.version_index,
            "artifactType": {"name": artifact.type},
            "description": artifact.description,
            "metadata": artifact.metadata,
            "ttlDurationSeconds": -1,
            "ttlIsInherited": True,
            "tags": [],
            "historyStep": None,
            "state": artifact.state,
            "size": sum(int(e.get("size") or 0) for e in contents.values()),
            "digest": artifact.digest,
            "digestAlgorithm": "MANIFEST_MD5",
            "commitHash": None,
            "fileCount": len(contents),
            "createdAt": artifact.created_at,
            "updatedAt": artifact.updated_at,
            "aliases": [
                {
                    "__typename": "ArtifactAlias",
                    "id": self._new_id("ArtifactAlias"),
                    "alias": alias,
                    "artifactCollection": collection,
                }
                for alias in artifact.aliases
            ],
        }

    def _gql_use_artifact(self, v: dict[str, Any], query: str) -> dict[str, Any]:
        with self._lock:
            artifact = self._artifact(v["artifactID"])
            run = self._get_run(v["entityName"], v["projectName"], v["runName"], create=True)
            used = f"{artifact.name}:{artifact.version}"
            if used not in run.artifacts_used:
                run.artifacts_used.append(used)
            return {
                "useArtifact": {
                    "artifact": {
                        "id": artifact.id,
                        "digest": artifact.digest,
                        "description": artifact.description,
                        "state": artifact.state,
                        "createdAt": artifact.created_at,
                        "metadata": artifact.metadata,
                    }
                }
            }


def _put_lines(target: list[Any], offset: int, lines: list[Any]) -> None:
    """Write ``lines`` at ``offset`` (re-sent lines overwrite, as on the real server)."""
    for i, line in enumerate(lines, start=offset):
        if i < len(target):
            target[i] = line
        else:
            target.extend([None] * (i - len(target)))
            target.append(line)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _hex(b64md5: str) -> str:
    try:
        return base64.b64decode(b64md5).hex()
    except ValueError:
        return b64md5


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake W&B backend on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every request")
    args = parser.parse_args(argv)
    backend = WandbBackend(args.port, api_key=args.api_key)
    backend.verbose = args.verbose
    # Ctrl-C (also when started in the background, where SIGINT may be ignored) / kill.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    backend.start()
    print(f"WANDB_BASE_URL={backend.base_url}")
    print(f"WANDB_API_KEY={backend.api_key}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
    print(f"wandb_backend: stopped; runs: {backend.runs()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

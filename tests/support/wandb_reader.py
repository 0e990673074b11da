"""Reader for wandb's binary ``.wandb`` transaction log, for asserting on offline runs.

File layout (wandb 0.31): a 7-byte header (``b":W&B"``, uint16 LE magic 0xBEE1, version
byte 0) followed by LevelDB-log framing in 32 KiB blocks counted from offset 0. Each chunk
is ``crc32 (uint32 LE) | length (uint16 LE) | type (uint8) | payload``; the checksum is
``zlib.crc32(payload, zlib.crc32(bytes([type])))``. Chunk types FULL/FIRST/MIDDLE/LAST
reassemble into serialized ``wandb_internal_pb2.Record`` protos.

Caveat: in offline mode ``run.finish()`` may return while the file still holds only its
header; call ``wandb.teardown()`` (which waits for wandb-core to exit) before reading.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto.wandb_internal_pb2 import Record

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_RUN_DIR_RE = re.compile(r"^offline-run-(\d{8}_\d{6})-(.+)$")


@dataclass
class ArtifactFile:
    """One manifest entry of a logged artifact."""

    path: str
    digest: str
    size: int
    local_path: str = ""

    def read_bytes(self) -> bytes:
        """Read the staged copy of the file (offline runs keep it under WANDB_DATA_DIR)."""
        if not self.local_path or not Path(self.local_path).is_file():
            raise FileNotFoundError(
                f"artifact file {self.path!r}: local copy {self.local_path!r} is gone"
            )
        return Path(self.local_path).read_bytes()


@dataclass
class ArtifactEntry:
    """An ``artifact`` record (a logged artifact version)."""

    name: str
    type: str
    digest: str
    aliases: list[str]
    description: str
    metadata: dict
    files: dict[str, ArtifactFile]


@dataclass
class OfflineRun:
    """Everything a single offline run directory's ``.wandb`` file says about the run."""

    run_dir: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    entity: str = ""
    project: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    record_types: list[str] = field(default_factory=list)
    truncated: bool = False
    exit_code: int | None = None


def read_records(path: Path) -> tuple[list[Record], bool]:
    """Parse every record of a ``.wandb`` file; return ``(records, truncated)``.

    ``truncated`` is True when the file ends inside a chunk or inside a multi-chunk record
    (the writer was killed); the records before that point are returned. Bad headers,
    checksums or framing raise ``ValueError`` naming the file and offset.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:CHUNK_HEADER_SIZE] != HEADER:
        raise ValueError(f"{path}: bad header {data[:CHUNK_HEADER_SIZE]!r}, expected {HEADER!r}")
    records: list[Record] = []
    parts: list[bytes] | None = None  # chunks of a record split across blocks
    record_start = off = CHUNK_HEADER_SIZE
    while off < len(data):
        room = BLOCK_SIZE - off % BLOCK_SIZE
        if room < CHUNK_HEADER_SIZE:  # block tail too short for a chunk: zero padding
            off += room
            continue
        if len(data) - off < CHUNK_HEADER_SIZE:
            return records, True
        crc, length, kind = struct.unpack_from("<IHB", data, off)
        start = off + CHUNK_HEADER_SIZE
        if length > room - CHUNK_HEADER_SIZE:
            raise ValueError(f"{path}: chunk at offset {off} overruns its block (length {length})")
        if start + length > len(data):
            return records, True
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch in chunk at offset {off}")
        if kind in (FULL, FIRST) and parts is None:
            record_start, parts = off, [payload]
        elif kind in (MIDDLE, LAST) and parts is not None:
            parts.append(payload)
        else:
            raise ValueError(f"{path}: unexpected chunk type {kind} at offset {off}")
        off = start + length
        if kind in (FULL, LAST):
            record = Record()
            try:
                record.ParseFromString(b"".join(parts))
            except Exception as exc:
                raise ValueError(f"{path}: undecodable record at offset {record_start}") from exc
            records.append(record)
            parts = None
    return records, parts is not None


def _decode(value_json: str) -> Any:
    return json.loads(value_json) if value_json else None


def _key_path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _set_path(tree: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(tree.get(key), dict):
            tree[key] = {}
        tree = tree[key]
    tree[keys[-1]] = value


def _remove_path(tree: dict, keys: list[str]) -> None:
    for key in keys[:-1]:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(keys[-1], None)


def _apply_updates(tree: dict, record: Any) -> None:
    """Apply a ConfigRecord/SummaryRecord (updates then removals) to ``tree``."""
    for item in record.update:
        _set_path(tree, _key_path(item), _decode(item.value_json))
    for item in record.remove:
        _remove_path(tree, _key_path(item))


def _history_value(item: Any) -> Any:
    kind = item.WhichOneof("value")  # typed form; 0.31 writes value_json by default
    if kind is None:
        return _decode(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _artifact(rec: Any) -> ArtifactEntry:
    files = {
        e.path: ArtifactFile(path=e.path, digest=e.digest, size=e.size, local_path=e.local_path)
        for e in rec.manifest.contents
    }
    return ArtifactEntry(
        name=rec.name,
        type=rec.type,
        digest=rec.digest,
        aliases=list(rec.aliases),
        description=rec.description,
        metadata=json.loads(rec.metadata) if rec.metadata else {},
        files=files,
    )


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Fold the records of ``run_dir/run-<id>.wandb`` into an :class:`OfflineRun`."""
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if len(logs) != 1:
        raise FileNotFoundError(f"{run_dir}: expected one run-*.wandb file, found {logs}")
    records, truncated = read_records(logs[0])
    run = OfflineRun(run_dir=run_dir, run_id=logs[0].stem[len("run-") :], truncated=truncated)
    for record in records:
        kind = record.WhichOneof("record_type") or "unknown"
        run.record_types.append(kind)
        if kind == "run":  # every run record is a full snapshot (re-sent on rename etc.)
            r = record.run
            run.run_id, run.name, run.group = r.run_id or run.run_id, r.display_name, r.run_group
            run.job_type, run.tags, run.notes = r.job_type, list(r.tags), r.notes
            run.entity, run.project = r.entity, r.project
            _apply_updates(run.config, r.config)
            _apply_updates(run.summary, r.summary)
        elif kind == "config":
            _apply_updates(run.config, record.config)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_path(row, _key_path(item), _history_value(item))
            run.history.append(row)
        elif kind == "artifact":
            run.artifacts.append(_artifact(record.artifact))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def _start_key(run_dir: Path) -> tuple[str, int, str]:
    """Sort key: dir timestamp, then the ``-N`` suffix wandb adds on same-second collisions."""
    stamp, rest = _RUN_DIR_RE.match(run_dir.name).groups()
    suffix = 0
    for log in run_dir.glob("run-*.wandb"):
        tail = rest.removeprefix(log.stem[len("run-") :])
        if tail[:1] == "-" and tail[1:].isdigit():
            suffix = int(tail[1:])
    return stamp, suffix, run_dir.name


def find_offline_runs(root: Path) -> list[Path]:
    """Every ``offline-run-*`` directory below ``root``, oldest start first."""
    dirs = {
        p
        for p in Path(root).rglob("offline-run-*")
        if p.is_dir() and not p.is_symlink() and _RUN_DIR_RE.match(p.name)
    }
    return sorted(dirs, key=_start_key)


def user_config(run: OfflineRun) -> dict:
    """The user's config: everything but ``_wandb``.

    The ``.wandb`` log stores config values raw (``value_json`` of the value itself); the
    ``{"value": ..., "desc": ...}`` wrapping only exists in the server's/config.yaml
    representation, so nothing is unwrapped here (a user dict with a ``value`` key stays
    intact).
    """
    return {k: v for k, v in run.config.items() if k != "_wandb"}


def read_table(run: OfflineRun, key: str) -> tuple[list[str], list[list]]:
    """Load the ``wandb.Table`` stored under summary ``key``; return ``(columns, rows)``."""
    ref = run.summary.get(key)
    if not isinstance(ref, dict) or ref.get("_type") != "table-file":
        raise KeyError(
            f"summary of {run.run_dir} has no table under {key!r} (keys: {sorted(run.summary)})"
        )
    table = json.loads((run.run_dir / "files" / ref["path"]).read_text())
    return table["columns"], table["data"]

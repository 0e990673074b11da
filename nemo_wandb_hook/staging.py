"""Copy a task's artifacts into the stage directory: atomically, redacted, no caches.

Layout: `<stage_dir>/<invocation>/<task dir name>/` with the files and `manifest.json`.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from nemo_wandb_hook.redaction import Redactor
from nemo_wandb_hook.results import TaskLocation

log = logging.getLogger(__name__)

ARTIFACT_FILES = ("results.yml", "run_config.yml", "metadata.yaml", "eval_factory_metrics.json")
NEVER_STAGE = ("*.db", "*.db-*", "*.lock", ".secrets.env", "*cache*", "*.sqlite*")
MANIFEST = "manifest.json"


class StageError(OSError):
    """The stage directory cannot be written."""


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the staged task dir
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedTask:
    directory: Path
    files: list[StagedFile]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.path}\0{f.sha256}\n".encode())
        return h.hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory beside `final` and swap it in only when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; staged results are for the team
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in NEVER_STAGE)


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symlink followed, stays within `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _copy_redacted(
    src: Path, dst: Path, redactor: Redactor, max_lines: int | None = None
) -> StagedFile:
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        for number, raw in enumerate(fin):
            if max_lines is not None and number >= max_lines:
                break
            line = redactor.line(raw.decode("utf-8", "surrogateescape"))
            data = line.encode("utf-8", "surrogateescape")
            h.update(data)
            size += len(data)
            fout.write(data)
    return StagedFile(path="", size=size, sha256=h.hexdigest())


def _sources(loc: TaskLocation, log_logs: bool) -> list[tuple[str, Path]]:
    """(name in the stage, source file) for every file to stage."""
    artifacts = loc.task_dir / "artifacts"
    pairs = [(name, artifacts / name) for name in ARTIFACT_FILES]
    if (artifacts / "config.yml").exists():
        pairs.append(("config.yaml", artifacts / "config.yml"))
    if log_logs and (loc.task_dir / "logs").is_dir():
        logs = loc.task_dir / "logs"
        for path in sorted(logs.rglob("*")):
            rel = path.relative_to(logs)
            if not any(excluded(part) for part in rel.parts):
                pairs.append((f"logs/{rel.as_posix()}", path))
    return pairs


def sample_files(loc: TaskLocation) -> list[Path]:
    """Per-sample outputs a harness wrote (lm-evaluation-harness: samples_<task>_*.jsonl)."""
    artifacts = loc.task_dir / "artifacts"
    found = sorted(artifacts.rglob("samples_*.jsonl")) if artifacts.is_dir() else []
    return [p for p in found if not any(excluded(part) for part in p.relative_to(artifacts).parts)
            and inside(p, loc.task_dir)]


def _sample_name(src: Path, samples: list[Path], loc: TaskLocation) -> str:
    """The file name; its path under artifacts/ when another samples file has the same name
    (one per model directory, say), so that neither overwrites the other."""
    if sum(p.name == src.name for p in samples) == 1:
        return src.name
    return src.relative_to(loc.task_dir / "artifacts").as_posix()


def planned_files(loc: TaskLocation, log_logs: bool) -> list[str]:
    """What `stage_task` would copy, for --dry-run; touches nothing."""
    names = [
        name for name, src in _sources(loc, log_logs)
        if src.is_file() and inside(src, loc.task_dir)
    ]
    metadata = loc.task_dir / "artifacts" / "metadata.yaml"
    if "config.yaml" not in names and "metadata.yaml" in names \
            and _launcher_config_from_metadata(metadata) is not None:
        names.append("config.yaml")  # stage_task writes it from metadata.yaml
    return names


def stage_task(
    loc: TaskLocation,
    stage_dir: Path,
    log_logs: bool,
    redactor: Redactor,
    samples_limit: int | None = None,
) -> StagedTask:
    """Stage the task's files; with `samples_limit`, also the first lines of each per-sample
    file, under samples/."""
    final = stage_dir / loc.invocation_id / loc.dir_name
    files: list[StagedFile] = []
    try:
        with atomic_dir(final) as tmp:
            for name, src in _sources(loc, log_logs):
                if not src.is_file():  # gone, a directory, or a FIFO that would block
                    continue
                if not inside(src, loc.task_dir):
                    log.warning("%s: symlink %s leads outside the task directory; not staged",
                                loc.dir_name, src)
                    continue
                staged = _copy_redacted(src, tmp / name, redactor)
                files.append(StagedFile(name, staged.size, staged.sha256))
            samples = sample_files(loc) if samples_limit else []
            for src in samples:
                name = f"samples/{_sample_name(src, samples, loc)}"
                staged = _copy_redacted(src, tmp / name, redactor, max_lines=samples_limit)
                files.append(StagedFile(name, staged.size, staged.sha256))
            if not any(f.path == "config.yaml" for f in files):
                launcher = _launcher_config_from_metadata(tmp / "metadata.yaml")
                if launcher is not None:
                    data = redactor.text(launcher).encode()
                    (tmp / "config.yaml").write_bytes(data)
                    files.append(
                        StagedFile("config.yaml", len(data), hashlib.sha256(data).hexdigest())
                    )
            manifest = {"task_dir": str(loc.task_dir), "files": [asdict(f) for f in files]}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except OSError as err:
        raise StageError(
            f"cannot stage {loc.dir_name} into {final}: {err.strerror or err}"
        ) from err
    return StagedTask(final, files)


def _launcher_config_from_metadata(staged_metadata: Path) -> str | None:
    """The launcher config as its own file, when only metadata.yaml carries it."""
    if not staged_metadata.is_file():
        return None
    try:
        doc = yaml.safe_load(staged_metadata.read_text())
    except yaml.YAMLError:
        return None
    resolved = doc.get("launcher_resolved_config") if isinstance(doc, dict) else None
    return yaml.safe_dump(resolved, sort_keys=True) if resolved else None


def _fallback_stage_dir(inv_dir: Path) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nemo-wandb-hook" / inv_dir.name


def existing_stage_dir(inv_dir: Path) -> Path:
    """Where `default_stage_dir` put things, without creating anything."""
    preferred = inv_dir / "wandb-export"
    fallback = _fallback_stage_dir(inv_dir)
    return fallback if not preferred.is_dir() and fallback.is_dir() else preferred


@functools.lru_cache(maxsize=256)
def default_stage_dir(inv_dir: Path) -> Path:
    """Inside the invocation directory; a per-user cache directory when that is read-only.
    Probed once per invocation and process."""
    preferred = inv_dir / "wandb-export"
    try:
        preferred.mkdir(exist_ok=True)
        probe = preferred / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return preferred
    except OSError as err:
        fallback = _fallback_stage_dir(inv_dir)
        log.warning("cannot write %s (%s); staging in %s instead", preferred,
                    err.strerror or err, fallback)
        return fallback

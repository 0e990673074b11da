"""Profile one call of ours with pyinstrument; keep the text tree and a few derived facts."""

from __future__ import annotations

import pstats
import subprocess
from pathlib import Path
from typing import Any

from bench import ours

EXCERPT_LINES = 45


def _facts(stats_file: Path) -> dict[str, Any]:
    """Seconds spent sleeping, importing wandb, and in the heaviest functions of ours."""
    st = pstats.Stats(str(stats_file))
    sleep = wandb_import = total = 0.0
    mine: list[tuple[float, str]] = []
    for (filename, line, func), (_, _, _, cumulative, _) in st.stats.items():  # type: ignore[attr-defined]
        total = max(total, cumulative)
        if func == "sleep":
            sleep += cumulative
        elif func == "<module>" and filename.replace("\\", "/").endswith("wandb/__init__.py"):
            wandb_import = max(wandb_import, cumulative)
        elif "nemo_wandb_hook/" in filename and func not in ("<module>", "main"):
            mine.append((cumulative, f"{Path(filename).stem}.{func}:{line}"))
    top = [{"function": name, "seconds": round(sec, 3)} for sec, name in sorted(mine)[::-1][:10]]
    return {"total_s": round(total, 3), "sleep_s": round(sleep, 3),
            "wandb_import_s": round(wandb_import, 3), "top_functions": top}


def profile(name: str, args: list[str], env: dict[str, str], cwd: Path,
            out_dir: Path) -> dict[str, Any] | None:
    """Run `nemo_wandb_hook <args>` under pyinstrument; None when pyinstrument is missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    session = out_dir / f"{name}.pyisession"
    argv = ours.profile_argv(args, session)
    if argv is None:
        return None
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=900)
    if not session.exists():
        return {"name": name, "error": "pyinstrument wrote no session"}
    pyinstrument = argv[0]
    text, stats = out_dir / f"{name}.txt", out_dir / f"{name}.pstats"
    subprocess.run([pyinstrument, "--load", str(session), "-r", "text", "--no-color",
                    "-o", str(text)], check=True, capture_output=True)
    subprocess.run([pyinstrument, "--load", str(session), "-r", "pstats", "-o", str(stats)],
                   check=True, capture_output=True)
    session.unlink()
    lines = [ln for ln in text.read_text().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip()[:1].isdigit()), 0)
    return {
        "name": name,
        "command": "nemo-wandb-hook " + " ".join(args),
        "text": str(text),
        "excerpt": lines[start:start + EXCERPT_LINES],
        **_facts(stats),
    }

"""Run folders: where a run writes, what it records about itself, and what `--resume` checks against."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from skqk import __version__
from skqk.atomic import atomic_write_text
from skqk.pipeline.config import SGDConfig


class RunDirError(ValueError):
    """The output folder cannot be used (unwritable, or holds a finished run)."""


def prepare_run_dir(
    out: str | os.PathLike, resume: bool, cfg: SGDConfig, source: dict | None = None, extra: dict | None = None
) -> Path:
    """Create the run folder, check it is writable, and record the resolved config, what the run starts from
    (`source`: checkpoint and store identity), the code version and `extra` facts of the run (units removed);
    `--resume` must match config and source."""
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to output folder {run_dir}: {e.strerror}") from None
    if not resume and ((run_dir / "model.pt").exists() or (run_dir / "resume.pt").exists()):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (run_dir / "config.json").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        if saved["config"] != cfg.to_dict():
            raise RunDirError(f"--resume with a different configuration than the run in {run_dir} was started with")
        if saved.get("source") != source:
            raise RunDirError(f"--resume from another checkpoint or store than the run in {run_dir} started from")
    record = {"config": cfg.to_dict(), "kind": type(cfg).__name__, "source": source, "code_version": code_version()}
    record.update(extra or {})
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))
    return run_dir


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit when run from a checkout, saved beside every result."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__

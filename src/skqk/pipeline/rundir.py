"""Run folders: where a run writes, what it records about itself, and what `--resume` checks against."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from skqk.atomic import atomic_write_text
from skqk.pipeline.config import SGDConfig
from skqk.pipeline.provenance import code_version


class RunDirError(ValueError):
    """The output folder cannot be used (unwritable, or holds a finished run)."""


def prepare_run_dir(
    out: str | os.PathLike,
    resume: bool,
    cfg: SGDConfig,
    source: dict | None = None,
    pooling: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Create the run folder, check it is writable, and record the resolved config, what the run starts from
    (`source`: checkpoint and store identity), the max-pooling mode of a QK run, the code version and `extra`
    facts of the run (units removed); `--resume` must match all but the code version and `extra`."""
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
        if not cfg.matches(saved["config"]):
            raise RunDirError(f"--resume with a different configuration than the run in {run_dir} was started with")
        if saved.get("source") != source:
            raise RunDirError(f"--resume from another checkpoint or store than the run in {run_dir} started from")
        if saved.get("pooling") != pooling:
            raise RunDirError(
                f"--resume with max pooling {pooling}, the run in {run_dir} was started with {saved.get('pooling')}"
            )
    record = {
        "config": cfg.to_dict(),
        "kind": type(cfg).__name__,
        "source": source,
        "pooling": pooling,
        "code_version": code_version(),
        **(extra or {}),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))
    return run_dir


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

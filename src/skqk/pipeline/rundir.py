"""Run folders: where a run writes, what it records about itself, and what `--resume` checks against."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from skqk.atomic import atomic_write_text, remove_partial_writes
from skqk.pipeline.config import SGDConfig
from skqk.pipeline.provenance import code_version

RUN_FILES = ("model.pt", "resume.pt", "metrics.jsonl", "config.json")  # what a run writes, all atomically


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
    (`source`: the data's fingerprint, the checkpoint and store identity), the max-pooling mode of a QK run, the
    code version and `extra` facts of the run (units removed); `--resume` must match all but the code version and
    `extra`, and is told which settings differ. Temporary files of saves killed midway are removed."""
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
    remove_partial_writes(run_dir, RUN_FILES)  # of a save killed midway; the files themselves are intact
    if resume and (run_dir / "config.json").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        # a config field added since the run was saved counts as its default (`matches`)
        changed = [] if cfg.matches(saved["config"]) else changed_settings(saved["config"], cfg.to_dict())
        changed += changed_settings(saved.get("source"), source)
        changed += changed_settings({"pooling": saved.get("pooling")}, {"pooling": pooling})
        if changed:
            raise RunDirError(
                f"--resume with other settings than the run in {run_dir} was started with: {'; '.join(changed)};"
                " resume with the same ones or choose another --out"
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


def changed_settings(saved: dict | None, now: dict | None) -> list[str]:
    """ "name: old -> new" for every setting that differs (hashes shortened), in name order."""
    saved, now = saved or {}, now or {}

    def show(value) -> str:
        return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else repr(value)

    keys = sorted(saved.keys() | now.keys())
    return [f"{key}: {show(saved.get(key))} -> {show(now.get(key))}" for key in keys if saved.get(key) != now.get(key)]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

"""What made a result: ``provenance.json`` in every result directory.

:func:`provenance` gives the hash of the settings the command ran with, the git
commit of the package's checkout with a dirty flag, the versions of the
packages that shape the numbers, the seed, the device, the host and the time.
Nothing here fails a run: a missing git (an installed package, no checkout) or
package gives ``None`` for that entry. It is a file of its own, not a key of the
results' JSON, so that results stay byte-identical across reruns and resumes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("saca", "torch", "transformers", "numpy", "pybullet", "snakemake", "deepspeed", "accelerate",
            "habitat-sim")


def config_hash(settings: Any) -> str:
    """sha256 (first 16 hex digits) of the settings as canonical JSON (sorted keys; dataclasses via ``asdict``)."""
    import dataclasses

    def default(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, Path):
            return str(o)
        return repr(o)

    text = json.dumps(settings, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git(where: Path, *args: str) -> subprocess.CompletedProcess:
    """A read-only git command: ``--no-optional-locks`` (and GIT_OPTIONAL_LOCKS=0), so that ``git status`` does
    not refresh the index under ``.git/index.lock``: jobs that run at once in one checkout (a cluster) would
    collide on that lock, and so would the user's own ``git commit``."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(["git", "--no-optional-locks", "-C", str(where), *args], capture_output=True, text=True,
                          timeout=10, env=env)


@lru_cache(maxsize=None)
def git_state(path: str | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package), or None. Read only:
    it never takes git's index lock (:func:`_git`)."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = _git(where, "rev-parse", "HEAD")
        if commit.returncode != 0:
            return None
        status = _git(where, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


@lru_cache(maxsize=None)
def versions() -> dict:
    """Python's and the installed versions of :data:`PACKAGES` (None where not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(settings: Any = None, seed: int | None = None, device: str | None = None, **extra) -> dict:
    """The provenance record of a result (see the module docstring); ``extra`` entries are added as they are."""
    return {
        "config_sha256": config_hash(settings) if settings is not None else None,
        "git": git_state(),
        "versions": versions(),
        "seed": seed,
        "device": device,
        "host": platform.node(),
        "argv": sys.argv[1:2],  # the command (its options are in the settings)
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


FILE = "provenance.json"


def write_provenance(directory, settings: Any = None, seed: int | None = None, device: str | None = None,
                     **extra) -> Path:
    """Write :func:`provenance` to ``directory/provenance.json`` (atomically); returns the path."""
    from saca.io import write_json

    path = Path(directory) / FILE
    write_json(path, provenance(settings, seed, device, **extra))
    return path

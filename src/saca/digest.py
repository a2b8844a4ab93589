"""Content digests: what a file or folder holds, not where it is (issue 25).

The resume identities of training runs (:class:`saca.train.state.Checkpoints`' fingerprint) and of
evaluations (``run.json``'s ``agent_id``) hash the content of weights and data with these, so a moved or
copied checkout keeps resuming and changed weights do not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from saca import SacaError


def file_sha256(path) -> str:
    """The sha256 of a file's bytes (hex)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


NOT_CONTENT = ("provenance.json", "train_log.jsonl", "train_log.partial.jsonl", ".saca.lock")


def _is_content(name: str) -> bool:
    """Files that describe a run rather than hold its result (where, when, how long) are no content."""
    return name not in NOT_CONTENT and not name.endswith("_summary.json") and not name.startswith(".")


def content_digest(path) -> str:
    """sha256 (hex) of what a file or folder holds, not where it is.

    A folder: every file under it (symlinks followed) by its path relative to the folder and the sha256 of
    its bytes, in sorted order; provenance, training logs, run summaries and hidden files (temporaries,
    locks) are left out, as they record paths, hosts and times. Moving or copying the folder, or the whole
    checkout, keeps the digest; changing one weight changes it. A missing path raises SacaError naming it.
    """
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise SacaError(f"{path}: no such file or folder (to fingerprint a run's inputs)")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_content(name):
                f = Path(root) / name
                h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def fingerprint(data) -> str:
    """The resume identity of a training run: sha256 of ``data`` as sorted JSON (16 hex digits).

    ``data`` holds the settings that change the trained weights and :func:`content_digest` of the
    weights and data files it reads, never their paths, so a moved or copied checkout resumes its
    checkpoints and logs the same fingerprint (issue 25)."""
    return hashlib.sha256(json.dumps(_plain(data), sort_keys=True).encode()).hexdigest()[:16]


def _plain(obj):
    """JSON-ready: dataclasses as dicts, every mapping key a string, tuples as lists, the rest ``str``."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)

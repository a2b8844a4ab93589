"""Issue 25: byte-identical reruns across checkouts, and outputs that follow the umask.

The smoke workflow runs twice: once in this checkout (the session's ``smoke_run``) and once in a copy of it at
another path (a moved clone, with a space in its path). Every output except ``provenance.json`` (host, time, git
state) and the logs and benchmark files (times) must be the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest


# what may differ between two runs: what made a result and when (provenance.json), and the logs and benchmark
# files, which hold the times (docs/reports.md, "Reproducible outputs")
VOLATILE_DIRS = ("logs", "benchmarks")
VOLATILE_FILES = ("provenance.json",)
# the training journals are logs too: their throughput fields (time_*, *_per_s) differ; the rest of every row
# (losses, rewards, counts, validation) must not. The resume fingerprint is left out as well: it hashed absolute
# paths (the content-based fingerprint is the other half of issue 25)
JOURNALS = ("train_log.jsonl",)


def _journal_digest(path: Path) -> str:
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items()
                     if "time" not in k and not k.endswith("_per_s") and k != "fingerprint"})
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def result_files(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every result file under ``root`` (the volatile ones left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in VOLATILE_DIRS and p.name not in VOLATILE_FILES:
            out[rel.as_posix()] = (_journal_digest(p) if p.name in JOURNALS
                                   else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.slow
def test_a_copied_checkout_writes_the_same_bytes(smoke_run, copied_smoke):
    # the copy's run goes through the local SLURM cluster when the session runs tests/test_slurm.py too (conftest)
    r, out = copied_smoke["run"], copied_smoke["results"]
    assert r.returncode == 0, (copied_smoke["via"], r.stdout[-3000:], r.stderr[-5000:])
    first, second = result_files(smoke_run), result_files(out)
    assert len(first) > 200 and sorted(first) == sorted(second)
    differ = sorted(f for f in first if first[f] != second[f])
    assert differ == [], differ
    # every run records what made it, apart from the results
    assert (out / "sft" / "r2r_rxr" / "final" / "provenance.json").is_file()


@pytest.mark.slow
def test_every_output_of_the_smoke_run_follows_the_umask(smoke_run):
    # issue 25: under umask 022, nine *.safetensors of the smoke run were 0600 (safetensors' save_file)
    mask = os.umask(0)
    os.umask(mask)
    wrong = {}
    for p in [smoke_run, *smoke_run.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        if not p.is_symlink() and mode != want:
            wrong[str(p.relative_to(smoke_run))] = oct(mode)
    assert wrong == {}
    assert any(p.suffix == ".safetensors" for p in smoke_run.rglob("*"))

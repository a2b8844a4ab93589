"""provenance.json: what made a result (config hash, git commit and dirty flag, versions, seed, device)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from saca.provenance import config_hash, git_state, provenance, write_provenance


@dataclass
class Cfg:
    lr: float = 1e-3
    seed: int = 0


def test_config_hash_is_canonical_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash(Cfg()) == config_hash({"lr": 1e-3, "seed": 0}) and len(config_hash(Cfg())) == 16


def test_git_state_of_a_checkout_and_of_no_checkout(tmp_path):
    assert git_state(str(tmp_path)) is None  # not a checkout: no entry, no failure
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa: E731
    run("init", "-q")
    (repo / "f.txt").write_text("1")
    run("add", "f.txt")
    run("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x")
    head = run("rev-parse", "HEAD").stdout.strip()
    git_state.cache_clear()
    assert git_state(str(repo)) == {"commit": head, "dirty": False}
    (repo / "f.txt").write_text("2")
    git_state.cache_clear()
    assert git_state(str(repo)) == {"commit": head, "dirty": True}


def test_the_record_has_every_field(tmp_path):
    path = write_provenance(tmp_path, Cfg(), seed=3, device="cpu", init="x")
    rec = json.loads(path.read_text())
    assert path.name == "provenance.json"
    assert rec["config_sha256"] == config_hash(Cfg()) and rec["seed"] == 3 and rec["device"] == "cpu"
    assert rec["init"] == "x" and rec["versions"]["python"] and "torch" in rec["versions"]
    assert set(provenance()) >= {"config_sha256", "git", "versions", "seed", "device", "host", "time"}


def test_git_state_never_writes_the_index_nor_takes_its_lock(tmp_path):
    # issue 25: `git status` refreshed the index under .git/index.lock in every job; jobs running at once in one
    # checkout (and the user's `git commit`) collide on that lock. A file whose stat data changed (touched, same
    # content) makes a plain `git status` rewrite the index; the read-only call must leave it as it is.
    import os
    import time

    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@t")
    run("config", "user.name", "t")
    (repo / "f.txt").write_text("x\n")
    run("add", "f.txt")
    run("commit", "-q", "-m", "one")
    index = repo / ".git" / "index"
    later = time.time() + 5
    os.utime(repo / "f.txt", (later, later))  # stat data differs from the index entry, content does not
    before = index.stat()
    git_state.cache_clear()
    assert git_state(str(repo)) == {"commit": run("rev-parse", "HEAD").stdout.strip(), "dirty": False}
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    # ... and a lock held by someone else (a concurrent `git commit`) is no obstacle
    (repo / ".git" / "index.lock").write_text("")
    git_state.cache_clear()
    assert git_state(str(repo))["dirty"] is False
    assert (repo / ".git" / "index.lock").read_text() == ""
    # the probe: a plain `git status` does rewrite the index here (what the test would catch)
    subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    (repo / ".git" / "index.lock").unlink()
    subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True)
    assert index.stat().st_ino != before.st_ino or index.stat().st_mtime_ns != before.st_mtime_ns

"""saca.io: atomic outputs with the user's umask, stale temporaries of killed writers, journals with a torn last line."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from saca import SacaError
from saca.io import atomic_dir, atomic_path, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_outputs_follow_the_users_umask(tmp_path, umask_022):
    # results on a shared cluster must be readable by the group: not mkstemp's 0600 / mkdtemp's 0700
    write_json(tmp_path / "a.json", {"x": 1})
    assert _mode(tmp_path / "a.json") == 0o644
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f.txt").write_text("x")
    assert _mode(tmp_path / "d") == 0o755
    with atomic_path(tmp_path / "p.png", suffix=".png") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "p.png") == 0o644
    os.umask(0o027)
    write_json(tmp_path / "b.json", {"x": 1})
    assert _mode(tmp_path / "b.json") == 0o640
    with atomic_dir(tmp_path / "e"):
        pass
    assert _mode(tmp_path / "e") == 0o750


def _killed_writer(target: Path, kind: str) -> None:
    """A process killed with SIGKILL while it writes ``target``: its temporary stays behind."""
    code = (
        "import os, signal, sys\n"
        "from saca.io import atomic_dir, atomic_path\n"
        f"with {'atomic_dir' if kind == 'dir' else 'atomic_path'}(sys.argv[1]) as tmp:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path, kind):
    target = tmp_path / "out" / ("split" if kind == "dir" else "metrics.json")
    _killed_writer(target, kind)
    left = _leftovers(target.parent, target.name)
    assert len(left) == 1 and ".tmp-" in left[0], left
    # the temporary of a writer that is still running (this process) is not touched
    with atomic_path(tmp_path / "out" / "other.json") as live:
        if kind == "dir":
            with atomic_dir(target) as tmp:
                (tmp / "x").write_text("x")
        else:
            write_json(target, {"ok": True})
        assert live.exists()
    assert _leftovers(target.parent, target.name) == []
    assert target.exists()


def test_unwritable_output_names_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SacaError, match=rf"{re.escape(str(tmp_path / 'file'))}.*not a directory"):
        write_json(tmp_path / "file" / "sub" / "a.json", {})
    with pytest.raises(SacaError, match=rf"{re.escape(str(tmp_path / 'file'))}.*not a directory"):
        with atomic_dir(tmp_path / "file" / "d"):
            pass


# --- journals -----------------------------------------------------------------------------------


def test_journal_torn_last_line_is_dropped_and_repaired(tmp_path):
    from saca.io import read_journal

    j = tmp_path / "log.jsonl"
    j.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": [1, ')
    assert read_journal(j) == [{"a": 1}, {"a": 2}]
    assert j.read_text() == '{"a": 1}\n{"a": 2}\n'  # appending after it gives whole lines again
    # a complete last line cut before its newline is dropped too: the record may be incomplete
    j.write_text('{"a": 1}\n{"a": 2}')
    assert read_journal(j) == [{"a": 1}]
    assert read_journal(tmp_path / "absent.jsonl") == []


def test_journal_corrupt_in_the_middle_names_file_and_line(tmp_path):
    from saca.io import read_journal

    j = tmp_path / "log.jsonl"
    j.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(SacaError, match=rf"{re.escape(str(j))}:2: malformed journal line"):
        read_journal(j)
    assert j.read_text() == '{"a": 1}\nnot json\n{"a": 3}\n'  # never rewritten


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_safetensors_and_everything_in_an_atomic_dir_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    # issue 25: under umask 022, nine *.safetensors of the smoke run were 0600 (safetensors' save_file ignores it)
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        save_file({"w": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))
        assert _mode(tmp_path / "raw.safetensors") == 0o600  # the library's mode, which the helper corrects
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir(mode=0o700)
            fd = os.open(tmp / "sub" / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
        out = tmp_path / "model"
        assert _mode(out) == dir_mode and _mode(out / "sub") == dir_mode
        assert _mode(out / "model.safetensors") == file_mode and _mode(out / "sub" / "private.bin") == file_mode
        assert _mode(out / "run.sh") == dir_mode  # executable stays executable, as the umask allows
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask,file_mode", [(0o022, 0o644), (0o027, 0o640)])
def test_a_saved_policy_follows_the_umask(tmp_path, umask, file_mode):
    # the real save helper of every model the workflow writes (save_pretrained inside atomic_dir)
    pytest.importorskip("torch")
    from saca.policy.tiny import TinyConfig, build_tiny_policy

    old = os.umask(umask)
    try:
        out = build_tiny_policy(tmp_path / "init", TinyConfig(seed=0))
    finally:
        os.umask(old)
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: _mode(p) for p in files} == {p.name: file_mode for p in files}

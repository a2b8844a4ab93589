"""One writer per output folder (saca.runlock): a live holder refuses in one line, a dead one is taken over,
the lock goes at exit (normal, exception, SIGTERM), and every writing command takes it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saca import SacaError
from saca.runlock import HOST, acquire, folder_lock, lock_path, release

SRC = str(Path(__file__).resolve().parents[1] / "src")

HOLDER = """
import sys, time
from saca.runlock import folder_lock
with folder_lock(sys.argv[1], "test folder"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of tmp_path / 'run' (SIGTERMed at the end)."""
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_a_live_holder_refuses_a_second_writer_in_one_line(holder):
    folder, proc = holder
    with pytest.raises(SacaError) as err:
        acquire(folder, "RFT run folder")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"RFT run folder {folder} is in use by another writer (pid {proc.pid} on host {HOST}")
    assert str(lock_path(folder)) in msg
    assert json.loads(lock_path(folder).read_text())["pid"] == proc.pid  # untouched


def test_sigterm_releases_the_lock(holder):
    folder, proc = holder
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert not lock_path(folder).exists()
    acquire(folder)
    release(folder)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_saying_so(tmp_path, caplog):
    folder = tmp_path / "run"
    pid = _dead_pid()
    lock_path(folder).write_text(json.dumps({"host": HOST, "pid": pid, "started": "1"}))
    with caplog.at_level("WARNING", logger="saca.runlock"):
        with folder_lock(folder, "evaluation folder") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"evaluation folder {folder}: taking over the lock of pid {pid} on host {HOST}" in caplog.text
    assert not lock_path(folder).exists()


def test_a_reused_pid_is_recognised_by_its_start_time(tmp_path):
    folder = tmp_path / "run"
    # the parent process runs, but it is not the process that wrote this lock (another start time)
    lock_path(folder).write_text(json.dumps({"host": HOST, "pid": os.getppid(), "started": "-1"}))
    with folder_lock(folder):
        pass


def test_a_lock_of_another_host_is_refused(tmp_path):
    folder = tmp_path / "run"
    lock_path(folder).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "1"}))
    with pytest.raises(SacaError, match=r"pid 1 on host elsewhere.*if that job is gone, delete the lock file"):
        acquire(folder)


def test_released_after_an_exception_and_only_by_its_holder(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with folder_lock(folder):
            raise RuntimeError("boom")
    assert not lock_path(folder).exists()
    lock_path(folder).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    release(folder)  # not ours: left alone
    assert lock_path(folder).exists()


def test_other_ranks_do_not_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with folder_lock(tmp_path / "run") as path:
        assert path is None
        assert not lock_path(tmp_path / "run").exists()


def test_two_concurrent_evaluations_into_one_folder(tmp_path, holder, mini_world, capsys):
    """The CLI: a second `saca evaluate` into a folder being written exits 2 with one line naming the
    folder and the holder; nothing of the first writer's folder is touched."""
    from saca.cli import main

    folder, proc = holder
    folder.mkdir()
    (folder / "episodes.partial.jsonl").write_text('{"episode_id": 1}\n')
    rc = main(["evaluate", "--dataset-dir", str(mini_world["root"] / "mini_r2r"), "--split", "val_unseen",
               "--agent", "random", "--scenes", str(mini_world["scenes"]), "--out", str(folder),
               "--dataset-config", json.dumps({"backend": "embedded", "turn_angle": 15})])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"saca evaluate: error: evaluation folder {folder} is in use by another writer (pid {proc.pid} "
                   f"on host {HOST}, lock file {lock_path(folder)})"]
    assert sorted(p.name for p in folder.iterdir()) == ["episodes.partial.jsonl"]


@pytest.mark.parametrize("command", ["rft", "sft", "vln-ego", "audit"])
def test_every_writer_takes_the_lock(tmp_path, holder, command, capsys):
    """Each writing command is refused while another process holds its output folder."""
    from saca.cli import main

    folder, _ = holder
    argv = {
        "rft": ["rft", "--init", str(tmp_path), "--out", str(folder)],
        "sft": ["sft", "--init", str(tmp_path), "--train", str(tmp_path), "--out", str(folder)],
        "vln-ego": ["vln-ego", "--episodes", str(tmp_path), "--split", "train", "--scenes", str(tmp_path),
                    "--out", str(folder)],
        "audit": ["audit", "--eval-dir", str(tmp_path), "--episodes", str(tmp_path), "--split",
                  "val_unseen", "--landmarks", str(tmp_path / "l.jsonl"), "--scenes", str(tmp_path),
                  "--out", str(folder)],
    }[command]
    t0 = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another writer" in err[0], err
    assert time.monotonic() - t0 < 30

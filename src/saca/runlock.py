"""One writer per output folder: an exclusive lock file beside it.

``saca evaluate``, ``saca sft``, ``saca rft``, ``saca vln-ego`` and ``saca audit``
hold :func:`folder_lock` on their output folder while they write it. The lock
is the file ``{parent}/.{name}.lock`` (beside the folder, so that writers that
swap a whole folder into place, as ``vln-ego`` does, can hold it too), holding
the host, the process id and that process's start time as JSON.

* A second writer of the same folder is refused with one line naming the folder
  and the holder (:class:`saca.SacaError`).
* A lock left by a process that no longer runs on this host (``kill -9``, a node
  reboot) is taken over, with a warning naming the old holder. A process id that
  the system gave to another process since is recognised by its start time.
* A lock held by another host cannot be checked from here and is refused; the
  message says to delete the file if that job is gone.
* Released when the writer leaves the ``with`` block, by an exception or by
  SIGTERM too (turned into ``SystemExit`` while the lock is held, so that a
  cluster's timeout kill releases it).

Checking and writing the lock file happen under ``flock`` on the parent folder,
so two writers starting at the same moment cannot both take a stale lock over.
Only rank 0 of a multi-process run locks (the other ranks write through it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Iterator

from saca import SacaError

log = logging.getLogger(__name__)

HOST = socket.gethostname()


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``{parent}/.{name}.lock``."""
    folder = Path(os.path.abspath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the holder (on this host) still runs: its pid exists and, where known, started when it did."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}"


@contextlib.contextmanager
def _guard(parent: Path) -> Iterator[None]:
    """``flock`` on the parent folder: one process at a time checks and writes lock files there."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on folders (some NFS mounts): unguarded
            log.debug("%s: no flock on this file system", parent)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by no saca version; treated as a lock of unknown holder
    return holder if isinstance(holder, dict) else {}


def acquire(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Take the lock of ``folder`` (see the module docstring); returns the lock file. ``what`` names the folder."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": HOST, "pid": os.getpid(), "started": _start_time(os.getpid())}
    with _guard(path.parent):
        holder = _read(path)
        if holder is not None:
            if holder.get("host") == HOST and holder.get("pid") == os.getpid():
                raise SacaError(f"{what} {folder}: already locked by this process ({path})")
            if holder.get("host") != HOST or _alive(holder):
                other = "; if that job is gone, delete the lock file" if holder.get("host") != HOST else ""
                raise SacaError(f"{what} {folder} is in use by another writer ({_describe(holder)}, lock file {path}){other}")
            log.warning("%s %s: taking over the lock of %s, which no longer runs", what, folder, _describe(holder))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(me, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return path


def release(folder: str | os.PathLike) -> None:
    """Remove the lock of ``folder`` if this process holds it."""
    path = lock_path(folder)
    if not path.parent.is_dir():
        return
    with _guard(path.parent):
        holder = _read(path)
        if holder and holder.get("host") == HOST and holder.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path | None]:
    """Hold the exclusive lock of ``folder`` for the ``with`` block (rank 0 only; other ranks get None)."""
    if not _is_rank0():
        yield None
        return
    path = acquire(folder, what)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):  # noqa: ARG001 - a SIGTERM (cluster timeout, scancel) unwinds and releases
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, _term)
    try:
        yield path
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        release(folder)

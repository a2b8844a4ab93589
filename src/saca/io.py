"""Atomic file output and robust readers.

Every output of the workflow is written through these helpers: data goes to a
temporary file beside the target and is renamed into place only when complete,
so a crash or a bad input never leaves a half-written result behind.

* Outputs get the permissions of the user's umask (``0o666 & ~umask`` for files,
  ``0o777 & ~umask`` for directories), as ``open`` and ``mkdir`` would give, not
  the private 0600 / 0700 of ``mkstemp`` / ``mkdtemp``: on a shared cluster the
  group reads the results. A directory written with :func:`atomic_dir` gets them
  for everything inside it too (:func:`follow_umask`): safetensors' ``save_file``,
  and so every ``save_pretrained``, writes 0600 whatever the umask.
* Temporaries are named ``.{target}.tmp-{host}.{pid}.{random}``: a writer killed
  with SIGKILL leaves its temporary behind, and the next write of the same
  target removes the temporaries of writers on this host that are no longer
  running.
* Append-only journals (the evaluation journal, the SFT training log) are read
  with :func:`read_journal`, which drops a torn last line (a killed writer) and
  refuses corruption anywhere else, naming the file and line.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from saca import SacaError

log = logging.getLogger(__name__)


# --- permissions ------------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def _chmod_default(path: Path, is_dir: bool) -> None:
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


def follow_umask(root: str | os.PathLike) -> None:
    """Give every file and directory under ``root`` (``root`` included) the mode of the umask, as :func:`atomic_dir`
    does to what is written into it: libraries that write 0600 whatever the umask (safetensors' ``save_file``, so
    every ``save_pretrained``; ``mkstemp``) get the same modes as ``open`` would give. A file that is executable
    keeps its execute bits (as the umask allows); symbolic links are left alone."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)


# --- output locations -------------------------------------------------------------------------


def ensure_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``mkdir -p path``; a path that cannot be a directory raises SacaError naming it (no OSError traceback)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise SacaError(f"{path}: cannot create the {what}: {path} exists and is not a directory") from err
    except NotADirectoryError as err:
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        raise SacaError(f"{path}: cannot create the {what}: {blocker} is not a directory") from err
    except OSError as err:
        raise SacaError(f"{path}: cannot create the {what} ({err.strerror or err})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise SacaError(f"{path}: the {what} is not writable")
    return path


def check_model_dir(path: str | os.PathLike, key: str) -> Path:
    """A ``save_pretrained`` directory (with ``config.json``), or SacaError naming the config key."""
    if not str(path):
        raise SacaError(f"{key}: no model directory configured")
    p = Path(path)
    if not p.is_dir():
        what = "is not a directory" if p.exists() else "does not exist"
        raise SacaError(f"{key}: model directory '{p}' {what}")
    if not (p / "config.json").exists():
        raise SacaError(f"{key}: '{p}' has no config.json (not a save_pretrained directory)")
    return p


def check_output_path(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail early, naming the path, when ``path`` cannot be written (checked before any work is done).

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    path = Path(path)
    anc = path if path.is_dir() else path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise SacaError(f"{flag} {path}: cannot write there: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SacaError(f"{flag} {path}: cannot write there: {anc} is not writable")


# --- temporaries ------------------------------------------------------------------------------

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{_HOST}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: another user's process, alive
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` left by killed writers on this host; returns what was removed.

    A temporary of a writer that still runs, or of a writer on another host (a shared
    file system), is left alone.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left behind by a killed writer (pid %s)", path, m["pid"])
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    ensure_dir(target.parent)
    remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target.name), suffix=suffix, dir=target.parent)
    except OSError as err:
        raise SacaError(f"{target}: cannot write ({err.strerror or err})") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _chmod_default(tmp_path, is_dir=False)
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; swap it into place on success."""
    target = Path(target)
    ensure_dir(target.parent)
    remove_stale_temporaries(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target.name), dir=target.parent))
    except OSError as err:
        raise SacaError(f"{target}: cannot write ({err.strerror or err})") from err
    try:
        _chmod_default(tmp, is_dir=True)
        yield tmp
        follow_umask(tmp)  # what the caller wrote into it, safetensors (0600) included
        old = target.with_name(f".{target.name}.old")  # also what a writer killed mid-swap leaves
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Deterministic JSON (sorted keys), so the same data gives the same bytes."""
    return json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(target: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    name = str(target)
    text = dumps_json(obj, indent=indent)
    if name.endswith(".gz"):
        # mtime=0 and no file name in the header: byte-identical output for identical data
        write_bytes(target, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))
    else:
        write_text(target, text)


def write_jsonl(target: str | os.PathLike, rows) -> int:
    n = 0
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    """Read ``.json`` or ``.json.gz``; a truncated or malformed file raises SacaError naming it."""
    path = Path(path)
    if not path.exists():
        raise SacaError(f"{path}: file does not exist")
    if path.is_dir():
        raise SacaError(f"{path}: is a directory, expected a JSON file")
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return json.loads(raw.decode("utf-8"))
    except (EOFError, OSError, zlib.error) as err:
        raise SacaError(f"{path}: truncated or corrupt gzip file ({err})") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SacaError(f"{path}: malformed JSON ({err})") from err


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise SacaError(f"{path}: file does not exist")
    if path.is_dir():
        raise SacaError(f"{path}: is a directory, expected a JSONL file")
    rows = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SacaError(f"{path}:{lineno}: malformed JSON line ({err})") from err
        except UnicodeDecodeError as err:
            raise SacaError(f"{path}: not a UTF-8 text file ({err})") from err
    return rows


def read_journal(path: str | os.PathLike, repair: bool = True) -> list[dict]:
    """Rows of an append-only JSONL journal that a killed writer may have left with a torn last line.

    The last line is dropped when it lacks its newline or is cut inside its JSON (a
    kill while it was written); with ``repair`` the file is then rewritten without it,
    so that rows appended next start on a line of their own. A malformed line
    anywhere else is corruption, not a kill: SacaError naming the file and line.
    A missing file is an empty journal.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows, dropped = [], tail != b""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if lineno == len(lines) and not tail:
                dropped = True  # a last line cut inside its JSON
                continue
            raise SacaError(
                f"{path}:{lineno}: malformed journal line ({err}); only a torn last line (a killed run) is "
                "repaired: delete the file to start over"
            ) from err
    if dropped:
        log.warning("%s: dropped a torn last line (left by a killed run); %d rows kept", path, len(rows))
        if repair:
            write_jsonl(path, rows)
    return rows

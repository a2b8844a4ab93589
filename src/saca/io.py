"""Atomic file output and robust readers.

Every output of the workflow is written through these helpers: data goes to a
temporary file beside the target and is renamed into place only when complete,
so a crash or a bad input never leaves a half-written result behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from saca import SacaError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; swap it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
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
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SacaError(f"{path}:{lineno}: malformed JSON line ({err})") from err
    return rows

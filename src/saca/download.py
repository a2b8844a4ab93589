"""Downloads of the real-data runs, each verified and recorded in a checksum manifest (docs/downloads.md).

* MP3D habitat scenes: the licensee's own ``download_mp.py`` (``MP3D_DOWNLOAD_SCRIPT``), run as
  ``download_mp.py --task habitat -o DIR``; its archive ``DIR/v1/tasks/mp3d_habitat.zip`` is extracted
  to ``data/scene_datasets/mp3d`` and every expected scene file checked.
* VLN-CE episode archives (R2R-CE, RxR-CE): a resumable HTTP download (``NAME.part``, ``Range``
  requests, restarted cleanly when the server ignores them), a sha256 check, an atomic rename, a safe
  extraction (a member that would land outside the target is refused).
* Model weights: ``huggingface_hub.snapshot_download`` into ``models/NAME`` at the commit the requested
  revision resolves to, each file checked against the hashes the Hub publishes for that commit.

Every download ends by writing ``TARGET/MANIFEST.sha256`` (``sha256sum`` format, paths relative to
TARGET) and ``TARGET/SOURCE.json`` (where it came from); a downloaded archive gets a ``ARCHIVE.sha256``
beside it. A pinned hash (an archive's ``sha256``, a pinned manifest of files) must match, else the
error names the file and both hashes. Where no hash is pinned the first download is trusted and
recorded, and :func:`verify` re-checks a directory or file against what was recorded.

Credentials come only from the environment (``MP3D_DOWNLOAD_SCRIPT``, ``MP3D_TERMS_ACCEPTED``,
``HF_TOKEN``, or the variable an archive names in ``auth_env``) and are checked before anything is
fetched; a missing one fails naming the variable.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping

from saca import SacaError, __version__
from saca.io import atomic_dir, ensure_dir, write_json, write_text
from saca.progress import Progress

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.sha256"
SOURCE = "SOURCE.json"
# what a manifest leaves out: itself, the provenance record, huggingface_hub's bookkeeping of a local_dir
_NOT_IN_MANIFEST = (MANIFEST, SOURCE)
_NOT_IN_MANIFEST_DIRS = (".cache/huggingface",)

MP3D_SCRIPT_ENV = "MP3D_DOWNLOAD_SCRIPT"
MP3D_TERMS_ENV = "MP3D_TERMS_ACCEPTED"
MP3D_PYTHON_ENV = "MP3D_PYTHON"
HF_TOKEN_ENV = "HF_TOKEN"
MP3D_TOS_URL = "http://kaldir.vc.in.tum.de/matterport/MP_TOS.pdf"
MP3D_ARCHIVE = Path("v1") / "tasks" / "mp3d_habitat.zip"  # where download_mp.py --task habitat -o DIR puts it
MP3D_SCENE_FILES = (".glb", ".navmesh")  # per scene, what Habitat needs to load and navigate it
_TRUE = ("1", "true", "yes", "on")

# The 90 Matterport3D scans (Matterport3DSimulator connectivity/scans.txt; VLN-CE: "there should be 90 scenes").
MP3D_SCENES = tuple("""
17DRP5sb8fy 1LXtFkjw3qL 1pXnuDYAj8r 29hnd4uzFmX 2azQ1b91cZZ 2n8kARJN3HM 2t7WUuJeko7 5LpN3gDmAk7 5q7pvUzZiYa
5ZKStnWn8Zo 759xd9YjKW5 7y3sRwLe3Va 8194nk5LbLH 82sE5b5pLXE 8WUmhLawc2A aayBHfsNo7d ac26ZMwG7aT ARNzJeq3xxb
B6ByNegPMKs b8cTxDM8gDG cV4RVeZvu5T D7G3Y4RVNrH D7N2EKCX4Sj dhjEzFoUFzH E9uDoFAP3SH e9zR4mvMWw7 EDJbREhghzL
EU6Fwq7SyZv fzynW3qQPVF GdvgFV5R1Z5 gTV8FGcVJC9 gxdoqLR6rwA gYvKGZ5eRqb gZ6f7yhEvPG HxpKQynjfin i5noydFURQK
JeFG25nYj2p JF19kD82Mey jh4fc5c5qoQ JmbYfDe2QKZ jtcxE69GiFV kEZ7cmS4wCh mJXqzFtmKg4 oLBMNvg9in8 p5wJjkQkbXX
pa4otMbVnkk pLe4wQe7qrG Pm6F8kyY3z2 pRbA3pwrgk9 PuKPg4mmafe PX4nDJXEHrG q9vSo1VnCiC qoiz87JEwZ2 QUCTc6BB5sX
r1Q1Z4BcV1o r47D5H71a5s rPc6DW4iMge RPmz2sHmrrY rqfALeAoiTq s8pcmisQ38h S9hNv5qa7GM sKLMLpTHeUy SN83YJsR3w2
sT4fr6TAbpF TbHJrupSAjP ULsKaCPVFJR uNb9QFRL6hY ur6pFq6Qu1A UwV83HsGsw3 Uxmj2M2itWa V2XKFyX4ASd VFuaQ6m2Qom
VLzqgDo317F Vt2qJdWjCF2 VVfe2KiqLaN Vvot9Ly1tCj vyrNrziPKCB VzqfbhrpDEA wc2JMjhGNzB WYY7iVyf5p8 X7HyMhZNoso
x8F5xyUWy9e XcA2TqTSSAj YFuZgdQ5vWj YmJkqBEsHnH yqstnuAEVhm YVUC4YcDtcY Z6MFQCViBuw ZMojNkEp431 zsNo4HB9uLZ
""".split())

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- progress ---------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"  # pragma: no cover


class ByteProgress(Progress):
    """:class:`saca.progress.Progress` counting bytes: sizes and rates in KiB/MiB/GiB, with the ETA."""

    def __init__(self, total: int | None, desc: str, initial: int = 0, **kw):
        super().__init__(total, desc, unit="B", initial=initial, **kw)
        if self.bar is not None:  # tqdm: scaled units (MB/s) instead of raw byte counts
            self.bar.unit_scale, self.bar.unit_divisor = True, 1024

    def line(self) -> str:
        from saca.progress import _duration

        dt = max(self.clock() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / dt
        head = f"{self.desc}: {human_bytes(self.n)}"
        if self.total:
            head += f" of {human_bytes(self.total)} ({100.0 * self.n / self.total:.1f} %)"
        parts = [head, f"{human_bytes(rate)}/s"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(dt)}")
        return ", ".join(parts)


# --- hashes and manifests ---------------------------------------------------------------------


def sha256_file(path: str | os.PathLike, progress: Progress | None = None, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file (what the Hub lists as ``blob_id`` of a file not stored with LFS)."""
    p = Path(path)
    h = hashlib.sha1(f"blob {p.stat().st_size}\0".encode())
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_hex(value: str, where: str) -> str:
    value = (value or "").strip().lower()
    if value and not _HEX64.match(value):
        raise SacaError(f"{where}: '{value}' is not a sha256 (64 hexadecimal digits)")
    return value


def _manifest_name(rel: str, root: Path) -> str:
    if "\n" in rel or "\\" in rel:
        raise SacaError(f"{root / rel}: a file name with a newline or backslash cannot be listed in {MANIFEST}")
    return rel


def tree_files(root: str | os.PathLike) -> list[str]:
    """The regular files under ``root`` (relative POSIX paths, sorted) that a manifest lists."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if f"{rel_dir}/{d}".lstrip("/") not in _NOT_IN_MANIFEST_DIRS]
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in _NOT_IN_MANIFEST or not Path(dirpath, name).is_file():
                continue
            out.append(_manifest_name(rel, root))
    return sorted(out)


def hash_tree(root: str | os.PathLike, desc: str | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of the files a manifest of ``root`` lists, with byte progress."""
    root = Path(root)
    files = tree_files(root)
    total = sum((root / f).stat().st_size for f in files)
    with ByteProgress(total, desc or f"sha256 {root}") as prog:
        return {f: sha256_file(root / f, prog) for f in files}


def format_manifest(hashes: Mapping[str, str]) -> str:
    """``sha256sum`` format: ``HEX  PATH`` per line, sorted by path (``sha256sum -c MANIFEST.sha256`` checks it)."""
    return "".join(f"{hashes[k]}  {k}\n" for k in sorted(hashes))


def parse_manifest(path: str | os.PathLike) -> dict[str, str]:
    """A ``sha256sum`` file as ``{path: sha256}``; a malformed line raises SacaError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise SacaError(f"{path}: checksum manifest does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise SacaError(f"{path}: cannot read the checksum manifest ({err})") from err
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
        if not m:
            raise SacaError(f"{path}:{n}: not a sha256sum line ('HEX  PATH'): {line[:80]!r}")
        rel = m[2]
        if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
            raise SacaError(f"{path}:{n}: path {rel!r} is not relative to the manifest's directory")
        out[rel] = m[1].lower()
    return out


def write_manifest(root: str | os.PathLike, hashes: Mapping[str, str]) -> Path:
    path = Path(root) / MANIFEST
    write_text(path, format_manifest(hashes))
    return path


def mismatch(path, expected: str, actual: str, source: str) -> SacaError:
    return SacaError(f"{path}: sha256 mismatch: expected {expected} ({source}), got {actual}")


def check_pinned(root: Path, hashes: Mapping[str, str], pinned: Mapping[str, str], source: str) -> None:
    """Every file of a pinned manifest is present with its pinned hash (files it does not list are not checked)."""
    for rel, expected in sorted(pinned.items()):
        if rel not in hashes:
            raise SacaError(f"{root / rel}: missing (listed in the pinned manifest {source})")
        if hashes[rel] != expected:
            raise mismatch(root / rel, expected, hashes[rel], f"pinned manifest {source}")


def read_pinned(path: str | os.PathLike | None) -> dict[str, str]:
    return parse_manifest(path) if path else {}


def sidecar(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def write_sidecar(path: str | os.PathLike, digest: str) -> Path:
    p = Path(path)
    write_text(sidecar(p), f"{digest}  {p.name}\n")
    return sidecar(p)


def verify_file(path: str | os.PathLike, pinned: str = "", source: str = "pinned sha256") -> str:
    """sha256 of ``path`` checked against ``pinned`` and against the sidecar ``PATH.sha256`` recorded when it
    was downloaded (either may be absent); the sidecar is written if missing. Returns the digest."""
    p = Path(path)
    pinned = _check_hex(pinned, source)
    with ByteProgress(p.stat().st_size, f"sha256 {p.name}") as prog:
        actual = sha256_file(p, prog)
    if pinned and actual != pinned:
        raise mismatch(p, pinned, actual, source)
    side = sidecar(p)
    if side.exists():
        recorded = parse_manifest(side).get(p.name)
        if recorded and recorded != actual:
            raise mismatch(p, recorded, actual, f"recorded in {side} when it was downloaded")
    else:
        write_sidecar(p, actual)
    return actual


def verify(path: str | os.PathLike, pinned: str | os.PathLike | None = None, strict: bool = False) -> dict:
    """Re-check a download against what was recorded: a directory against its ``MANIFEST.sha256``, a file
    against ``FILE.sha256``; a pinned manifest, if given, must agree too. Files the manifest does not list
    are reported (an error with ``strict``). Returns ``{"files": n, "bytes": b, "extra": [...]}``."""
    p = Path(path)
    if not p.exists():
        raise SacaError(f"{p}: does not exist")
    if p.is_dir():
        root, manifest = p, p / MANIFEST
        recorded = parse_manifest(manifest)
        present = set(tree_files(root))
    else:
        root, manifest = p.parent, sidecar(p)
        recorded = parse_manifest(manifest)
        present = {p.name}
    extra = sorted(present - set(recorded))
    missing = sorted(set(recorded) - present)
    if missing:
        raise SacaError(f"{root / missing[0]}: listed in {manifest} but missing"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    total = sum((root / f).stat().st_size for f in recorded)
    bad = []
    with ByteProgress(total, f"verify {p}") as prog:
        for rel, expected in sorted(recorded.items()):
            actual = sha256_file(root / rel, prog)
            if actual != expected:
                bad.append(mismatch(root / rel, expected, actual, f"recorded in {manifest}"))
    if bad:
        more = f" (and {len(bad) - 1} more files differ)" if len(bad) > 1 else ""
        raise SacaError(f"{bad[0]}{more}")
    if pinned:
        check_pinned(root, recorded, read_pinned(pinned), str(pinned))
    if extra:
        msg = f"{root}: {len(extra)} file(s) not listed in {manifest}, e.g. {extra[0]}"
        if strict:
            raise SacaError(msg)
        log.warning(msg)
    return {"files": len(recorded), "bytes": total, "extra": extra}


# --- resumable HTTP ---------------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure: the next attempt resumes from the bytes on disk."""


_RESTART = "restart"
_DONE = "done"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes FIRST-LAST/TOTAL`` or ``bytes */TOTAL`` -> (first, total); None where absent or ``*``."""
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    return (int(m[1]) if m[1] else None), (int(m[2]) if m[2] != "*" else None)


def _fetch(url: str, part: Path, headers: dict, timeout: float, chunk_size: int, desc: str) -> str:
    """One attempt: append to ``part`` from its current size. Returns _DONE or _RESTART; raises _Retry."""
    start = part.stat().st_size if part.exists() else 0
    req_headers = {"User-Agent": f"saca/{__version__}", "Accept-Encoding": "identity", **headers}
    if start:
        req_headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=req_headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        code, cr = err.code, err.headers.get("Content-Range") if err.headers else None
        err.close()
        if code == 416 and start:  # nothing left to send: complete already, or the file changed on the server
            _, total = _content_range(cr)
            if total == start:
                return _DONE
            log.warning("%s: the server cannot resume at byte %d (its size: %s): starting again", url, start, total)
            part.unlink()
            return _RESTART
        if code in (408, 425, 429) or code >= 500:
            raise _Retry(f"HTTP {code}") from None
        raise SacaError(f"{url}: HTTP {code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise _Retry(str(getattr(err, "reason", err))) from None
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() == "text/html":
            raise SacaError(
                f"{url}: the server sent an HTML page (Content-Type {ctype}), not the file: a login, quota or "
                f"confirmation page (Google Drive). Download the file by hand, place it at "
                f"{part.with_name(part.name[:-len('.part')])} and run the step again (it is then checked, not fetched)")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            if first != start:
                log.warning("%s: asked for bytes from %d, the server sent from %s: starting again", url, start, first)
                part.unlink(missing_ok=True)
                return _RESTART
            mode = "ab"
            if total is None and length is not None:
                total = start + length
        elif resp.status == 200:
            if start:
                log.warning("%s: the server ignored the Range request (HTTP 200): downloading from byte 0 again", url)
                start = 0
            mode, total = "wb", length
        else:
            raise SacaError(f"{url}: unexpected HTTP status {resp.status}")
        prog = ByteProgress(total, desc, initial=start)
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        chunk = resp.read1(chunk_size)  # what has arrived: on disk at once, for a resume
                    except (http.client.HTTPException, OSError) as err:
                        raise _Retry(f"connection lost ({err.__class__.__name__}: {err})") from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    prog.update(len(chunk))
        finally:
            prog.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        log.warning("%s: %s holds %d bytes, more than the %d the server has: starting again", url, part, size, total)
        part.unlink()
        return _RESTART
    return _DONE


def http_download(url: str, dest: str | os.PathLike, sha256: str = "", *, headers: Mapping[str, str] | None = None,
                  retries: int = 8, retry_wait: float = 5.0, timeout: float = 60.0, chunk_size: int = 1 << 20,
                  source: str = "pinned sha256", check: Callable[[Path], None] | None = None) -> str:
    """Download ``url`` to ``dest``, resumably; returns the sha256 of ``dest``.

    Bytes go to ``DEST.part``; an attempt starts with ``Range: bytes=N-`` where N bytes are already there
    (a run killed half-way resumes on the next run; an interrupted connection is retried, ``retries`` times
    in a row without progress). A server that answers a range request with the whole file (HTTP 200) is
    followed from byte 0. The complete file is hashed, checked against ``sha256`` (when pinned; a mismatch
    moves it to ``DEST.rejected`` and names both hashes), checked by ``check(path)`` (an archive's own
    checksums: :func:`check_zip`; a failure removes the file, so that the next run fetches it again), and only
    then renamed onto ``dest`` with its hash recorded in ``DEST.sha256``: a file that failed a check is never
    recorded. An existing ``dest`` is not fetched again: it is checked against the pin and the record.
    """
    dest = Path(dest)
    sha256 = _check_hex(sha256, source)
    ensure_dir(dest.parent, "download directory")
    if dest.exists():
        log.info("%s exists: checking it instead of downloading it again", dest)
        return verify_file(dest, sha256, source)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            if _fetch(url, part, dict(headers or {}), timeout, chunk_size, dest.name) == _DONE:
                break
            continue  # _RESTART
        except _Retry as err:
            now = part.stat().st_size if part.exists() else 0
            failures = 1 if now > before else failures + 1
            if failures > retries:
                raise SacaError(f"{url}: download failed ({err}); {part} keeps the {now} bytes fetched so far and "
                                f"the next run resumes from there") from None
            wait = min(retry_wait * 2 ** (failures - 1), 300.0)
            log.warning("%s: %s; %d bytes on disk, retrying in %.0f s (%d/%d)", url, err, now, wait, failures, retries)
            time.sleep(wait)
    with ByteProgress(part.stat().st_size, f"sha256 {dest.name}") as prog:
        actual = sha256_file(part, prog)
    if sha256 and actual != sha256:
        rejected = dest.with_name(dest.name + ".rejected")
        os.replace(part, rejected)
        raise SacaError(f"{mismatch(dest, sha256, actual, source)}; the download was moved to {rejected}")
    if check is not None:
        try:
            check(part)
        except SacaError as err:
            part.unlink(missing_ok=True)
            raise SacaError(f"{url}: {err}; the download was removed (not recorded): the next run fetches it "
                            "again") from None
    os.replace(part, dest)
    write_sidecar(dest, actual)
    log.info("downloaded %s (%s, sha256 %s)", dest, human_bytes(dest.stat().st_size), actual)
    return actual


# --- safe extraction --------------------------------------------------------------------------


class CorruptArchive(SacaError):
    """An archive whose own checksums (a zip's CRC-32s) or structure do not hold."""


def check_zip(path: str | os.PathLike) -> None:
    """Read every member of a zip and check its CRC-32 (``testzip``); CorruptArchive in one line naming it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise CorruptArchive(f"{path}: corrupt zip archive ({err})") from None
    if bad is not None:
        raise CorruptArchive(f"{path}: corrupt zip archive (bad CRC-32 of member {bad!r})")


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """The relative path of a zip member; SacaError naming it if it could land outside the target."""
    name = info.filename
    mode = (info.external_attr >> 16) & 0o170000
    why = None
    if "\0" in name:
        why = "has a NUL byte"
    elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        why = "is an absolute path"
    elif ".." in re.split(r"[\\/]", name):
        why = "climbs out with '..'"
    elif mode == stat.S_IFLNK:
        why = "is a symbolic link"
    if why:
        raise SacaError(f"{archive}: member {name!r} {why}: refusing to extract the archive (nothing was written)")
    return PurePosixPath(name.replace("\\", "/"))


def extract_zip(archive: str | os.PathLike, out: str | os.PathLike, root: str = "", *,
                check: Callable[[Path], None] | None = None, pinned: Mapping[str, str] | None = None,
                pinned_source: str = "", source: dict | None = None) -> dict[str, str]:
    """Extract ``archive`` (its directory ``root``, or all of it) into ``out``, atomically, with a manifest.

    Every member is checked before anything is written: absolute paths, ``..`` and symbolic links are
    refused, naming the member. Files are hashed while written into a temporary directory beside ``out``;
    ``check(tmp)`` (expected files), the pinned hashes, ``MANIFEST.sha256`` and ``SOURCE.json`` come next,
    and only then does the directory replace ``out``. Returns the manifest ``{path: sha256}``.
    """
    archive, out = Path(archive), Path(out)
    root = root.strip("/")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise CorruptArchive(f"{archive}: not a zip archive ({err})") from None
    with zf:
        members = []
        tops = set()
        for info in zf.infolist():
            rel = _member_path(info, archive)
            if not rel.parts:
                continue
            tops.add(rel.parts[0])
            if root:
                if rel.parts[0] != root:
                    continue
                rel = PurePosixPath(*rel.parts[1:])
                if not rel.parts:
                    continue
            members.append((info, rel))
        if not members:
            raise SacaError(f"{archive}: no member under '{root}/'; its top-level entries: {', '.join(sorted(tops))}")
        skipped = len(tops - {root}) if root else 0
        if skipped:
            log.info("%s: extracting %s/ only (%d other top-level entries left out)", archive, root, skipped)
        total = sum(info.file_size for info, _ in members if not info.is_dir())
        hashes: dict[str, str] = {}
        with atomic_dir(out) as tmp, ByteProgress(total, f"extract {archive.name}") as prog:
            base = os.path.realpath(tmp)
            for info, rel in members:
                dest = Path(tmp, *rel.parts)
                if os.path.commonpath([base, os.path.realpath(dest)]) != base:  # belt and braces
                    raise SacaError(f"{archive}: member {info.filename!r} lands outside {out}: refused")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                try:
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            dst.write(chunk)
                            prog.update(len(chunk))
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # "Bad CRC-32 for file ...": one line
                    raise CorruptArchive(f"{archive}: corrupt zip archive at member {info.filename!r} ({err}); "
                                         f"nothing was extracted") from None
                key = _manifest_name(rel.as_posix(), out)
                if key in _NOT_IN_MANIFEST:
                    raise SacaError(f"{archive}: member {info.filename!r} would overwrite the download's {key}")
                hashes[key] = h.hexdigest()
            if check is not None:
                check(tmp)
            if pinned:
                check_pinned(out, hashes, pinned, pinned_source)
            write_manifest(tmp, hashes)
            if source is not None:
                write_json(Path(tmp) / SOURCE, {**source, "files": len(hashes), "bytes": total})
    log.info("extracted %d files (%s) to %s; manifest %s", len(hashes), human_bytes(total), out, out / MANIFEST)
    return hashes


# --- VLN-CE episode archives -------------------------------------------------------------------


def download_archive(url: str, archive: str | os.PathLike, out: str | os.PathLike, root: str = "", *,
                     sha256: str = "", pinned_manifest: str | os.PathLike | None = None, auth_env: str = "",
                     keep_archive: bool = True, env: Mapping[str, str] | None = None, **http) -> dict[str, str]:
    """An episode archive: resumable download to ``archive``, sha256 check, safe extraction of ``root`` to
    ``out`` with ``out/MANIFEST.sha256``. ``auth_env`` names an environment variable holding a bearer token
    (checked before any request)."""
    env = os.environ if env is None else env
    headers = {}
    if auth_env:
        token = env.get(auth_env, "").strip()
        if not token:
            raise SacaError(f"{auth_env} is not set: {url} needs the token it names (auth_env); nothing was downloaded")
        headers["Authorization"] = f"Bearer {token}"
    pinned = read_pinned(pinned_manifest)
    digest = http_download(url, archive, sha256, headers=headers, source="sha256 pinned in the config",
                           check=check_zip, **http)
    try:
        hashes = extract_zip(archive, out, root, pinned=pinned, pinned_source=str(pinned_manifest or ""),
                             source={"kind": "archive", "url": url, "archive": Path(archive).name,
                                     "archive_sha256": digest, "root": root, "pinned": bool(sha256)})
    except CorruptArchive as err:  # an archive kept from an earlier run (recorded before it was checked)
        Path(archive).unlink(missing_ok=True)
        sidecar(archive).unlink(missing_ok=True)
        raise SacaError(f"{err}; removed it and its record: the next run fetches it again") from None
    if not keep_archive:
        Path(archive).unlink()
        sidecar(archive).unlink(missing_ok=True)
    return hashes


# --- MP3D scenes ------------------------------------------------------------------------------


def mp3d_command(download_dir: str | os.PathLike, interpreter: str = "",
                 env: Mapping[str, str] | None = None) -> list[str]:
    """The command that runs the licensee's ``download_mp.py --task habitat -o DIR``; SacaError naming the
    environment variable that is missing (nothing is run or fetched then)."""
    env = os.environ if env is None else env
    script = env.get(MP3D_SCRIPT_ENV, "").strip()
    if not script:
        raise SacaError(
            f"{MP3D_SCRIPT_ENV} is not set: set it to the path of the download_mp.py that Matterport sends you once "
            f"you have signed the Matterport3D Terms of Use (https://niessner.github.io/Matterport/); nothing was "
            f"downloaded")
    if not Path(script).is_file():
        raise SacaError(f"{MP3D_SCRIPT_ENV}={script}: no such file")
    if env.get(MP3D_TERMS_ENV, "").strip().lower() not in _TRUE:
        raise SacaError(
            f"{MP3D_TERMS_ENV} is not set to 1: download_mp.py asks you to confirm that you have agreed to the "
            f"Matterport3D terms of use ({MP3D_TOS_URL}); this step answers that prompt for you only when you set "
            f"{MP3D_TERMS_ENV}=1; nothing was downloaded")
    python = env.get(MP3D_PYTHON_ENV, "").strip() or interpreter or "python2.7"
    exe = shutil.which(python)
    if exe is None:
        raise SacaError(f"{MP3D_PYTHON_ENV} / downloads.mp3d.interpreter: interpreter '{python}' not found on PATH "
                        f"(the official download_mp.py needs Python 2.7; a Python 3 port runs with python3)")
    return [exe, script, "--task", "habitat", "-o", str(download_dir)]


def _dir_bytes(d: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(d) if e.is_file())
    except OSError:
        return 0


def run_mp3d_script(cmd: list[str], archive: Path, poll: float = 1.0, grace: float = 30.0) -> None:
    """Run ``download_mp.py`` until ``archive`` is complete.

    Its terms-of-use prompt gets one newline (the consent of ``MP3D_TERMS_ACCEPTED``); its next prompt
    ("continue on to main dataset download", the 1.3 TB release) gets end-of-file, which ends the official
    script with an error status once the habitat archive is written: that status is expected. A port that
    goes on anyway is stopped ``grace`` seconds after the archive is complete (a zip with its central
    directory: the official script writes a temporary file and renames it).
    """
    tasks = archive.parent
    for stale in tasks.glob("tmp*") if tasks.is_dir() else ():  # mkstemp files of a killed run: never resumed
        if stale.is_file():
            log.info("removing %s, a partial download of an earlier run of download_mp.py", stale)
            stale.unlink()
    # Several public copies of download_mp.py fetch a task archive only `if not os.path.isdir(localdir)`:
    # the folder it writes (v1/tasks) is left for the script to create. This step's own files there (the
    # archive's recorded sha256, a rejected archive) wait beside it during the run; an empty folder is removed.
    aside = tasks.parent / f".{tasks.name}.held"
    own = [e for e in tasks.glob(f"{archive.name}.*")] if tasks.is_dir() else []
    if own:
        aside.mkdir(exist_ok=True)
        for e in own:
            e.replace(aside / e.name)
    if tasks.is_dir() and not any(tasks.iterdir()):
        tasks.rmdir()
    held = sorted(e.name for e in tasks.iterdir()) if tasks.is_dir() else []
    try:
        _run_mp3d(cmd, archive, tasks, held, poll, grace)
    finally:
        if aside.is_dir():
            tasks.mkdir(parents=True, exist_ok=True)
            for e in aside.iterdir():
                e.replace(tasks / e.name)
            aside.rmdir()


def _run_mp3d(cmd: list[str], archive: Path, tasks: Path, held: list[str], poll: float, grace: float) -> None:
    log.info("running %s", shlex.join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(b"\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    complete_since = None
    stopped = False
    with ByteProgress(None, f"download_mp.py -> {tasks}", initial=_dir_bytes(tasks)) as prog:
        while proc.poll() is None:
            time.sleep(poll)
            size = _dir_bytes(tasks)
            if size > prog.n:
                prog.update(size - prog.n)
            if archive.is_file() and zipfile.is_zipfile(archive):
                complete_since = complete_since or time.monotonic()
                if time.monotonic() - complete_since >= grace:
                    log.warning("download_mp.py still runs %.0f s after %s was complete (it would go on to the full "
                                "release): stopping it", grace, archive)
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    stopped = True
    rc = proc.returncode
    if not archive.is_file():
        why = (f"{tasks} existed before it ran (holding {held[0]}{' and more' if len(held) > 1 else ''}), and "
               f"copies of download_mp.py that download only into a folder that does not exist yet skip it: "
               f"move those files away and run the step again" if held else
               "see its output above; a partial download is not resumed by download_mp.py: run the step again")
        raise SacaError(f"{cmd[1]} exited with status {rc} without writing {archive} ({why})")
    if rc != 0 and not stopped:
        log.info("download_mp.py exited with status %d after writing %s (its prompt for the full release got no "
                 "answer): expected", rc, archive)


def check_scenes(root: Path, scenes: Iterable[str], archive: Path | None = None) -> None:
    """Every expected scene has ``{scene}/{scene}.glb`` and ``.navmesh`` under ``root``."""
    missing = [f"{s}/{s}{ext}" for s in scenes for ext in MP3D_SCENE_FILES
               if not (Path(root) / s / f"{s}{ext}").is_file()]
    if missing:
        where = f"{archive}: " if archive else ""
        raise SacaError(f"{where}{len(missing)} expected scene file(s) missing, e.g. {', '.join(missing[:4])} "
                        f"(expected: downloads.mp3d.scenes, default the 90 MP3D scans)")


def download_mp3d(out: str | os.PathLike, download_dir: str | os.PathLike, *, scenes: Iterable[str] | None = None,
                  interpreter: str = "", root: str = "mp3d", sha256: str = "",
                  pinned_manifest: str | os.PathLike | None = None, keep_archive: bool = True,
                  env: Mapping[str, str] | None = None, poll: float = 1.0, grace: float = 30.0) -> dict[str, str]:
    """MP3D habitat scenes: ``download_mp.py --task habitat -o DOWNLOAD_DIR`` (unless its archive is there
    already), the archive checked (pinned sha256, recorded sidecar), ``root`` extracted to ``out`` (so that
    ``out/{scene}/{scene}.glb``), every expected scene file checked, ``out/MANIFEST.sha256`` written."""
    out, ddir = Path(out), Path(download_dir)
    archive = ddir / MP3D_ARCHIVE
    scenes = list(scenes or MP3D_SCENES)
    pinned = read_pinned(pinned_manifest)
    sha256 = _check_hex(sha256, "downloads.mp3d.sha256")
    if archive.is_file():
        log.info("%s exists: not running download_mp.py", archive)
    else:
        run_mp3d_script(mp3d_command(ddir, interpreter, env), archive, poll=poll, grace=grace)
    digest = verify_file(archive, sha256, "downloads.mp3d.sha256")
    hashes = extract_zip(archive, out, root, check=lambda d: check_scenes(d, scenes, archive), pinned=pinned,
                         pinned_source=str(pinned_manifest or ""),
                         source={"kind": "mp3d", "script": "download_mp.py --task habitat", "archive": archive.name,
                                 "archive_sha256": digest, "scenes": len(scenes), "pinned": bool(sha256)})
    if not keep_archive:
        archive.unlink()
        sidecar(archive).unlink(missing_ok=True)
    return hashes


# --- model weights ----------------------------------------------------------------------------


def _hub_error(repo_id: str, revision: str, err: Exception) -> SacaError:
    name = err.__class__.__name__
    if name == "GatedRepoError":
        return SacaError(f"{repo_id}: access denied to a gated repository: accept its licence on "
                         f"https://huggingface.co/{repo_id} with the account whose token is in {HF_TOKEN_ENV}")
    if name == "RepositoryNotFoundError":
        return SacaError(f"{repo_id}: no such model repository on the Hub (or no access with {HF_TOKEN_ENV})")
    if name == "RevisionNotFoundError":
        return SacaError(f"{repo_id}: no revision '{revision}' (downloads.models.<name>.revision)")
    return SacaError(f"{repo_id}: {name}: {err}")


def check_against_hub(out: Path, siblings, hashes: Mapping[str, str], allow_patterns=None, ignore_patterns=None) -> int:
    """Every file of the snapshot (after the patterns) is in ``out`` with the hash the Hub lists: sha256 for
    LFS files, the git blob id for the others. Returns the number of files checked."""
    from huggingface_hub.utils import filter_repo_objects

    wanted = list(filter_repo_objects(list(siblings or []), allow_patterns=allow_patterns,
                                      ignore_patterns=ignore_patterns, key=lambda s: s.rfilename))
    checked = 0
    for s in wanted:
        path = out / s.rfilename
        if s.rfilename not in hashes:
            raise SacaError(f"{path}: in the Hub snapshot but not downloaded")
        lfs = getattr(s, "lfs", None)
        expected = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        if expected:
            if hashes[s.rfilename] != expected:
                raise mismatch(path, expected, hashes[s.rfilename], "sha256 the Hub lists for this commit")
        elif getattr(s, "blob_id", None):
            actual = git_blob_sha1(path)
            if actual != s.blob_id:
                raise SacaError(f"{path}: git blob id mismatch: expected {s.blob_id} (the Hub), got {actual}")
        else:
            log.warning("%s: the Hub lists no hash for it; recorded on trust", path)
            continue
        checked += 1
    extra = sorted(set(hashes) - {s.rfilename for s in wanted})
    if extra:
        log.warning("%s: %d file(s) that are not in this snapshot (an older revision's?), e.g. %s", out, len(extra),
                    extra[0])
    return checked


def download_model(repo_id: str, out: str | os.PathLike, *, revision: str = "main", gated: bool = False,
                   allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None,
                   pinned_manifest: str | os.PathLike | None = None, verify_hub: bool = True,
                   env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Model weights: ``snapshot_download(repo_id, revision=COMMIT, local_dir=out)`` (it resumes by itself)
    at the commit ``revision`` resolves to, the files checked against the Hub's hashes of that commit,
    ``out/MANIFEST.sha256`` and ``out/SOURCE.json`` written. A gated repository needs ``HF_TOKEN`` (checked
    before any request)."""
    env = os.environ if env is None else env
    out = Path(out)
    # only the environment's token: False keeps huggingface_hub from using a token stored by `hf auth login`
    token = env.get(HF_TOKEN_ENV, "").strip() or False
    if gated and not token:
        raise SacaError(f"{HF_TOKEN_ENV} is not set: {repo_id} is a gated repository (accept its licence on "
                        f"https://huggingface.co/{repo_id}, then export {HF_TOKEN_ENV}=<a read token of that "
                        f"account>); nothing was downloaded")
    offline = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if env.get(v, "").strip().lower() in _TRUE]
    if offline:
        raise SacaError(f"{offline[0]} is set: cannot download {repo_id} (unset it on the machine that downloads)")
    pinned = read_pinned(pinned_manifest)
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token)
    except Exception as err:  # noqa: BLE001 - the hub's errors (and requests') become one line naming the repo
        raise _hub_error(repo_id, revision, err) from err
    commit = info.sha or revision
    ensure_dir(out, "model directory")
    try:
        snapshot_download(repo_id, revision=commit, local_dir=str(out), token=token,
                          allow_patterns=allow_patterns or None, ignore_patterns=ignore_patterns or None)
    except Exception as err:  # noqa: BLE001
        raise _hub_error(repo_id, revision, err) from err
    hashes = hash_tree(out, f"sha256 {out}")
    checked = check_against_hub(out, info.siblings, hashes, allow_patterns or None, ignore_patterns or None) \
        if verify_hub else 0
    if pinned:
        check_pinned(out, hashes, pinned, str(pinned_manifest))
    write_json(out / SOURCE, {"kind": "huggingface", "repo_id": repo_id, "revision": revision, "commit": commit,
                              "gated": gated, "allow_patterns": allow_patterns or [],
                              "ignore_patterns": ignore_patterns or [], "files": len(hashes),
                              "verified_against_hub": checked})
    write_manifest(out, hashes)
    log.info("%s@%s (%s): %d files in %s, %d checked against the Hub's hashes", repo_id, revision, commit,
             len(hashes), out, checked)
    return hashes


__all__ = [
    "ByteProgress", "MANIFEST", "MP3D_SCENES", "SOURCE", "download_archive", "download_model", "download_mp3d",
    "extract_zip", "hash_tree", "http_download", "parse_manifest", "verify", "verify_file",
]

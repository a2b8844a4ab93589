"""Download steps (saca.download): resumable HTTP, checksums and manifests, safe extraction, MP3D via the
licensee's script, Hugging Face snapshots. All local: a threaded HTTP server on 127.0.0.1, a fake
download_mp.py, a monkeypatched huggingface_hub."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from saca import SacaError
from saca.cli import main
from saca.download import (
    MANIFEST,
    MP3D_SCENES,
    SOURCE,
    ByteProgress,
    download_archive,
    download_model,
    download_mp3d,
    extract_zip,
    http_download,
    parse_manifest,
    sidecar,
    verify,
    write_sidecar,
)

REPO = Path(__file__).resolve().parents[1]

ROOT = "R2R_VLNCE_v1-3_preprocessed"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():  # a fixed date: equal members give equal bytes at any second
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def episode_zip() -> tuple[bytes, dict[str, bytes]]:
    rng = random.Random(0)
    files = {
        f"{ROOT}/val_unseen/val_unseen.json.gz": rng.randbytes(150_000),
        f"{ROOT}/val_unseen/val_unseen_gt.json.gz": rng.randbytes(90_000),
        f"{ROOT}/train/train.json.gz": rng.randbytes(60_000),
        "__MACOSX/._junk": b"x",
    }
    return make_zip(files), files


# --- a local HTTP server with Range support ------------------------------------------------------


class Served:
    def __init__(self, data: bytes):
        self.data = data
        self.requests: list[dict] = []
        self.honor_range = True
        self.cuts: list[int] = []  # bytes of the body sent by the next requests before the connection is closed
        self.content_type = "application/zip"
        self.drip = 0.0  # seconds between 16 kB pieces of a body (a slow server, to kill a client half-way)
        self.url = ""

    @property
    def bytes_sent(self) -> int:
        return sum(r["sent"] for r in self.requests)


def _handler(state: Served):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            rec = {"range": rng, "auth": self.headers.get("Authorization"), "sent": 0, "status": None}
            state.requests.append(rec)
            data, start = state.data, 0
            if rng and state.honor_range:
                start = int(re.match(r"bytes=(\d+)-$", rng)[1])
                if start >= len(data):
                    rec["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                rec["status"] = 206
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                rec["status"] = 200
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", state.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if state.cuts:
                body = body[: state.cuts.pop(0)]
            step = 16384 if state.drip else len(body) or 1
            try:
                for i in range(0, len(body), step):
                    rec["sent"] += len(body[i:i + step])  # counted first: the client may be done before the
                    self.wfile.write(body[i:i + step])  # server thread runs again
                    self.wfile.flush()
                    time.sleep(state.drip)
            except (BrokenPipeError, ConnectionResetError):  # the client was killed
                pass
            self.close_connection = True

    return Handler


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    payload, _ = episode_zip()
    state = Served(payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/{ROOT}.zip"
    yield state
    httpd.shutdown()
    httpd.server_close()


# --- resumable HTTP ----------------------------------------------------------------------------


def test_interrupted_connection_resumes_with_a_range_request_for_the_rest_only(server, tmp_path):
    n = len(server.data)
    server.cuts = [100_000]  # the first response stops after 100 kB
    dest = tmp_path / "dl" / f"{ROOT}.zip"
    digest = http_download(server.url, dest, sha(server.data), retry_wait=0)
    assert [r["range"] for r in server.requests] == [None, "bytes=100000-"]
    assert [r["status"] for r in server.requests] == [200, 206]
    assert [r["sent"] for r in server.requests] == [100_000, n - 100_000]
    assert server.bytes_sent == n  # nothing fetched twice
    assert dest.read_bytes() == server.data and digest == sha(server.data)
    assert not dest.with_name(dest.name + ".part").exists()
    assert (dest.parent / f"{dest.name}.sha256").read_text() == f"{digest}  {dest.name}\n"


def test_killed_download_resumes_on_the_next_run_from_the_part_file(server, tmp_path):
    n = len(server.data)
    server.cuts = [120_000]
    dest = tmp_path / f"{ROOT}.zip"
    part = tmp_path / f"{ROOT}.zip.part"
    with pytest.raises(SacaError, match=r"keeps the 120000 bytes fetched so far"):
        http_download(server.url, dest, retries=0)  # as if the job had been killed here
    assert part.stat().st_size == 120_000 and not dest.exists()
    assert part.read_bytes() == server.data[:120_000]
    http_download(server.url, dest, sha(server.data), retry_wait=0)
    assert server.requests[-1]["range"] == "bytes=120000-" and server.requests[-1]["sent"] == n - 120_000
    assert server.bytes_sent == n
    assert dest.read_bytes() == server.data and not part.exists()


def test_a_download_process_killed_half_way_resumes_where_it_stopped(server, tmp_path):
    n = len(server.data)
    server.drip = 0.05
    dest = tmp_path / f"{ROOT}.zip"
    part = tmp_path / f"{ROOT}.zip.part"
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen([sys.executable, "-m", "saca", "download-archive", "--url", server.url, "--archive",
                             str(dest), "--out", str(tmp_path / "out"), "--root", ROOT],
                            env={**os.environ, "PYTHONPATH": src}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 64 * 1024) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < n and not dest.exists()
    server.drip = 0.0
    http_download(server.url, dest, sha(server.data), retry_wait=0)
    assert server.requests[-1]["range"] == f"bytes={kept}-" and server.requests[-1]["sent"] == n - kept
    assert dest.read_bytes() == server.data


def test_a_server_that_ignores_range_restarts_from_byte_zero(server, tmp_path):
    server.honor_range = False
    dest = tmp_path / f"{ROOT}.zip"
    part = tmp_path / f"{ROOT}.zip.part"
    part.write_bytes(b"\xff" * 50_000)  # not even the right bytes: they must not survive
    http_download(server.url, dest, sha(server.data), retry_wait=0)
    assert server.requests[0]["range"] == "bytes=50000-" and server.requests[0]["status"] == 200
    assert len(server.requests) == 1 and server.bytes_sent == len(server.data)
    assert dest.read_bytes() == server.data


def test_a_complete_part_file_is_finished_without_fetching_again(server, tmp_path):
    dest = tmp_path / f"{ROOT}.zip"
    (tmp_path / f"{ROOT}.zip.part").write_bytes(server.data)  # killed between the last byte and the rename
    http_download(server.url, dest, sha(server.data))
    assert [r["status"] for r in server.requests] == [416] and server.bytes_sent == 0
    assert dest.read_bytes() == server.data


def test_pinned_sha256_mismatch_names_the_file_and_both_hashes(server, tmp_path):
    dest = tmp_path / f"{ROOT}.zip"
    wrong = "0" * 64
    with pytest.raises(SacaError) as exc:
        http_download(server.url, dest, wrong)
    msg = str(exc.value)
    assert str(dest) in msg and wrong in msg and sha(server.data) in msg and "mismatch" in msg
    assert not dest.exists() and (tmp_path / f"{ROOT}.zip.rejected").read_bytes() == server.data


def test_a_malformed_pin_is_refused_before_any_request(server, tmp_path):
    with pytest.raises(SacaError, match="not a sha256"):
        http_download(server.url, tmp_path / "a.zip", "abc")
    assert server.requests == []


def test_a_corrupted_archive_fails_its_checksum_naming_it(server, tmp_path):
    dest = tmp_path / f"{ROOT}.zip"
    digest = http_download(server.url, dest)
    raw = bytearray(dest.read_bytes())
    raw[1000] ^= 0xFF
    dest.write_bytes(bytes(raw))
    with pytest.raises(SacaError) as exc:
        http_download(server.url, dest)  # an existing archive is checked, not fetched
    msg = str(exc.value)
    assert str(dest) in msg and digest in msg and sha(bytes(raw)) in msg
    assert len(server.requests) == 1
    with pytest.raises(SacaError, match=re.escape(str(dest))):
        verify(dest)


def test_an_html_page_instead_of_the_archive_is_an_error(server, tmp_path):
    server.content_type = "text/html; charset=utf-8"  # e.g. Google Drive's quota page
    dest = tmp_path / f"{ROOT}.zip"
    with pytest.raises(SacaError, match="HTML page") as exc:
        http_download(server.url, dest)
    assert str(dest) in str(exc.value) and not dest.exists()


def test_missing_token_fails_before_any_request_naming_the_variable(server, tmp_path):
    with pytest.raises(SacaError, match="SACA_TEST_TOKEN is not set"):
        download_archive(server.url, tmp_path / "a.zip", tmp_path / "out", ROOT, auth_env="SACA_TEST_TOKEN", env={})
    assert server.requests == [] and not (tmp_path / "out").exists()
    download_archive(server.url, tmp_path / "a.zip", tmp_path / "out", ROOT, auth_env="SACA_TEST_TOKEN",
                     env={"SACA_TEST_TOKEN": "s3cret"})
    assert server.requests[0]["auth"] == "Bearer s3cret"


# --- archives: extraction and manifests --------------------------------------------------------------


def test_archive_download_extracts_its_root_and_writes_a_manifest(server, tmp_path):
    _, files = episode_zip()
    out = tmp_path / "data" / "datasets" / ROOT
    archive = tmp_path / "data" / "downloads" / f"{ROOT}.zip"
    hashes = download_archive(server.url, archive, out, ROOT, sha256=sha(server.data), retry_wait=0)
    expected = {name[len(ROOT) + 1:]: sha(data) for name, data in files.items() if name.startswith(ROOT + "/")}
    assert hashes == expected
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*expected, MANIFEST, SOURCE])
    # sha256sum format, checkable by sha256sum itself
    assert (out / MANIFEST).read_text() == "".join(f"{expected[k]}  {k}\n" for k in sorted(expected))
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST], cwd=out, check=True)
    src = json.loads((out / SOURCE).read_text())
    assert src["url"] == server.url and src["archive_sha256"] == sha(server.data) and src["pinned"] is True
    assert verify(out)["files"] == 3 and verify(archive)["files"] == 1
    assert not (tmp_path / "data" / "datasets" / "__MACOSX").exists()


def test_verify_names_a_corrupted_or_missing_file(tmp_path, capsys):
    out = tmp_path / ROOT
    extract_zip(_zip_file(tmp_path, {f"{ROOT}/a.bin": b"a" * 10, f"{ROOT}/b/c.bin": b"c" * 10}), out, ROOT)
    (out / "b" / "c.bin").write_bytes(b"C" * 10)
    with pytest.raises(SacaError) as exc:
        verify(out)
    assert str(out / "b" / "c.bin") in str(exc.value) and sha(b"c" * 10) in str(exc.value) and sha(b"C" * 10) in str(
        exc.value)
    logging.root.handlers.clear()
    assert main(["download-verify", "--path", str(out)]) == 2
    assert str(out / "b" / "c.bin") in capsys.readouterr().err
    (out / "b" / "c.bin").unlink()
    with pytest.raises(SacaError, match=re.escape(f"{out / 'b' / 'c.bin'}: listed in")):
        verify(out)


def _zip_file(tmp_path: Path, members: dict[str, bytes], name: str = "a.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(make_zip(members))
    return path


def test_verify_checks_a_pinned_manifest_and_reports_unlisted_files(tmp_path):
    out = tmp_path / "x"
    extract_zip(_zip_file(tmp_path, {"x/a.bin": b"a", "x/b.bin": b"b"}), out, "x")
    pinned = tmp_path / "pinned.sha256"
    pinned.write_text(f"{sha(b'a')}  a.bin\n")
    assert verify(out, pinned=pinned)["extra"] == []
    pinned.write_text(f"{'1' * 64}  a.bin\n")
    with pytest.raises(SacaError, match=re.escape(f"{out / 'a.bin'}: sha256 mismatch: expected {'1' * 64}")):
        verify(out, pinned=pinned)
    (out / "new.bin").write_bytes(b"n")
    assert verify(out)["extra"] == ["new.bin"]
    with pytest.raises(SacaError, match="not listed"):
        verify(out, strict=True)


def test_pinned_manifest_mismatch_at_extraction_leaves_no_output(tmp_path):
    archive = _zip_file(tmp_path, {"x/a.bin": b"a"})
    pinned = tmp_path / "pinned.sha256"
    pinned.write_text(f"{'2' * 64}  a.bin\n")
    with pytest.raises(SacaError) as exc:
        extract_zip(archive, tmp_path / "out", "x", pinned={"a.bin": "2" * 64}, pinned_source=str(pinned))
    assert str(tmp_path / "out" / "a.bin") in str(exc.value) and "2" * 64 in str(exc.value) and sha(b"a") in str(
        exc.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("evil", ["../evil.txt", "x/../../evil.txt", "/tmp/evil-abs.txt", "C:/evil.txt",
                                  "x\\..\\..\\evil.txt", "symlink"])
def test_a_member_escaping_the_target_is_refused_and_nothing_is_written(tmp_path, evil):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/fine.txt", b"fine")
        if evil == "symlink":
            info = zipfile.ZipInfo("x/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../../etc/passwd")
            evil = "x/link"
        else:
            zf.writestr(evil, b"pwned")
    archive = tmp_path / "sub" / "evil.zip"
    archive.parent.mkdir()
    archive.write_bytes(buf.getvalue())
    out = tmp_path / "sub" / "out"
    with pytest.raises(SacaError, match=re.escape(repr(evil))) as exc:
        extract_zip(archive, out, "")
    assert "refusing" in str(exc.value) and str(archive) in str(exc.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "sub"]


def test_an_archive_without_the_expected_root_names_its_top_entries(tmp_path):
    archive = _zip_file(tmp_path, {"other/a.bin": b"a", "more/b.bin": b"b"})
    with pytest.raises(SacaError, match=r"no member under 'R2R_VLNCE_v1-3_preprocessed/'.*more, other"):
        extract_zip(archive, tmp_path / "out", ROOT)
    with pytest.raises(SacaError, match="not a zip archive"):
        extract_zip(_plain(tmp_path), tmp_path / "out", ROOT)


def _plain(tmp_path: Path) -> Path:
    p = tmp_path / "plain.zip"
    p.write_text("not a zip")
    return p


def test_cli_download_archive_end_to_end(server, tmp_path, capsys):
    out, archive = tmp_path / "datasets" / ROOT, tmp_path / "downloads" / f"{ROOT}.zip"
    logging.root.handlers.clear()
    rc = main(["download-archive", "--url", server.url, "--archive", str(archive), "--out", str(out), "--root", ROOT,
               "--sha256", sha(server.data)])
    assert rc == 0, capsys.readouterr().err
    assert parse_manifest(out / MANIFEST) == verify_manifest_independently(out)
    rc = main(["download-archive", "--url", server.url, "--archive", str(tmp_path / "b.zip"), "--out",
               str(tmp_path / "b"), "--root", ROOT, "--sha256", "f" * 64])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "b.zip") in err and "f" * 64 in err and sha(server.data) in err


def verify_manifest_independently(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in root.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, SOURCE)}


# --- MP3D with the licensee's download_mp.py ----------------------------------------------------------

FAKE_DOWNLOAD_MP = textwrap.dedent('''
    """A stand-in for Matterport's download_mp.py: records how it was run, writes v1/tasks/mp3d_habitat.zip."""
    import argparse, io, json, os, sys, tempfile, time, zipfile
    p = argparse.ArgumentParser()
    p.add_argument("-o", "--out_dir", required=True)
    p.add_argument("--task_data", nargs="+", default=[])
    args = p.parse_args()  # --task is an abbreviation of --task_data, as in the official script
    answer = sys.stdin.readline()  # "Press any key to continue" (terms of use)
    with open(os.environ["FAKE_MP3D_RECORD"], "w") as fh:
        json.dump({"argv": sys.argv[1:], "answer": answer, "task_data": args.task_data}, fh)
    out = os.path.join(args.out_dir, "v1", "tasks")
    if os.environ.get("FAKE_MP3D_MODE") == "skip_existing" and os.path.isdir(out):
        sys.exit(0)  # as public copies that download only `if not os.path.isdir(localdir)`
    os.makedirs(out, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out)
    os.close(fd)
    with zipfile.ZipFile(tmp, "w") as zf:
        for s in os.environ["FAKE_MP3D_SCENES"].split():
            for ext in (".glb", ".navmesh", ".house", "_semantic.ply"):
                # a fixed date: the server's archive is the same bytes at every download (writestr with a bare
                # name stamps the current time, so two downloads in different seconds differed)
                zf.writestr(zipfile.ZipInfo("mp3d/%s/%s%s" % (s, s, ext), (1980, 1, 1, 0, 0, 0)),
                            ("%s%s" % (s, ext)).encode() * 100)
    os.rename(tmp, os.path.join(out, "mp3d_habitat.zip"))
    if os.environ.get("FAKE_MP3D_MODE") == "hang":  # a port that goes on to the 1.3 TB release without asking
        time.sleep(120)
    print("Done downloading task_data")
    input("Press any key to continue on to main dataset download")  # end of file: EOFError, status 1
''')


@pytest.fixture
def fake_mp3d(tmp_path, monkeypatch):
    script = tmp_path / "licensed" / "download_mp.py"
    script.parent.mkdir()
    script.write_text(FAKE_DOWNLOAD_MP)
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_MP3D_RECORD", str(record))
    monkeypatch.setenv("FAKE_MP3D_SCENES", " ".join(MP3D_SCENES[:3]))
    monkeypatch.setenv("MP3D_DOWNLOAD_SCRIPT", str(script))
    monkeypatch.setenv("MP3D_TERMS_ACCEPTED", "1")
    monkeypatch.setenv("MP3D_PYTHON", sys.executable)
    return types.SimpleNamespace(script=script, record=record)


def test_mp3d_runs_the_licensed_script_with_the_habitat_task_and_extracts_the_scenes(fake_mp3d, tmp_path):
    out, ddir = tmp_path / "data" / "scene_datasets" / "mp3d", tmp_path / "data" / "downloads" / "mp3d"
    scenes = list(MP3D_SCENES[:3])
    stale = ddir / "v1" / "tasks" / "tmpk2x9q"  # what a killed run of download_mp.py leaves behind
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    hashes = download_mp3d(out, ddir, scenes=scenes, poll=0.05)
    assert not stale.exists()
    rec = json.loads(fake_mp3d.record.read_text())
    assert rec["argv"] == ["--task", "habitat", "-o", str(ddir)] and rec["task_data"] == ["habitat"]
    assert rec["answer"] == "\n"  # the terms-of-use prompt got its one answer (MP3D_TERMS_ACCEPTED=1)
    for s in scenes:
        assert (out / s / f"{s}.glb").read_bytes() == f"{s}.glb".encode() * 100
    assert len(hashes) == 12 and parse_manifest(out / MANIFEST) == hashes == verify_manifest_independently(out)
    archive = ddir / "v1" / "tasks" / "mp3d_habitat.zip"
    assert (archive.parent / "mp3d_habitat.zip.sha256").read_text().split()[0] == sha(archive.read_bytes())
    assert json.loads((out / SOURCE).read_text())["archive_sha256"] == sha(archive.read_bytes())
    # run again: the archive is there, so the script is not (its variable is not even needed)
    fake_mp3d.record.unlink()
    download_mp3d(out, ddir, scenes=scenes, env={})
    assert not fake_mp3d.record.exists()


def test_mp3d_leaves_the_folder_the_script_checks_for_it_to_create(fake_mp3d, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MP3D_MODE", "skip_existing")
    ddir = tmp_path / "dl"
    (ddir / "v1" / "tasks" / "tmpk2x9q").parent.mkdir(parents=True)
    (ddir / "v1" / "tasks" / "tmpk2x9q").write_bytes(b"partial")  # a killed run's: removed, then the empty folder
    download_mp3d(tmp_path / "mp3d", ddir, scenes=MP3D_SCENES[:3], poll=0.05)
    tasks = ddir / "v1" / "tasks"
    assert (tmp_path / "mp3d" / MANIFEST).exists() and (tasks / "mp3d_habitat.zip").is_file()
    recorded = (tasks / "mp3d_habitat.zip.sha256").read_text()
    # the archive deleted (keep_archive: false), its recorded sha256 kept: the step's own file waits aside
    (tasks / "mp3d_habitat.zip").unlink()
    download_mp3d(tmp_path / "mp3d", ddir, scenes=MP3D_SCENES[:3], poll=0.05)
    assert sorted(e.name for e in tasks.iterdir()) == ["mp3d_habitat.zip", "mp3d_habitat.zip.sha256"]
    assert (tasks / "mp3d_habitat.zip.sha256").read_text() == recorded and not (ddir / "v1" / ".tasks.held").exists()
    # a folder that holds something else is left alone; such a script then skips, and the error says why
    (tasks / "mp3d_habitat.zip").rename(tasks / "other.zip")
    with pytest.raises(SacaError, match=r"exited with status 0 without writing .*mp3d_habitat\.zip \(.*tasks existed "
                                        r"before it ran \(holding other\.zip\), and copies of download_mp\.py"):
        download_mp3d(tmp_path / "mp3d2", ddir, scenes=MP3D_SCENES[:3], poll=0.05)
    assert sorted(e.name for e in tasks.iterdir()) == ["mp3d_habitat.zip.sha256", "other.zip"]


def test_mp3d_stops_a_script_that_goes_on_after_the_habitat_archive(fake_mp3d, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MP3D_MODE", "hang")
    t0 = time.monotonic()
    download_mp3d(tmp_path / "mp3d", tmp_path / "dl", scenes=MP3D_SCENES[:3], poll=0.05, grace=0.3)
    assert time.monotonic() - t0 < 60
    assert (tmp_path / "mp3d" / MANIFEST).exists()


@pytest.mark.parametrize("unset,variable", [("MP3D_DOWNLOAD_SCRIPT", "MP3D_DOWNLOAD_SCRIPT"),
                                            ("MP3D_TERMS_ACCEPTED", "MP3D_TERMS_ACCEPTED")])
def test_mp3d_missing_credentials_fail_before_the_script_runs(fake_mp3d, tmp_path, monkeypatch, unset, variable):
    monkeypatch.delenv(unset)
    with pytest.raises(SacaError, match=f"^{variable} is not set"):
        download_mp3d(tmp_path / "mp3d", tmp_path / "dl", scenes=MP3D_SCENES[:3])
    assert not fake_mp3d.record.exists() and not (tmp_path / "mp3d").exists()
    monkeypatch.setenv("MP3D_DOWNLOAD_SCRIPT", str(tmp_path / "nowhere.py"))
    monkeypatch.setenv("MP3D_TERMS_ACCEPTED", "1")
    with pytest.raises(SacaError, match=re.escape(f"MP3D_DOWNLOAD_SCRIPT={tmp_path / 'nowhere.py'}: no such file")):
        download_mp3d(tmp_path / "mp3d", tmp_path / "dl")


def test_mp3d_interpreter_not_found_is_named(fake_mp3d, tmp_path, monkeypatch):
    monkeypatch.setenv("MP3D_PYTHON", "no-such-python2.7")
    with pytest.raises(SacaError, match="MP3D_PYTHON / downloads.mp3d.interpreter: interpreter 'no-such-python2.7'"):
        download_mp3d(tmp_path / "mp3d", tmp_path / "dl")
    assert not fake_mp3d.record.exists()


def test_mp3d_missing_scene_files_fail_and_leave_no_scene_directory(fake_mp3d, tmp_path):
    expected = list(MP3D_SCENES[:4])  # the fake archive holds only the first 3
    with pytest.raises(SacaError, match=rf"2 expected scene file\(s\) missing, e.g. {expected[3]}/{expected[3]}.glb"):
        download_mp3d(tmp_path / "mp3d", tmp_path / "dl", scenes=expected, poll=0.05)
    assert not (tmp_path / "mp3d").exists()
    assert (tmp_path / "dl" / "v1" / "tasks" / "mp3d_habitat.zip").exists()  # kept: no second download needed


def test_mp3d_cli_names_the_missing_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MP3D_DOWNLOAD_SCRIPT", raising=False)
    logging.root.handlers.clear()
    rc = main(["download-mp3d", "--download-dir", str(tmp_path / "dl"), "--out", str(tmp_path / "mp3d")])
    assert rc == 2 and "saca download-mp3d: error: MP3D_DOWNLOAD_SCRIPT is not set" in capsys.readouterr().err


# --- Hugging Face snapshots ------------------------------------------------------------------------

COMMIT = "c" * 40
MODEL_FILES = {"config.json": b'{"model_type": "clip"}\n', "model.safetensors": bytes(range(256)) * 64}


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    calls = types.SimpleNamespace(info=[], snapshot=[], files=dict(MODEL_FILES))

    class FakeApi:
        def model_info(self, repo_id, **kw):
            calls.info.append({"repo_id": repo_id, **kw})
            lfs = BlobLfsInfo(size=len(MODEL_FILES["model.safetensors"]), sha256=sha(MODEL_FILES["model.safetensors"]),
                              pointer_size=134)
            return types.SimpleNamespace(sha=COMMIT, siblings=[
                RepoSibling("config.json", size=len(MODEL_FILES["config.json"]),
                            blob_id=_git_blob(MODEL_FILES["config.json"])),
                RepoSibling("model.safetensors", size=lfs.size, blob_id="0" * 40, lfs=lfs),
            ])

    def fake_snapshot_download(repo_id, **kw):
        calls.snapshot.append({"repo_id": repo_id, **kw})
        local = Path(kw["local_dir"])
        for name, data in calls.files.items():
            (local / name).write_bytes(data)
        meta = local / ".cache" / "huggingface" / "download"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "model.safetensors.metadata").write_text(f"{COMMIT}\netag\n0\n")
        return str(local)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_snapshot_download_gets_the_resolved_commit_and_a_manifest_is_written(fake_hub, tmp_path):
    out = tmp_path / "models" / "clip-vit-base-patch32"
    hashes = download_model("openai/clip-vit-base-patch32", out, revision="main",
                            allow_patterns=["*.json", "*.safetensors"])
    assert fake_hub.info == [{"repo_id": "openai/clip-vit-base-patch32", "revision": "main", "files_metadata": True,
                              "token": False}]  # no token: not even one stored by `hf auth login`
    assert fake_hub.snapshot == [{"repo_id": "openai/clip-vit-base-patch32", "revision": COMMIT,
                                  "local_dir": str(out), "token": False,
                                  "allow_patterns": ["*.json", "*.safetensors"], "ignore_patterns": None}]
    assert hashes == {k: sha(v) for k, v in MODEL_FILES.items()}  # .cache/huggingface is not listed
    assert parse_manifest(out / MANIFEST) == hashes
    src = json.loads((out / SOURCE).read_text())
    assert src["commit"] == COMMIT and src["revision"] == "main" and src["verified_against_hub"] == 2
    assert verify(out)["files"] == 2


def test_git_blob_id_agrees_with_git(tmp_path):
    from saca.download import git_blob_sha1

    if not shutil.which("git"):
        pytest.skip("git not installed")
    p = tmp_path / "config.json"
    p.write_bytes(MODEL_FILES["config.json"])
    out = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True).stdout.strip()
    assert git_blob_sha1(p) == out == _git_blob(MODEL_FILES["config.json"])


def test_a_model_file_that_differs_from_the_hub_is_named_with_both_hashes(fake_hub, tmp_path):
    bad = b"corrupted" * 10
    fake_hub.files["model.safetensors"] = bad
    out = tmp_path / "m"
    with pytest.raises(SacaError) as exc:
        download_model("org/model", out)
    msg = str(exc.value)
    assert str(out / "model.safetensors") in msg and sha(MODEL_FILES["model.safetensors"]) in msg and sha(bad) in msg
    assert not (out / MANIFEST).exists()


def test_gated_model_without_hf_token_fails_before_any_request(fake_hub, tmp_path):
    with pytest.raises(SacaError, match="^HF_TOKEN is not set: facebook/sam3 is a gated repository"):
        download_model("facebook/sam3", tmp_path / "sam3", gated=True)
    assert fake_hub.info == [] and fake_hub.snapshot == [] and not (tmp_path / "sam3").exists()


def test_gated_model_uses_the_token_from_the_environment(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    download_model("facebook/sam3", tmp_path / "sam3", gated=True, revision=COMMIT)
    assert fake_hub.snapshot[0]["token"] == "hf_test" and fake_hub.info[0]["token"] == "hf_test"
    assert "hf_test" not in (tmp_path / "sam3" / SOURCE).read_text()


def test_offline_hub_is_refused_naming_the_variable(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SacaError, match="^HF_HUB_OFFLINE is set"):
        download_model("Qwen/Qwen3-0.6B", tmp_path / "q")
    assert fake_hub.info == []


def test_cli_download_model_gated_names_hf_token(fake_hub, tmp_path, capsys):
    logging.root.handlers.clear()
    rc = main(["download-model", "--repo-id", "facebook/sam3", "--gated", "--out", str(tmp_path / "sam3")])
    assert rc == 2 and "saca download-model: error: HF_TOKEN is not set" in capsys.readouterr().err
    assert fake_hub.snapshot == []


# --- progress ---------------------------------------------------------------------------------------


def test_byte_progress_reports_sizes_rate_and_eta(caplog):
    clock = types.SimpleNamespace(t=0.0)
    caplog.set_level(logging.INFO, logger="saca.progress")
    p = ByteProgress(100 * 2**20, "R2R.zip", initial=20 * 2**20, every=10, mode="log", clock=lambda: clock.t)
    clock.t = 10.0
    p.update(10 * 2**20)  # 10 MiB in 10 s after resuming at 20 MiB
    assert caplog.records[-1].getMessage() == ("R2R.zip: 30.0 MiB of 100.0 MiB (30.0 %), 1.0 MiB/s, ETA 1m10s, "
                                               "elapsed 10s")
    p.close()


# --- issue 25: corrupt archives are one line, and a download that fails its check is not recorded ------------


def _bad_crc(data: bytes, member_bytes: bytes) -> bytes:
    """The zip with one byte of a member's data flipped: its structure intact, its CRC-32 wrong."""
    i = data.index(member_bytes[:64]) + 10
    raw = bytearray(data)
    raw[i] ^= 0xFF
    return bytes(raw)


def test_a_bad_crc_is_one_line_naming_the_archive_and_member_and_nothing_is_extracted(tmp_path):
    member = random.Random(1).randbytes(5000)
    archive = tmp_path / "a.zip"
    archive.write_bytes(_bad_crc(make_zip({f"{ROOT}/x.bin": member, f"{ROOT}/y.bin": b"y"}), member))
    with pytest.raises(SacaError) as exc:
        extract_zip(archive, tmp_path / "out", ROOT)
    msg = str(exc.value)
    assert "\n" not in msg and str(archive) in msg and "x.bin" in msg and "CRC" in msg
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "saca", "download-archive", "--url", "http://127.0.0.1:9/none.zip",
                        "--archive", str(archive), "--out", str(tmp_path / "out"), "--root", ROOT],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [line for line in r.stderr.splitlines() if "CRC" in line and str(archive) in line], r.stderr


def test_a_short_unpinned_download_is_removed_not_recorded_and_fetched_again(server, tmp_path):
    # issue 25: a truncated archive (the server's Content-Length agreeing) was recorded in its .sha256 sidecar and
    # then never fetched again
    full = server.data
    server.data = full[: len(full) - 3000]
    archive, out = tmp_path / "downloads" / f"{ROOT}.zip", tmp_path / "datasets" / ROOT
    with pytest.raises(SacaError) as exc:
        download_archive(server.url, archive, out, ROOT, retry_wait=0)
    assert "\n" not in str(exc.value) and "the next run fetches it again" in str(exc.value)
    assert not archive.exists() and not sidecar(archive).exists() and not out.exists()
    assert not archive.with_name(archive.name + ".part").exists()
    server.data = full  # the next run fetches it again, and this time it is whole
    download_archive(server.url, archive, out, ROOT, retry_wait=0)
    assert sidecar(archive).read_text() == f"{sha(full)}  {archive.name}\n" and (out / MANIFEST).is_file()
    assert len(server.requests) == 2


def test_a_recorded_archive_with_a_bad_crc_is_removed_with_its_record(server, tmp_path):
    _, files = episode_zip()
    member = files[f"{ROOT}/train/train.json.gz"]
    archive, out = tmp_path / f"{ROOT}.zip", tmp_path / "out"
    bad = _bad_crc(server.data, member)
    archive.write_bytes(bad)
    write_sidecar(archive, sha(bad))  # what an earlier version recorded
    with pytest.raises(SacaError, match=r"CRC.*removed it and its record: the next run fetches it again"):
        download_archive(server.url, archive, out, ROOT, retry_wait=0)
    assert not archive.exists() and not sidecar(archive).exists() and not out.exists()
    assert server.requests == []
    download_archive(server.url, archive, out, ROOT, retry_wait=0)
    assert verify(out)["files"] == 3 and len(server.requests) == 1

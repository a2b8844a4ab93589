"""CLI commands: download-mp3d, download-archive, download-model, download-verify (docs/downloads.md).

The download commands take their settings as options (the workflow passes one entry of the config's
``downloads`` section); credentials come only from the environment.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _writable(path: Path, flag: str) -> None:
    from saca.io import check_output_path

    check_output_path(path, flag)


def cmd_download_mp3d(args: argparse.Namespace) -> int:
    from saca.download import download_mp3d

    _writable(args.download_dir, "--download-dir")
    hashes = download_mp3d(args.out, args.download_dir, scenes=args.scenes or None, interpreter=args.interpreter,
                           root=args.root, sha256=args.sha256, pinned_manifest=args.pinned_manifest,
                           keep_archive=not args.remove_archive, grace=args.grace)
    print(f"MP3D scenes: {len(hashes)} files in {args.out}, manifest {Path(args.out) / 'MANIFEST.sha256'}")
    return 0


def cmd_download_archive(args: argparse.Namespace) -> int:
    from saca.download import download_archive

    _writable(args.archive, "--archive")
    hashes = download_archive(args.url, args.archive, args.out, args.root, sha256=args.sha256,
                              pinned_manifest=args.pinned_manifest, auth_env=args.auth_env,
                              keep_archive=not args.remove_archive, retries=args.retries, timeout=args.timeout)
    print(f"{args.archive.name}: {len(hashes)} files in {args.out}, manifest {args.out / 'MANIFEST.sha256'}")
    return 0


def cmd_download_model(args: argparse.Namespace) -> int:
    from saca.download import download_model

    hashes = download_model(args.repo_id, args.out, revision=args.revision, gated=args.gated,
                            allow_patterns=args.allow_patterns or None, ignore_patterns=args.ignore_patterns or None,
                            pinned_manifest=args.pinned_manifest, verify_hub=not args.no_hub_check)
    print(f"{args.repo_id}@{args.revision}: {len(hashes)} files in {args.out}, manifest {args.out / 'MANIFEST.sha256'}")
    return 0


def cmd_download_verify(args: argparse.Namespace) -> int:
    from saca import SacaError
    from saca.download import verify

    for p in args.path:
        if not p.exists():
            raise SacaError(f"{p}: does not exist (--path)")
    for p in args.path:
        r = verify(p, pinned=args.pinned, strict=args.strict)
        extra = f", {len(r['extra'])} unlisted file(s)" if r["extra"] else ""
        print(f"{p}: ok ({r['files']} files, {r['bytes']} bytes{extra})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "download-mp3d", help="MP3D habitat scenes with your licensed download_mp.py (MP3D_DOWNLOAD_SCRIPT)",
        description="Run $MP3D_DOWNLOAD_SCRIPT --task habitat -o DOWNLOAD_DIR (needs MP3D_TERMS_ACCEPTED=1; the "
        "interpreter: $MP3D_PYTHON, else --interpreter), check DOWNLOAD_DIR/v1/tasks/mp3d_habitat.zip, extract its "
        "ROOT directory to OUT (OUT/{scene}/{scene}.glb), check every scene and write OUT/MANIFEST.sha256. An "
        "archive already in DOWNLOAD_DIR is checked, not fetched again.")
    p.add_argument("--download-dir", required=True, type=Path,
                   help="where download_mp.py puts v1/tasks/mp3d_habitat.zip")
    p.add_argument("--out", required=True, type=Path, help="the scene directory (data/scene_datasets/mp3d)")
    p.add_argument("--scenes", nargs="*", default=[], help="expected scene ids (default: the 90 MP3D scans)")
    p.add_argument("--interpreter", default="", help="Python that runs download_mp.py (default python2.7)")
    p.add_argument("--root", default="mp3d", help="the archive's directory to extract ('' for all of it)")
    p.add_argument("--sha256", default="", help="pinned sha256 of mp3d_habitat.zip")
    p.add_argument("--pinned-manifest", type=Path, default=None, help="sha256sum file of pinned scene files")
    p.add_argument("--remove-archive", action="store_true", help="delete the archive after extraction")
    p.add_argument("--grace", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_download_mp3d)

    p = sub.add_parser(
        "download-archive", help="resumable download + sha256 check + safe extraction of an episode archive",
        description="Download URL to ARCHIVE (resuming ARCHIVE.part with HTTP Range requests), check its sha256 "
        "(--sha256 when pinned; recorded in ARCHIVE.sha256), extract the archive's ROOT directory to OUT (members "
        "escaping OUT are refused) and write OUT/MANIFEST.sha256.")
    p.add_argument("--url", required=True)
    p.add_argument("--archive", required=True, type=Path, help="where the archive is kept (data/downloads/NAME.zip)")
    p.add_argument("--out", required=True, type=Path, help="the extracted directory (data/datasets/NAME)")
    p.add_argument("--root", default="", help="the archive's top directory to extract ('' for all of it)")
    p.add_argument("--sha256", default="", help="pinned sha256 of the archive")
    p.add_argument("--pinned-manifest", type=Path, default=None, help="sha256sum file of pinned extracted files")
    p.add_argument("--auth-env", default="", help="environment variable holding a bearer token for URL")
    p.add_argument("--remove-archive", action="store_true", help="delete the archive after extraction")
    p.add_argument("--retries", type=int, default=8, help="attempts in a row without progress before giving up")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt is retried")
    p.set_defaults(func=cmd_download_archive)

    p = sub.add_parser(
        "download-model", help="model weights from the Hugging Face Hub (snapshot_download) with a manifest",
        description="snapshot_download(REPO_ID, revision=<commit of REVISION>, local_dir=OUT), check each file "
        "against the Hub's hashes of that commit, write OUT/MANIFEST.sha256 and OUT/SOURCE.json. --gated needs "
        "HF_TOKEN in the environment.")
    p.add_argument("--repo-id", required=True, help="e.g. Qwen/Qwen2-VL-2B-Instruct")
    p.add_argument("--out", required=True, type=Path, help="the model directory (models/NAME)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (pin a commit for reproducibility)")
    p.add_argument("--gated", action="store_true", help="the repository is gated: HF_TOKEN is required")
    p.add_argument("--allow-patterns", nargs="*", default=[])
    p.add_argument("--ignore-patterns", nargs="*", default=[])
    p.add_argument("--pinned-manifest", type=Path, default=None, help="sha256sum file of pinned model files")
    p.add_argument("--no-hub-check", action="store_true", help="do not check the files against the Hub's hashes")
    p.set_defaults(func=cmd_download_model)

    p = sub.add_parser(
        "download-verify", help="re-check downloads against their MANIFEST.sha256 (or FILE.sha256)",
        description="For a directory: re-hash every file listed in DIR/MANIFEST.sha256; for a file: check it "
        "against FILE.sha256. Exit status 2 naming the first file that differs or is missing.")
    p.add_argument("--path", required=True, nargs="+", type=Path, help="download directories or archives")
    p.add_argument("--pinned", type=Path, default=None, help="a pinned sha256sum file that must agree too")
    p.add_argument("--strict", action="store_true", help="files the manifest does not list are an error")
    p.set_defaults(func=cmd_download_verify)

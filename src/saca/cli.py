"""Command line entry point: ``python -m saca <command>`` (also the ``saca`` script).

Each topic module in :mod:`saca.commands` exposes ``register(subparsers)``;
modules import their heavy dependencies (torch, pybullet) inside the command
handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from saca import SacaError, __version__

COMMAND_MODULES = (
    "saca.commands.data",
    "saca.commands.evaluate",
    "saca.commands.policy",
    "saca.commands.train",
    "saca.commands.auditor",
    "saca.commands.report",
    "saca.commands.download",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saca",
        description="SACA / VLN-R1 reproduction: every workflow step as a command.",
    )
    parser.add_argument("--version", action="version", version=f"saca {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_args(args)
        result = args.func(args)
    except SacaError as err:
        print(f"saca {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # a path the user gave that the OS refused (permissions, disk full, a file where a
        # directory should be): one line naming it, not a traceback
        if err.filename is None:
            raise
        where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        print(f"saca {args.command}: error: {where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return int(result or 0)


def check_args(args: argparse.Namespace) -> None:
    """Checks every command gets before it reads anything: the JSON config options, then the output path.

    Malformed ``--sim`` / ``--dataset-config`` sections and an output that cannot be
    written fail here, naming the key or the path, before any input is read or work done.
    """
    from saca.io import check_output_path

    if hasattr(args, "sim") and hasattr(args, "dataset_config"):
        from saca.commands.data import sim_configs

        sim_configs(args)
    out = getattr(args, "out", None)
    if out is not None:
        check_output_path(out, "--out")


if __name__ == "__main__":
    raise SystemExit(main())

"""No command ends in a Python traceback for a user error.

Every subcommand of ``python -m saca`` (discovered from the parser) is run with a
missing input path, an output path that cannot be written, and malformed JSON
options; each must exit non-zero with one ``saca <command>: error: ...`` line that
names the path or the key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from saca.cli import build_parser, main
from saca.config import section_schema

IN = "<in>"  # an input path (file or directory)
OUT_DIR = "<out-dir>"
OUT_FILE = "<out-file>"

# every command's required arguments; input paths as IN, outputs as OUT_*
COMMANDS = {
    "scenes": {"--out": OUT_DIR},
    "episodes": {"--dataset": "mini_r2r", "--split": "train", "--scenes": IN, "--out": OUT_DIR},
    "episodes-import": {"--format": "r2r_ce", "--src": IN, "--split": "val_unseen", "--out": OUT_DIR},
    "vln-ego": {"--episodes": IN, "--split": "train", "--scenes": IN, "--out": OUT_DIR},
    "export-sharegpt": {"--vln-ego": IN, "--out": OUT_DIR},
    "preview": {"--episodes": IN, "--scenes": IN, "--out": OUT_FILE},
    "evaluate": {"--dataset-dir": IN, "--split": "val_unseen", "--scenes": IN, "--agent": "random", "--out": OUT_DIR},
    "eval-merge": {"--out": IN},  # the evaluation directory that holds shards/
    "plot-episodes": {"--dataset-dir": IN, "--split": "val_unseen", "--scenes": IN, "--eval-dir": IN, "--out": OUT_DIR},
    "policy-init": {"--out": OUT_DIR},
    "vision-pretrain": {"--init": IN, "--scenes": IN, "--out": OUT_DIR},
    "sft": {"--init": IN, "--train": IN, "--val": f"val={IN}", "--out": OUT_DIR},
    "rft": {"--init": IN, "--out": OUT_DIR},
    "policy-agent": {"--checkpoint": IN, "--out": OUT_FILE},
    "policy-predict": {"--policy": IN, "--vln-ego": IN, "--out": OUT_FILE},
    "landmarks": {"--episodes": IN, "--split": "val_unseen", "--out": OUT_FILE},
    "audit": {"--episodes": IN, "--split": "val_unseen", "--eval-dir": IN, "--landmarks": IN, "--scenes": IN,
              "--out": OUT_DIR},
    "audit-figure": {"--episodes": IN, "--split": "val_unseen", "--eval-dir": IN, "--landmarks": IN, "--scenes": IN,
                     "--audit": IN, "--out": OUT_FILE},
    "report": {"--notebook": IN, "--out": OUT_FILE},
    "report-index": {"--reports": "table2.html=Table 2", "--out": OUT_FILE},
    "download-mp3d": {"--download-dir": OUT_DIR, "--out": OUT_DIR},
    "download-archive": {"--url": "http://127.0.0.1:9/none.zip", "--archive": OUT_FILE, "--out": OUT_DIR},
    "download-model": {"--repo-id": "org/name", "--out": OUT_DIR},
    "download-verify": {"--path": IN},
    "memory": {"--config": IN},
    "audit-expert": {"--episodes": IN, "--split": "val_unseen", "--landmarks": IN, "--scenes": IN, "--out": OUT_FILE},
    "dagger-rollouts": {"--episodes": IN, "--agent": IN, "--scenes": IN, "--out": OUT_DIR},
}
# the config section each command's --params holds
PARAMS_SECTION = {
    "scenes": "scenes", "vln-ego": "vln_ego", "evaluate": "evaluation", "plot-episodes": "evaluation",
    "policy-init": "policy.init", "vision-pretrain": "policy.vision_pretrain", "sft": "sft", "rft": "rft", "policy-agent": "policy.agent", "landmarks": "landmarks",
    "audit": "auditor", "audit-figure": "auditor", "audit-expert": "auditor", "dagger-rollouts": "vln_ego",
}


def _subparsers() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def _options(name: str) -> set[str]:
    return {s for a in _subparsers()[name]._actions for s in a.option_strings}


def test_the_table_covers_every_command_and_its_required_arguments():
    subs = _subparsers()
    assert set(COMMANDS) == set(subs)
    for name, p in subs.items():
        required = {a.option_strings[0] for a in p._actions if a.required}
        assert required <= set(COMMANDS[name]), (name, required - set(COMMANDS[name]))
        assert ("--params" in _options(name)) == (name in PARAMS_SECTION), name


def _argv(name: str, tmp_path: Path, inputs: str = "missing", out: str = "ok", extra=()) -> tuple[list[str], list[str]]:
    """The command line and the paths that are bad in it."""
    argv, bad = [name], []
    for k, (flag, value) in enumerate(COMMANDS[name].items()):
        if IN in value:
            path = tmp_path / f"missing-{flag.strip('-')}-{k}"
            if inputs == "missing":
                bad.append(str(path))
            value = value.replace(IN, str(path))
        elif value in (OUT_DIR, OUT_FILE):
            if out == "not-a-directory":
                (tmp_path / "a-file").write_text("x")
                path = tmp_path / "a-file" / "sub" / ("out" if value == OUT_DIR else "out.png")
                bad.append(str(path))
            else:
                path = tmp_path / "results" / ("out" if value == OUT_DIR else "out.png")
            value = str(path)
        argv += [flag, value]
    return argv + list(extra), bad


def _run(argv, capsys) -> tuple[int, str]:
    logging.root.handlers.clear()  # main() attaches logging to this test's stderr
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: not what these tests probe
        pytest.fail(f"{argv}: argparse exit {exc.code}: {capsys.readouterr().err}")
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(name: str, err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"saca {name}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", sorted(n for n, spec in COMMANDS.items() if any(IN in v for v in spec.values())))
def test_missing_input_path_is_named(name, tmp_path, capsys):
    argv, bad = _argv(name, tmp_path, inputs="missing")
    rc, err = _run(argv, capsys)
    assert rc != 0
    line = _one_error_line(name, err)
    assert any(b in line for b in bad), (line, bad)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*")), "wrote output"


@pytest.mark.parametrize("name", sorted(n for n, spec in COMMANDS.items() if set(spec.values()) & {OUT_DIR, OUT_FILE}))
def test_unwritable_output_path_is_named(name, tmp_path, capsys):
    argv, bad = _argv(name, tmp_path, inputs="missing", out="not-a-directory")
    rc, err = _run(argv, capsys)
    assert rc != 0
    line = _one_error_line(name, err)
    assert bad[-1] in line and "not a directory" in line, (line, bad)


def _wrong_type_key(section: str) -> str:
    props = section_schema(section)["properties"]
    return next(k for k, v in props.items() if v.get("type") in ("integer", "number"))


def _malformed(name: str):
    cases = []
    if name in PARAMS_SECTION:
        section = PARAMS_SECTION[name]
        key = _wrong_type_key(section)
        cases += [("--params", '{"learning_rate": 1e-3', "--params"), ("--params", "[1, 2]", "--params"),
                  ("--params", '"fast"', "--params"), ("--params", f'{{"{key}": "fast"}}', f"{section}.{key}")]
    if "--sim" in _options(name):
        cases += [("--sim", '{"width": 64', "--sim"), ("--sim", '{"width": "wide"}', "sim.width")]
    if "--dataset-config" in _options(name):
        cases += [("--dataset-config", "[15]", "--dataset-config"),
                  ("--dataset-config", '{"turn_angle": "fifteen"}', "datasets.<dataset>.turn_angle")]
    return [(name, *c) for c in cases]


@pytest.mark.parametrize(
    "name,flag,value,named", [c for n in sorted(COMMANDS) for c in _malformed(n)], ids=lambda v: str(v)[:24]
)
def test_malformed_json_options_name_the_option_or_key(name, flag, value, named, tmp_path, capsys):
    argv, _ = _argv(name, tmp_path, inputs="missing", extra=[flag, value])
    rc, err = _run(argv, capsys)
    assert rc != 0
    line = _one_error_line(name, err)
    assert named in line, line

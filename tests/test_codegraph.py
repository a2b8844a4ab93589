"""The code inputs of the workflow's rules, derived from the import graph (saca.codegraph)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from saca import SacaError
from saca.codegraph import command_handler, command_sources, reachable


def write(root: Path, files: dict) -> Path:
    pkg = root / "saca"
    for name, text in files.items():
        p = pkg / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return pkg


@pytest.fixture
def tree(tmp_path):
    return write(tmp_path, {
        "__init__.py": "",
        "a.py": """
            import json

            def f():
                from saca import b
                return helper()

            def helper():
                from saca.sub import c

            def g():
                from saca import d
            """,
        "b.py": "import saca.e\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .sibling import thing\n",
        "sub/sibling.py": "thing = 1\n",
        "d.py": "",
        "e.py": "",
        "k.py": """
            class K:
                def m(self):
                    return h()

            def h():
                from saca import d

            def other():
                from saca import e
            """,
        "user.py": "from saca.a import f\n",
        "whole.py": "from saca import a\n",
        "cls.py": "from saca.k import K\n",
    })


def test_a_function_import_reaches_that_function_and_what_it_calls(tree):
    got = reachable(["saca.user"], root=tree)
    # f imports b (which imports e) and calls helper (which imports sub.c, whose relative import is sub.sibling);
    # g of the same module is never named: d is not reached
    assert got == {"saca", "saca.user", "saca.a", "saca.b", "saca.e", "saca.sub", "saca.sub.c", "saca.sub.sibling"}


def test_a_module_import_reaches_every_import_in_its_file(tree):
    assert "saca.d" in reachable(["saca.whole"], root=tree)


def test_a_class_reaches_what_its_methods_name(tree):
    got = reachable(["saca.cls"], root=tree)
    assert "saca.d" in got  # K.m calls h, which imports d
    # importing a class imports its whole module
    assert "saca.e" in got
    assert reachable([("saca.k", "h")], root=tree) >= {"saca.d"}
    assert "saca.e" not in reachable([("saca.k", "h")], root=tree)  # other() is never named


def test_unknown_names_are_errors(tree):
    with pytest.raises(SacaError, match="no top-level function 'nope'"):
        reachable([("saca.a", "nope")], root=tree)
    with pytest.raises(SacaError, match="unknown saca command 'nope'; known: .*rft"):
        command_handler("nope")


def test_the_real_commands_import_what_they_should():
    assert command_handler("rft") == ("saca.commands.train", "cmd_rft")
    sft = command_sources("sft")
    rft = command_sources("rft")
    evaluate = command_sources("evaluate")
    # SFT does not run the RL code: editing SACA's group construction does not retrain SFT
    assert "src/saca/train/sft.py" in sft
    assert not {"src/saca/train/saca.py", "src/saca/train/grpo.py"} & set(sft)
    assert not any(f.startswith("src/saca/train/rft/") for f in sft)
    # RFT runs every stage of the trainer, SACA, the auditor and the simulator
    stages = {f"src/saca/train/rft/{m}.py" for m in ("__init__", "collect", "config", "groups", "objective", "samples",
                                                     "trainer")}
    assert stages | {"src/saca/train/saca.py", "src/saca/auditor/oracle.py", "src/saca/sim/embedded/sim.py"} <= set(rft)
    # evaluation runs the policy agent but no trainer
    assert "src/saca/policy/agent.py" in evaluate and not any("/train/" in f for f in evaluate)
    assert not any("/policy/" in f or "/auditor/" in f for f in command_sources("episodes"))
    for files in (sft, rft, evaluate):
        assert {"src/saca/__init__.py", "src/saca/cli.py", "src/saca/__main__.py"} <= set(files)
        assert all(Path(f).is_file() for f in files)


def test_no_rule_hand_lists_package_files():
    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    for smk in rules.glob("*.smk"):
        code_lines = [line for line in smk.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any("src/saca" in line for line in code_lines), smk.name  # code inputs come from code(command)


def test_the_cached_lists_equal_the_derived_ones_and_an_edit_derives_them_afresh(tmp_path, monkeypatch):
    import shutil

    import saca.codegraph as cg

    pkg = tmp_path / "src" / "saca"
    shutil.copytree(cg.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / ".snakemake" / "saca-codegraph.json"
    commands = ["scenes", "sft", "rft", "evaluate"]
    first = {c: cg.cached_command_sources(c, cache, pkg) for c in commands}
    assert first == {c: command_sources(c, pkg) for c in commands}
    assert first["scenes"] and all(f.startswith("src/saca/") for f in first["scenes"])
    # a second process reads the table: nothing is derived
    cg._sources_table.cache_clear()  # what a new process starts with
    monkeypatch.setattr(cg, "command_sources", lambda *a: pytest.fail("derived again despite the cache"))
    assert {c: cg.cached_command_sources(c, cache, pkg) for c in commands} == first
    monkeypatch.undo()
    # an edit to a package file (scenes' command now imports the auditor) changes the digest: derived afresh
    cli = pkg / "commands" / "data.py"
    cli.write_text(cli.read_text() + "\nimport saca.auditor.scoring  # noqa: E402, F401\n")
    assert "src/saca/auditor/scoring.py" not in first["scenes"]
    for memo in (cg._parse, cg._edges, cg._top_functions, cg.module_file, cg._sources_table):  # as a new process
        memo.cache_clear()
    assert "src/saca/auditor/scoring.py" in cg.cached_command_sources("scenes", cache, pkg)
    # a cache that is not JSON is only a cache
    cache.write_text("{not json")
    cg._sources_table.cache_clear()
    assert cg.cached_command_sources("sft", cache, pkg) == command_sources("sft", pkg)

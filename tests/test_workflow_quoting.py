"""Issue 25: config values that reach a shell command are data, not code.

``results: "results smoke"`` broke every rule and wrote a stray ``./results``; ``results: "res$(touch X)x"`` ran
the ``touch``. Every path, wildcard and list a rule's shell command holds is quoted (``{...:q}``, JSON sections as
one quoted word); the checkout path in the shell prefix too.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JSON_FLAGS = ("--params", "--sim", "--dataset-config", "--datasets", "--agent", "--parameters")


def snakemake(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def test_every_shell_command_keeps_a_hostile_results_path_in_one_word(tmp_path):
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    results = f"{tmp_path}/res dir $(touch {marker})`touch {marker}`;x"
    r = snakemake("all", "-n", "-p", "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml",
                  "--config", f"results={results}")
    assert r.returncode == 0, r.stderr[-3000:]
    commands = [line[len("Shell command: "):] for line in r.stdout.splitlines()
                if line.startswith("Shell command: ") and line != "Shell command: None"]  # None: a rule of targets
    rules = {line.split()[-1].rstrip(":") for line in r.stdout.splitlines() if line.startswith(("rule ", "localrule "))}
    assert len(commands) > 50 and {"sft", "rft", "evaluate", "audit", "report", "vln_ego", "scenes"} <= rules
    for cmd in commands:
        words = shlex.split(cmd)
        touched = [w for w in words if "res dir" in w or marker in w or w.startswith(("dir", "x/"))]
        assert touched, cmd  # every command reads or writes under the results folder
        assert all(results in w for w in touched), cmd
        # a config section is one word of JSON, quoted once (not twice: `'{"a": 1}'` reached a command as a string)
        for flag, word in zip(words, words[1:]):
            if flag in JSON_FLAGS and (word[:1] in "{['\"" or flag != "--agent"):
                assert isinstance(json.loads(word), dict), (flag, word, cmd)
    assert not (REPO / marker).exists() and not (tmp_path / marker).exists()


@pytest.mark.slow
def test_a_results_path_with_spaces_and_shell_code_runs_and_executes_nothing(tmp_path):
    # a real run of the first rules (scenes, episodes) into such a folder
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    results = tmp_path / f"results smoke $(touch {marker})"
    target = results / "mini_r2r" / "episodes" / "val_unseen.json.gz"
    r = snakemake(str(target), "--cores", "1", "--nolock", "--configfile", "config/smoke.yaml",
                  "--config", f"results={results}")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert target.stat().st_size > 0 and (results / "scenes" / "index.json").is_file()
    assert (results / "logs" / "scenes.log").is_file()
    assert not any(p.name == marker for p in [*REPO.iterdir(), *tmp_path.iterdir()])
    assert sorted(p.name for p in tmp_path.iterdir()) == [results.name]  # no stray "results" beside it
    assert not (REPO / "results smoke").exists()

"""Conda envs of the cluster: pinned, covering the package's dependencies, on every rule; the package on PYTHONPATH."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(env: Path) -> dict:
    deps = yaml.safe_load(env.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    out = {}
    for line in pip:
        if line.startswith("-"):
            assert not line.startswith("-e"), f"{env.name}: {line} (editable installs resolve against Snakemake's prefix)"
            continue
        name, _, version = line.partition("==")
        assert version, f"{env.name}: {line} is not pinned"
        out[name.lower()] = version
    return out


def test_the_envs_pin_every_dependency_of_the_package():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps}
    for env in ("saca.yaml", "train.yaml"):
        got = pins(REPO / "envs" / env)
        assert names <= set(got), (env, sorted(names - set(got)))
    assert pins(REPO / "envs" / "train.yaml")["deepspeed"] == "0.19.8"


def test_every_rule_with_a_command_has_a_conda_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        blocks = re.split(r"\n\s*(?=rule\b)", smk.read_text())
        for block in blocks[1:]:
            name = re.match(r"rule\s*(\w*)", block).group(1) or "(loop)"
            if "shell:" in block:
                assert re.search(r"conda:\s*\n\s*\"\.\./\.\./envs/\w+\.yaml\"", block), f"{smk.name}: rule {name}"


def test_jobs_find_the_package_of_this_checkout():
    text = (REPO / "Snakefile").read_text()
    assert 'shell.prefix(f"set -euo pipefail; export PYTHONPATH={SRC}' in text

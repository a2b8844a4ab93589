"""Conda envs of the cluster: pinned, covering the package's dependencies, on every rule; the package on PYTHONPATH.

envs/habitat.yaml's choices (nightly channel, Python, numpy from conda) are explained in docs/vlnce.md.
"""

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


def conda_specs(env: Path) -> dict:
    """The conda (non-pip) dependencies: name -> the rest of the spec ('=3.11', '=0.3.3.*=py3.11_...')."""
    deps = yaml.safe_load(env.read_text())["dependencies"]
    out = {}
    for d in deps:
        if isinstance(d, str):
            name = re.match(r"[A-Za-z0-9_.-]+", d).group(0)
            out[name.lower()] = d[len(name):]
    return out


def _version(v: str) -> tuple:
    return tuple(int(x) for x in v.split("."))


def test_the_habitat_env_pins_every_dependency_and_matches_the_cpu_env():
    """envs/habitat.yaml: saca.yaml's pip pins except numpy, which conda pins inside habitat-sim's range."""
    env = REPO / "envs" / "habitat.yaml"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps}
    pip, conda = pins(env), conda_specs(env)
    assert names <= set(pip) | set(conda), sorted(names - set(pip) - set(conda))
    cpu = pins(REPO / "envs" / "saca.yaml")
    assert "numpy" not in pip, "pip would replace conda's numpy with one habitat-sim's build does not accept"
    assert pip == {k: v for k, v in cpu.items() if k != "numpy"}
    # the nightly builds' run requirement (habitat-sim conda-build/habitat-sim/meta.yaml): numpy>=2.0.0,<2.4;
    # pandas 3.1.1 needs numpy>=2.0.2 (its Requires-Dist)
    numpy = _version(conda["numpy"].lstrip("="))
    assert (2, 0, 2) <= numpy < (2, 4)


def test_the_habitat_env_takes_a_nightly_headless_build_for_its_python():
    """habitat-sim 0.3.3 for Python >= 3.10 exists only on aihabitat-nightly (docs/vlnce.md)."""
    data = yaml.safe_load((REPO / "envs" / "habitat.yaml").read_text())
    assert data["channels"][0] == "aihabitat-nightly" and "aihabitat" not in data["channels"]
    assert "defaults" not in data["channels"] and "nodefaults" in data["channels"]
    conda = conda_specs(REPO / "envs" / "habitat.yaml")
    python = conda["python"].lstrip("=")
    assert python == "3.11"  # torch 2.13.0: >=3.10; pandas, scipy, snakemake, ipykernel of saca.yaml: >=3.11
    version, build = conda["habitat-sim"].lstrip("=").split("=")
    assert version == "0.3.3.*"  # nightly versions are 0.3.3.YYYY.MM.DD; '=0.3.3' with a build is exact
    # matrix_builder.py: py{ver}_[headless_][bullet_]linux_{sha}; the sha: main's 57ee494, the build tested
    assert build == f"py{python}_headless_linux_57ee494*"
    assert pins(REPO / "envs" / "habitat.yaml")["torch"] == pins(REPO / "envs" / "train.yaml")["torch"]


def test_every_rule_with_a_command_has_a_conda_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        blocks = re.split(r"\n\s*(?=rule\b)", smk.read_text())
        for block in blocks[1:]:
            name = re.match(r"rule\s*(\w*)", block).group(1) or "(loop)"
            if "shell:" in block:
                assert re.search(r"conda:\s*\n\s*\"\.\./\.\./envs/\w+\.yaml\"", block), f"{smk.name}: rule {name}"


def test_jobs_find_the_package_of_this_checkout():
    text = (REPO / "Snakefile").read_text()
    assert 'shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(SRC))}' in text  # quoted (issue 25)

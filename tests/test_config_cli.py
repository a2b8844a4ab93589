"""Config errors and the CLI surface."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from saca import SacaError
from saca.cli import build_parser, main
from saca.config import from_dict
from saca.sim.base import SimConfig
from saca.vln_ego.generate import VlnEgoConfig


def test_misspelled_key_is_named_with_a_suggestion():
    with pytest.raises(SacaError, match=r"unknown config key 'sim\.hfvo' \(did you mean 'hfov'\?\)"):
        from_dict(SimConfig, {"hfvo": 90}, "sim")
    with pytest.raises(SacaError, match=r"unknown config key 'vln_ego\.memory\.d3'"):
        from_dict(VlnEgoConfig, {"memory": {"d3": 2}}, "vln_ego")


def test_workflow_schema_rejects_misspelled_keys():
    import jsonschema

    schema = yaml.safe_load(open("src/saca/resources/config.schema.yaml"))
    config = yaml.safe_load(open("config/config.yaml"))
    jsonschema.validate(config, schema)
    config["vln_ego"]["n_action"] = 6
    with pytest.raises(jsonschema.ValidationError, match="n_action"):
        jsonschema.validate(config, schema)


def test_every_command_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"scenes", "episodes", "vln-ego", "export-sharegpt", "preview"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "saca", "scenes", "--params", '{"train": 2, "val_unseen": 1, "romos": [2, 3]}', "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown config key 'scenes.romos' (did you mean 'rooms'?)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()


def test_vln_ego_command_with_unknown_scene_leaves_nothing(mini_world, tmp_path):
    import gzip
    import json
    import shutil

    eps_dir = tmp_path / "episodes"
    shutil.copytree(mini_world["root"] / "mini_r2r" / "episodes", eps_dir)
    p = eps_dir / "val_unseen.json.gz"
    data = json.loads(gzip.decompress(p.read_bytes()))
    data["episodes"][1]["scene_id"] = "embedded/house_777"
    p.write_bytes(gzip.compress(json.dumps(data).encode()))
    out = tmp_path / "ego" / "val_unseen"
    r = subprocess.run(
        [sys.executable, "-m", "saca", "vln-ego", "--episodes", str(eps_dir), "--split", "val_unseen",
         "--scenes", str(mini_world["scenes"]), "--sim", '{"width": 64, "height": 64}',
         "--dataset-config", '{"turn_angle": 15}', "--out", str(out)],
        capture_output=True, text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "house_777" in r.stderr and "does not exist" in r.stderr
    assert not out.exists() and list((tmp_path / "ego").iterdir()) == []


def test_cli_params_are_checked_by_the_workflow_schema(tmp_path):
    # the probes of issue 10: a wrong type and a JSON list ended in TypeErrors inside the trainer / from_dict
    for params, named in (('{"learning_rate": "fast"}', "sft.learning_rate: 'fast' is not of type 'number'"),
                          ("[1,2]", "--params: expected a JSON object"),
                          # issue 25: a float for an integer key, NaN for a number
                          ('{"max_steps": 1e9}', "sft.max_steps: 1000000000.0 is not an integer (write 1000000000)"),
                          ('{"learning_rate": NaN}', "sft.learning_rate: nan is not a finite number")):
        r = subprocess.run(
            [sys.executable, "-m", "saca", "sft", "--init", str(tmp_path / "init"), "--train", str(tmp_path / "t"),
             "--out", str(tmp_path / "run"), "--params", params],
            capture_output=True, text=True,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert named in r.stderr, r.stderr
    # the same section from a --config file goes through the same check
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sft: {learning_rate: fast, mixes: {a: [b]}}\n")
    assert main(["sft", "--init", "x", "--train", "y", "--out", str(tmp_path / "run"), "--config", str(cfg)]) == 2
    assert not (tmp_path / "run").exists()


def test_export_sharegpt_with_a_missing_shard_names_it(tmp_path, capsys):
    from saca.policy.synthetic import make_vln_ego

    split = make_vln_ego(tmp_path / "ego", episodes=3, steps=4, per_shard=1)
    (split / "frames" / "shard-00001.parquet").unlink()
    assert main(["export-sharegpt", "--vln-ego", str(split), "--out", str(tmp_path / "sg")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"VLN-Ego sample ep1:0: frame shard {split / 'frames' / 'shard-00001.parquet'} does not exist" in err
    assert not (tmp_path / "sg").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ego"]


def test_a_killed_vln_ego_leaves_no_temporary_after_the_next_run(mini_world, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "ego" / "train"
    argv = [sys.executable, "-m", "saca", "vln-ego", "--episodes", str(mini_world["root"] / "mini_r2r" / "episodes"),
            "--split", "train", "--scenes", str(mini_world["scenes"]), "--sim", '{"width": 64, "height": 64}',
            "--dataset-config", '{"turn_angle": 15}', "--out", str(out)]
    # kill -9 while it renders into its temporary directory
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.parent.exists() and any(p.name.startswith(".train.tmp-") for p in out.parent.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait() == -signal.SIGKILL, "vln-ego finished before it could be killed"
    left = sorted(p.name for p in out.parent.iterdir())
    # its temporary and its lock on the folder (saca.runlock), both of a process that no longer runs
    assert len(left) == 2 and left[0] == ".train.lock" and left[1].startswith(".train.tmp-") and not out.exists()
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "taking over the lock of pid" in r.stderr
    assert [p.name for p in out.parent.iterdir()] == ["train"]


SECTIONS = [
    ("saca.sim.embedded.world", "SceneGenConfig", "scenes"),
    ("saca.sim.base", "SimConfig", "sim"),
    ("saca.episodes.generate", "DatasetConfig", "datasets.<dataset>"),
    ("saca.vln_ego.generate", "VlnEgoConfig", "vln_ego"),
    ("saca.evaluate.runner", "EvalConfig", "evaluation"),
    ("saca.landmarks", "LandmarkConfig", "landmarks"),
    ("saca.auditor.config", "AuditorConfig", "auditor"),
    ("saca.policy.tiny", "TinyConfig", "policy.init"),
    ("saca.policy.vision_pretrain", "VisionPretrainConfig", "policy.vision_pretrain"),
    ("saca.policy.agent", "PolicyAgentConfig", "policy.agent"),
    ("saca.train.sft", "SftConfig", "sft"),
    ("saca.vln_ego.dagger", "DaggerConfig", "sft.dagger"),
]


@pytest.mark.parametrize("module,name,section", SECTIONS, ids=[s for _, _, s in SECTIONS])
def test_every_section_given_in_full_with_its_defaults_is_accepted(module, name, section):
    # what `asdict(cfg)` writes must come back through the command line's check
    import dataclasses
    import importlib
    import json

    from saca.config import section_from_json, section_schema

    cls = getattr(importlib.import_module(module), name)
    assert section_schema(section) is not None
    cfg = section_from_json(json.dumps(dataclasses.asdict(cls())), cls, section)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(cls())


# keys a rule fills in from another section (n_actions, memory and the image codec come from vln_ego; the agent's
# name and seed from the evaluation), so the schema of the section the user writes does not list them
DERIVED = {"policy.agent": {"n_actions", "memory", "image_format", "jpeg_quality", "name", "seed"}, "sft": {"n_actions"}}


@pytest.mark.parametrize("module,name,section", SECTIONS + [("saca.train.rft", "RftConfig", "rft")],
                         ids=[s for _, _, s in SECTIONS] + ["rft"])
def test_the_dataclass_is_the_one_source_of_defaults_and_the_schema_agrees_with_it(module, name, section):
    # defaults live in the dataclasses only (the schema validates and holds none); every key the schema knows is a
    # field, every field is in the schema unless a rule derives it, and the defaults themselves pass the schema
    import dataclasses
    import importlib

    from saca.config import load_schema, section_schema, strict_validator_class

    cls = getattr(importlib.import_module(module), name)
    node = section_schema(section)
    props = set(node.get("properties", {}))
    fields = {f.name for f in dataclasses.fields(cls)}
    assert props <= fields, f"{section}: schema keys without a field: {sorted(props - fields)}"
    assert fields - props <= DERIVED.get(section, set()), f"{section}: fields the schema does not know: {sorted(fields - props)}"
    defaults = {k: v for k, v in dataclasses.asdict(cls()).items() if k in props}
    if section == "sft":
        defaults.pop("mixes")  # the workflow's mix table (required): no default can name this config's datasets
    schema = {**node, "required": [k for k in node.get("required", []) if k != "mixes"],
              "definitions": load_schema().get("definitions", {})}
    errors = list(strict_validator_class()(schema).iter_errors(defaults))  # an int default for an integer key
    assert not errors, [(list(e.absolute_path), e.message) for e in errors]


def test_the_schema_holds_no_defaults():
    from saca.config import load_schema

    def walk(node, path=""):
        if isinstance(node, dict):
            assert "default" not in node, f"schema default at {path or '/'}: defaults live in the dataclasses"
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(load_schema())

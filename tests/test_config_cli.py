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

    schema = yaml.safe_load(open("workflow/schemas/config.schema.yaml"))
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

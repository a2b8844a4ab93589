"""The audit commands end to end on a small embedded world: evaluate -> landmarks -> audit -> figure."""

from __future__ import annotations

import json

import pytest

from saca.cli import main
from saca.io import read_json, read_jsonl, write_jsonl

SIM = json.dumps({"width": 96, "height": 96, "instance": False, "depth": False})  # the audit turns instance on
DS = json.dumps({"backend": "embedded", "turn_angle": 30, "style": "r2r", "landmarks": [1, 2], "seed": 3,
                 "episodes": {"val_unseen": 6}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    assert main(["scenes", "--params", json.dumps({"train": 1, "val_unseen": 2}), "--out", str(d / "scenes")]) == 0
    assert main(["episodes", "--dataset", "mini", "--split", "val_unseen", "--scenes", str(d / "scenes"),
                 "--sim", SIM, "--dataset-config", DS, "--out", str(d / "episodes")]) == 0
    for agent in ("oracle", "random"):
        assert main(["evaluate", "--dataset-dir", str(d), "--split", "val_unseen", "--scenes", str(d / "scenes"),
                     "--sim", SIM, "--dataset-config", DS, "--agent", agent,
                     "--out", str(d / "eval" / agent)]) == 0
    assert main(["landmarks", "--episodes", str(d / "episodes"), "--split", "val_unseen",
                 "--out", str(d / "landmarks.jsonl")]) == 0
    return d


def _audit_args(d, run, extra=()):
    return ["--episodes", str(d / "episodes"), "--split", "val_unseen", "--eval-dir", str(d / "eval" / run),
            "--landmarks", str(d / "landmarks.jsonl"), "--scenes", str(d / "scenes"), "--sim", SIM,
            "--dataset-config", DS, *extra]


def test_audit_and_figure(world, capsys):
    d = world
    out = d / "audit" / "oracle"
    assert main(["audit", *_audit_args(d, "oracle"), "--group-size", "4", "--components", "--out", str(out)]) == 0
    assert "failed episodes with rho > 0.5" in capsys.readouterr().out
    rows = read_jsonl(out / "audit.jsonl")
    recs = read_jsonl(d / "eval" / "oracle" / "episodes.jsonl")
    assert [r["episode_id"] for r in rows] == [r["episode_id"] for r in recs]  # none dropped, same order
    for row, rec in zip(rows, recs):
        assert row["T"] == len(rec["actions"]) == len(row["s"]) == len(row["components"])
        assert row["mask"] == [1] * row["t_star"] + [0] * (row["T"] - row["t_star"])
    s = read_json(out / "summary.json")
    assert s["episodes"] == len(recs) and s["success"] + s["failed"] == len(recs)
    assert s["cost"]["frames"] == sum(r["T"] for r in rows) and s["cost"]["backend_calls"] >= 1
    # issue 25: a result file holds no timing (the summary is the same bytes on every rerun; times go to the log)
    assert set(s["cost"]) == {"backend", "frames", "pairs_scored", "backend_calls"}
    assert s["auditor"]["tau_hard"] == 0.25
    # the oracle agent walks to every landmark: the auditor grounds most of them
    assert s["mean_reached_fraction"] > 0.5

    out_r = d / "audit" / "random"
    assert main(["audit", *_audit_args(d, "random"), "--out", str(out_r)]) == 0
    sr = read_json(out_r / "summary.json")
    assert sr["failed"] >= 1 and 0.0 <= sr["appendix_a"]["share"] <= 1.0
    assert sr["appendix_a"]["failed"] == sr["failed"]

    png = d / "figure.png"
    assert main(["audit-figure", *_audit_args(d, "oracle"), "--audit", str(out / "audit.jsonl"),
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_audit_bad_inputs(world, tmp_path, capsys):
    d = world
    # a landmarks file that lacks an episode
    rows = read_jsonl(d / "landmarks.jsonl")
    write_jsonl(tmp_path / "lm.jsonl", rows[1:])
    args = _audit_args(d, "oracle")
    args[args.index("--landmarks") + 1] = str(tmp_path / "lm.jsonl")
    assert main(["audit", *args, "--out", str(tmp_path / "a")]) == 2
    assert f"no row for episode {rows[0]['episode_id']!r}" in capsys.readouterr().err
    assert not (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "a" / "audit.jsonl").exists()
    # a record whose positions do not match the replay
    recs = read_jsonl(d / "eval" / "oracle" / "episodes.jsonl")
    recs[0]["positions"][2] = [p + 1.0 for p in recs[0]["positions"][2]]
    (tmp_path / "ev").mkdir()
    write_jsonl(tmp_path / "ev" / "episodes.jsonl", recs)
    args = _audit_args(d, "oracle")
    args[args.index("--eval-dir") + 1] = str(tmp_path / "ev")
    assert main(["audit", *args, "--out", str(tmp_path / "b")]) == 2
    assert "replay diverged at step" in capsys.readouterr().err
    # a misspelled auditor key
    assert main(["audit", *_audit_args(d, "oracle", ["--params", '{"patiense": 3}']), "--out", str(tmp_path / "c")]) == 2
    assert "did you mean 'patience'" in capsys.readouterr().err


def test_audit_expert_is_the_oracle_run_audited_as_failed(world, capsys):
    """``saca audit-expert`` (issue 29): the expert's trajectories, replayed and audited as failures."""
    d = world
    out = d / "audit" / "oracle_plain"
    assert main(["audit", *_audit_args(d, "oracle"), "--out", str(out)]) == 0
    rows = read_jsonl(out / "audit.jsonl")
    # a successful trajectory that never loses grounding has t* = T; as a failure its STOP diverged: t* = T - 1
    rhos = [(r["T"] - 1) / r["T"] if r["t_star"] == r["T"] else r["rho"] for r in rows]
    variants = {"default": {}, "look": {"lookahead": 1, "patience": 0}}
    res = d / "expert.json"
    assert main(["audit-expert", "--episodes", str(d / "episodes"), "--split", "val_unseen",
                 "--landmarks", str(d / "landmarks.jsonl"), "--scenes", str(d / "scenes"), "--sim", SIM,
                 "--dataset-config", DS, "--variants", json.dumps(variants), "--out", str(res)]) == 0
    assert "default: rho > 0.9" in capsys.readouterr().out
    s = read_json(res)
    v = s["variants"]["default"]
    assert v["episodes"] == len(rows)
    assert v["rho_above_0.5"] == sum(x > 0.5 for x in rhos) / len(rhos)
    assert v["rho_above_0.9"] == sum(x > 0.9 for x in rhos) / len(rhos)
    assert s["variants"]["look"]["auditor_changes"] == {"lookahead": 1, "patience": 0}
    assert main(["audit-expert", "--episodes", str(d / "episodes"), "--split", "val_unseen",
                 "--landmarks", str(d / "landmarks.jsonl"), "--scenes", str(d / "scenes"), "--sim", SIM,
                 "--dataset-config", DS, "--variants", "[1]", "--out", str(res)]) == 2
    assert "--variants" in capsys.readouterr().err

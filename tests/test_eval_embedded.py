"""End-to-end evaluation on a small embedded (pybullet) world: reference agents, SIGKILL + resume, CLI errors, plots."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saca import SacaError
from saca.evaluate import runner as R

pytest.importorskip("pybullet")

N_EPISODES = 12
DATASETS = {"mini_r2r": (15, "r2r", [1, 2], 1), "mini_rxr": (30, "rxr", [2, 4], 2)}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """results/-like tree: scenes/ (2 houses) and {dataset}/episodes/val_unseen*.json.gz for both mini datasets."""
    from saca.episodes import write_episodes
    from saca.episodes.generate import DatasetConfig, generate_split
    from saca.io import write_json
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator
    from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

    root = tmp_path_factory.mktemp("results")
    sc = SceneGenConfig(seed=0, train=1, val_unseen=2)
    ids = sc.scene_ids()
    for sid in ids["train"] + ids["val_unseen"]:
        write_json(root / "scenes" / f"{sid}.json", generate_scene(sid, scene_seed(sc.seed, sid), sc))
    write_json(root / "scenes" / "index.json", ids)
    for name, (turn, style, landmarks, seed) in DATASETS.items():
        cfg = DatasetConfig(turn_angle=turn, style=style, landmarks=landmarks, seed=seed,
                            episodes={"val_unseen": N_EPISODES})
        with EmbeddedSimulator(SimConfig(), turn, root / "scenes") as sim:
            eps = generate_split(name, cfg, "val_unseen", ids["val_unseen"], sim)
        write_episodes(root / name / "episodes", "val_unseen", eps)
    return root


def cli(*argv):
    from saca.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def evaluate(world, dataset, agent, *extra, out=None):
    out = out or world / dataset / "eval" / agent / "val_unseen"
    cli("evaluate", "--dataset-dir", world / dataset, "--split", "val_unseen", "--agent", agent,
        "--turn-angle", DATASETS[dataset][0], "--out", out, *extra)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_reference_agents(world, dataset):
    oracle = evaluate(world, dataset, "oracle")
    assert oracle["episodes"] == N_EPISODES
    assert oracle["SR"] >= 0.98 and oracle["SPL"] >= 0.9, oracle
    rand = evaluate(world, dataset, "random")
    fwd = evaluate(world, dataset, "forward")
    assert rand["SR"] < oracle["SR"] and fwd["SR"] < oracle["SR"]
    assert set(rand) == set(fwd) == {"TL", "NE", "OS", "SR", "SPL", "nDTW", "SDTW", "episodes"}


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from saca.episodes import load_split
    from saca.evaluate.agents import RandomAgent
    from saca.evaluate.runner import EvalConfig, evaluate_split
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator

    root, out = sys.argv[1], sys.argv[2]

    class KilledRandom(RandomAgent):
        calls = 0
        def act(self, contexts):
            self.calls += 1
            if self.calls > 40:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().act(contexts)

    eps = load_split(root + "/mini_r2r/episodes", "val_unseen")
    make = lambda: EmbeddedSimulator(SimConfig(), 15, root + "/scenes")
    evaluate_split(eps, make, KilledRandom(seed=0), out, EvalConfig(batch_size=2), "val_unseen", "random")
    """
)


def test_sigkilled_evaluation_resumes(world, tmp_path):
    from saca.episodes import load_split
    from saca.evaluate.agents import RandomAgent
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(world), str(out)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (out / "metrics.json").exists() and not (out / "episodes.jsonl").exists()
    finished = [json.loads(line)["episode_id"] for line in (out / R.JOURNAL).read_text().splitlines()]
    assert 0 < len(finished) < N_EPISODES

    class Counting(RandomAgent):
        started = []

        def reset(self, contexts):
            self.started += [c.episode.episode_id for c in contexts]
            super().reset(contexts)

    eps = load_split(world / "mini_r2r" / "episodes", "val_unseen")
    make = lambda: EmbeddedSimulator(SimConfig(), 15, world / "scenes")  # noqa: E731
    agent = Counting(seed=0)
    res = R.evaluate_split(eps, make, agent, out, R.EvalConfig(batch_size=2), "val_unseen", "random")
    assert res["skipped"] == len(finished) and set(agent.started).isdisjoint(finished)
    full = tmp_path / "full"
    R.evaluate_split(eps, make, RandomAgent(seed=0), full, R.EvalConfig(batch_size=5), "val_unseen", "random")
    for name in (R.EPISODES, R.METRICS, R.RUN):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name


def test_cli_shard_and_merge_equals_unsharded(world, tmp_path):
    whole = evaluate(world, "mini_rxr", "random", out=tmp_path / "whole")
    for i in range(2):
        cli("evaluate", "--dataset-dir", world / "mini_rxr", "--split", "val_unseen", "--agent", "random",
            "--turn-angle", 30, "--out", tmp_path / "sharded", "--shard", f"{i}/2", "--batch-size", 3)
        assert (tmp_path / "sharded" / "shards" / f"{i}-of-2" / "metrics.json").exists()
    cli("eval-merge", "--out", tmp_path / "sharded")
    assert (tmp_path / "sharded" / "metrics.json").read_bytes() == (tmp_path / "whole" / "metrics.json").read_bytes()
    assert (tmp_path / "sharded" / "episodes.jsonl").read_bytes() == (tmp_path / "whole" / "episodes.jsonl").read_bytes()
    assert whole["episodes"] == N_EPISODES


def test_cli_bad_shard_and_checkpoint(world, tmp_path):
    with pytest.raises(SacaError, match="--shard '3/2'"):
        evaluate(world, "mini_r2r", "oracle", "--shard", "3/2", out=tmp_path / "o")
    ckpt = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(SacaError, match=f"agent '{ckpt}'"):
        evaluate(world, "mini_r2r", str(ckpt), out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_missing_scene(world, tmp_path):
    import shutil

    from saca.episodes import load_split, write_episodes

    eps = load_split(world / "mini_r2r" / "episodes", "val_unseen")
    eps[3].scene_id = "embedded/house_999"
    ds = tmp_path / "broken"
    write_episodes(ds / "episodes", "val_unseen", eps)
    shutil.copytree(world / "scenes", tmp_path / "scenes")
    with pytest.raises(SacaError, match=r"episode 3 \(scene 'embedded/house_999'\): unknown scene: .*house_999.json"):
        cli("evaluate", "--dataset-dir", ds, "--split", "val_unseen", "--agent", "oracle", "--turn-angle", 15)
    out = ds / "eval" / "oracle" / "val_unseen"
    assert not (out / "metrics.json").exists() and not (out / "episodes.jsonl").exists()
    assert len((out / R.JOURNAL).read_text().splitlines()) < N_EPISODES  # progress kept for a resume


def test_cli_plots(world, tmp_path):
    evaluate(world, "mini_r2r", "forward", out=tmp_path / "fwd")
    cli("plot-episodes", "--dataset-dir", world / "mini_r2r", "--split", "val_unseen", "--turn-angle", 15,
        "--eval-dir", tmp_path / "fwd", "--out", tmp_path / "plots", "--n", 2)
    pngs = sorted((tmp_path / "plots").glob("episode_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

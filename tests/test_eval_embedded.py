"""End-to-end evaluation on a small embedded (pybullet) world: reference agents, SIGKILL + resume, CLI errors, plots."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from saca.evaluate import runner as R

pytest.importorskip("pybullet")

N_EPISODES = 12
DATASETS = {
    "mini_r2r": {"backend": "embedded", "turn_angle": 15, "style": "r2r", "landmarks": [1, 2], "seed": 1,
                 "episodes": {"val_unseen": N_EPISODES}},
    "mini_rxr": {"backend": "embedded", "turn_angle": 30, "style": "rxr", "landmarks": [2, 4], "seed": 2,
                 "episodes": {"val_unseen": N_EPISODES}},
}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def saca(*argv):
    """``python -m saca ...`` in-process; returns the exit status (2 for a SacaError)."""
    from saca.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A results/ tree made by the workflow's own commands: scenes/ (1 train + 2 held-out houses)
    and {dataset}/episodes/val_unseen*.json.gz for both mini datasets."""
    root = tmp_path_factory.mktemp("results")
    scenes = {"seed": 0, "train": 1, "val_unseen": 2}
    assert saca("scenes", "--params", json.dumps(scenes), "--out", root / "scenes") == 0
    for name, cfg in DATASETS.items():
        assert saca("episodes", "--dataset", name, "--split", "val_unseen", "--scenes", root / "scenes",
                    "--dataset-config", json.dumps(cfg), "--out", root / name / "episodes") == 0
    return root


def evaluate(world, dataset, agent, *extra, out=None):
    out = out or world / dataset / "eval" / agent / "val_unseen"
    rc = saca("evaluate", "--dataset-dir", world / dataset, "--split", "val_unseen", "--agent", agent,
              "--scenes", world / "scenes", "--dataset-config", json.dumps(DATASETS[dataset]), "--out", out, *extra)
    assert rc == 0
    return out


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_reference_agents(world, dataset):
    oracle = metrics(evaluate(world, dataset, "oracle"))
    assert oracle["episodes"] == N_EPISODES
    assert oracle["SR"] >= 0.98 and oracle["SPL"] >= 0.9, oracle
    rand = metrics(evaluate(world, dataset, "random"))
    fwd = metrics(evaluate(world, dataset, "forward"))
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
        evaluate(world, "mini_rxr", "random", "--shard", f"{i}/2", "--batch-size", 3, out=tmp_path / "sharded")
        assert (tmp_path / "sharded" / "shards" / f"{i}-of-2" / "metrics.json").exists()
    assert not (tmp_path / "sharded" / "metrics.json").exists()
    assert saca("eval-merge", "--out", tmp_path / "sharded") == 0
    for name in ("metrics.json", "episodes.jsonl"):
        assert (tmp_path / "sharded" / name).read_bytes() == (whole / name).read_bytes(), name
    assert metrics(whole)["episodes"] == N_EPISODES


def run_cli_error(capsys, *argv):
    assert saca(*argv) == 2
    return capsys.readouterr().err


def test_cli_bad_shard_and_checkpoint(world, tmp_path, capsys):
    common = ("evaluate", "--dataset-dir", world / "mini_r2r", "--split", "val_unseen", "--scenes", world / "scenes",
              "--out", tmp_path / "o")
    err = run_cli_error(capsys, *common, "--agent", "oracle", "--shard", "3/2")
    assert "--shard '3/2': expected i/n with 0 <= i < n" in err
    ckpt = tmp_path / "no" / "such" / "checkpoint"
    err = run_cli_error(capsys, *common, "--agent", ckpt)
    assert f"agent '{ckpt}': not a reference agent" in err
    err = run_cli_error(capsys, *common, "--agent", "oracle", "--dataset-config", json.dumps(DATASETS["mini_rxr"]))
    assert "was made for 15 degree turns, the simulator turns 30 degrees" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_missing_scene(world, tmp_path, capsys):
    from saca.episodes import load_split, write_episodes

    eps = load_split(world / "mini_r2r" / "episodes", "val_unseen")
    eps[3].scene_id = "embedded/house_999"
    ds = tmp_path / "broken"
    write_episodes(ds / "episodes", "val_unseen", eps)
    err = run_cli_error(capsys, "evaluate", "--dataset-dir", ds, "--split", "val_unseen", "--agent", "oracle",
                        "--scenes", world / "scenes", "--batch-size", 1)
    assert "episode 3 (scene 'embedded/house_999'): unknown scene:" in err and "house_999.json does not exist" in err
    out = ds / "eval" / "oracle" / "val_unseen"
    assert not (out / "metrics.json").exists() and not (out / "episodes.jsonl").exists()
    assert 0 < len((out / R.JOURNAL).read_text().splitlines()) < N_EPISODES  # progress kept for a resume


def test_cli_leaderboard_split_is_run_not_scored(world, tmp_path, capsys):
    """A split imported without gt (as R2R-CE test: no goals, no reference path) under its own name."""
    from saca.episodes import load_split, write_episodes

    eps = load_split(world / "mini_r2r" / "episodes", "val_unseen")[:4]
    for e in eps:
        e.goals, e.reference_path, e.gt_actions, e.gt_locations = [], [], None, None
    ds = tmp_path / "lb"
    write_episodes(ds / "episodes", "test", eps)
    common = ("evaluate", "--dataset-dir", ds, "--split", "test", "--scenes", world / "scenes",
              "--dataset-config", json.dumps(DATASETS["mini_r2r"]))
    capsys.readouterr()
    assert saca(*common, "--agent", "forward") == 0
    out = ds / "eval" / "forward" / "test"
    assert capsys.readouterr().out.strip() == (f"test: a leaderboard split (no goals, no ground truth): wrote 4 "
                                               f"trajectories to {out / 'predictions.json'} for the leaderboard; "
                                               "not scored here")
    pred = json.loads((out / "predictions.json").read_text())
    assert sorted(pred) == sorted(str(e.episode_id) for e in eps) and not (out / "metrics.json").exists()
    assert all(steps[-1]["stop"] and not any(s["stop"] for s in steps[:-1]) for steps in pred.values())
    err = run_cli_error(capsys, *common, "--agent", "oracle", "--out", tmp_path / "o")
    assert "has no goals (a leaderboard split, e.g. R2R-CE test)" in err and len(err.strip().splitlines()) == 1
    err = run_cli_error(capsys, *common[:4], "tset", *common[5:], "--agent", "forward")
    assert "--split 'tset': choose one of train, val_seen, val_unseen, or a leaderboard split" in err


def test_cli_plots(world, tmp_path):
    fwd = evaluate(world, "mini_r2r", "forward", out=tmp_path / "fwd")
    assert saca("plot-episodes", "--dataset-dir", world / "mini_r2r", "--split", "val_unseen",
                "--scenes", world / "scenes", "--eval-dir", fwd, "--out", tmp_path / "plots", "--n", 2) == 0
    pngs = sorted((tmp_path / "plots").glob("episode_*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


# --- policy evaluation: one random stream per episode (issue 25) ---------------------------------------------

POLICY_OPTIONS = {"invalid_action": "forward", "image_format": "none", "n_actions": 6,
                  "memory": {"sampler": "long_short", "M": 2, "d1": 1, "d2": 2, "max_frames": 4},
                  "generation": {"do_sample": True, "temperature": 1.0, "max_new_tokens": 24, "seed": 0}}
POLICY_SIM = {"max_steps": 30, "width": 64, "height": 64}  # short episodes


@pytest.fixture(scope="module")
def policy_agent(tmp_path_factory):
    """An agent spec of the tiny policy fine-tuned for 30 steps on synthetic VLN-Ego samples: it writes the
    answer format, so its sampled letters (actions, STOP among them) decide where each episode goes."""
    pytest.importorskip("transformers")
    from saca.config import from_dict
    from saca.policy.agent import PolicyAgentConfig, write_agent_spec
    from saca.policy.synthetic import make_vln_ego
    from saca.policy.tiny import TinyConfig, build_tiny_policy
    from saca.train.sft import SftConfig, SftTrainer

    root = tmp_path_factory.mktemp("policy")
    init = build_tiny_policy(root / "init", TinyConfig(seed=0))
    cfg = SftConfig(learning_rate=1e-2, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=30,
                    save_steps=0, logging_steps=10, seed=0, val_samples=0, device="cpu", warmup_ratio=0.0)
    SftTrainer(init, [make_vln_ego(root / "ego", episodes=4, steps=8, seed=1)], root / "sft", cfg).run()
    return write_agent_spec(root / "agent.json", root / "sft" / "final",
                            from_dict(PolicyAgentConfig, POLICY_OPTIONS, "policy.agent"))


POLICY_KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from saca.episodes import load_split
    from saca.evaluate.agents import make_agent
    from saca.evaluate.runner import EvalConfig, evaluate_split
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator

    root, out, spec, batch, sim, stop_after = sys.argv[1:7]
    agent = make_agent(spec, seed=3)
    act = agent.act
    done = []

    def killing_act(contexts):
        if len(done) >= int(stop_after):
            os.kill(os.getpid(), signal.SIGKILL)
        return act(contexts)

    agent.act = killing_act
    eps = load_split(root + "/mini_r2r/episodes", "val_unseen")
    import saca.evaluate.runner as R
    finish = R._finish
    def counting_finish(*a, **k):
        rec = finish(*a, **k)
        done.append(rec)
        return rec
    R._finish = counting_finish
    make = lambda: EmbeddedSimulator(SimConfig(**json.loads(sim)), 15, root + "/scenes")
    evaluate_split(eps, make, agent, out, EvalConfig(batch_size=int(batch), seed=3), "val_unseen", spec)
    """
)


def _policy_eval(world, spec, out, batch_size, agent=None):
    from saca.episodes import load_split
    from saca.evaluate.agents import make_agent
    from saca.sim.base import SimConfig
    from saca.sim.embedded.sim import EmbeddedSimulator

    eps = load_split(world / "mini_r2r" / "episodes", "val_unseen")
    make = lambda: EmbeddedSimulator(SimConfig(**POLICY_SIM), 15, world / "scenes")  # noqa: E731
    agent = agent or make_agent(str(spec), seed=3)
    return R.evaluate_split(eps, make, agent, out, R.EvalConfig(batch_size=batch_size, seed=3), "val_unseen", str(spec))


@pytest.fixture(scope="module")
def policy_b8(world, policy_agent, tmp_path_factory):
    """The uninterrupted policy evaluation at batch size 8."""
    out = tmp_path_factory.mktemp("policy_eval") / "b8"
    _policy_eval(world, policy_agent, out, 8)
    return out


def test_policy_evaluation_is_the_same_bytes_whatever_the_batch_size(world, policy_agent, policy_b8, tmp_path):
    _policy_eval(world, policy_agent, tmp_path / "b3", 3)
    records = [json.loads(line) for line in (policy_b8 / R.EPISODES).read_text().splitlines()]
    assert len({tuple(r["actions"]) for r in records}) == N_EPISODES  # sampled: every episode its own way
    assert len({r["steps"] for r in records}) > 3 and any(r["stop_called"] for r in records)
    for name in (R.EPISODES, R.METRICS, R.RUN):
        assert (policy_b8 / name).read_bytes() == (tmp_path / "b3" / name).read_bytes(), name


def test_sigkilled_policy_evaluation_resumes_to_the_same_bytes(world, policy_agent, policy_b8, tmp_path):
    """kill -9 after 5 finished episodes of a batch-8 policy evaluation, resume at batch 8: the bytes of an
    uninterrupted run (before issue 25 the resumed episodes drew other random numbers)."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", POLICY_KILL_SCRIPT, str(world), str(out), str(policy_agent), "8",
                           json.dumps(POLICY_SIM), "5"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    finished = (out / R.JOURNAL).read_text().splitlines()
    assert 5 <= len(finished) < N_EPISODES and not (out / R.EPISODES).exists()
    res = _policy_eval(world, policy_agent, out, 8)
    assert res["skipped"] == len(finished)
    for name in (R.EPISODES, R.METRICS, R.RUN):
        assert (out / name).read_bytes() == (policy_b8 / name).read_bytes(), name


def test_an_unfinished_evaluation_of_other_weights_starts_afresh(world, policy_agent, tmp_path, caplog):
    """run.json identifies a policy by the sha256 of its weights (not its path): after the weights changed,
    the unfinished records of the old ones are discarded, not mixed into the new run."""
    import shutil

    from saca.evaluate.agents import make_agent
    from saca.policy.tiny import TinyConfig, build_tiny_policy

    spec = tmp_path / "agent" / "agent.json"
    shutil.copytree(policy_agent.parent, spec.parent)
    out = tmp_path / "eval"
    agent = make_agent(str(spec), seed=3)
    act, calls = agent.act, []

    def interrupted(contexts):
        calls.append(1)
        if len(calls) > 15:
            raise KeyboardInterrupt  # stopped after some episodes
        return act(contexts)

    agent.act = interrupted
    with pytest.raises(KeyboardInterrupt):
        _policy_eval(world, spec, out, 8, agent)
    old_records = (out / R.JOURNAL).read_text().splitlines()
    assert old_records
    old_id = json.loads((out / R.RUN).read_text()).get("agent_id")
    ckpt = spec.parent / "sft" / "final"
    shutil.rmtree(ckpt)
    build_tiny_policy(ckpt, TinyConfig(seed=1))  # retrained: other weights, same path
    with caplog.at_level("WARNING", logger="saca.evaluate.runner"):
        res = _policy_eval(world, spec, out, 8)
    assert res["skipped"] == 0 and res["ran"] == N_EPISODES
    assert "unfinished records are of another agent" in caplog.text and "starting afresh" in caplog.text
    new_id = json.loads((out / R.RUN).read_text())["agent_id"]
    assert new_id != old_id and new_id.startswith("policy:")


def test_a_moved_policy_keeps_its_identity(world, policy_agent, tmp_path):
    """The same weights at another path (a moved checkout) resume the same evaluation."""
    import shutil

    from saca.evaluate.agents import make_agent

    shutil.copytree(policy_agent.parent, tmp_path / "moved")
    a = make_agent(str(policy_agent), seed=3).identity
    b = make_agent(str(tmp_path / "moved" / "agent.json"), seed=3).identity
    assert a == b and a.startswith("policy:")

"""The RL engine: group rollouts, teacher-forced log-probs, the RFT trainer (online and offline), resume, bad input.

The GRPO formulas themselves are tested in test_grpo.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from saca import SacaError  # noqa: E402
from saca.action_text import format_actions  # noqa: E402
from saca.episodes import load_split  # noqa: E402
from saca.policy.agent import PolicyAgentConfig  # noqa: E402
from saca.policy.generate import Generation, SamplingConfig, generate_encoded  # noqa: E402
from saca.policy.model import load_policy  # noqa: E402
from saca.policy.synthetic import make_vln_ego  # noqa: E402
from saca.policy.tiny import TinyConfig, build_tiny_policy  # noqa: E402
from saca.sim import make_simulator  # noqa: E402
from saca.train import rollout as rollout_mod  # noqa: E402
from saca.train.rft import RftConfig, RftTrainer, outcome_reward, resolve_variant, token_logprobs  # noqa: E402
from saca.train.rollout import RolloutEngine, group_outcomes  # noqa: E402
from saca.vln_ego.samplers import MemoryConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
GRPO_ONLY = dict(soft_score=False, afr=False, rr=False)  # the rft base is SACA; plain GRPO switches it off


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "init", TinyConfig(seed=0, image_size=28))


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir)


def agent_cfg(**kw):
    base = dict(memory=MemoryConfig(M=2, d1=1, d2=2, max_frames=4), image_format="none",
                generation=SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=40, seed=0))
    base.update(kw)
    return PolicyAgentConfig(**base)


def scripted_generate(monkeypatch, calls=None):
    """Replace generation with seeded random valid chunks (a random tiny model mostly emits no action)."""

    def fake(policy, encoded, sampling, seed=None, return_logprobs=False, max_batch=None, decoder=None):
        rng = np.random.default_rng(seed)
        if calls is not None:
            calls.append(len(encoded))
        texts, ids, lps = [], [], []
        for _ in encoded:
            acts = [int(a) for a in rng.choice([1, 1, 1, 2, 3], size=6)]
            if rng.random() < 0.15:
                acts[int(rng.integers(6))] = 0
            texts.append(format_actions(acts, 15))
            ids.append([5, 6, 7])
            lps.append([-0.1, -0.2, -0.3])
        return Generation(texts, ids, lps if return_logprobs else None)

    monkeypatch.setattr(rollout_mod, "generate_encoded", fake)


def episodes(world, name, split="train"):
    return load_split(world["root"] / name / "episodes", split)


def make_sim_for(world, counter=None):
    def make(ep):
        if counter is not None:
            counter.append(ep.episode_id)
        return make_simulator("embedded", world["sim"], 15, world["scenes"])

    return make


# --- rollouts ----------------------------------------------------------------------------------

def test_rollout_groups_share_one_simulator_and_batch_every_decision(monkeypatch, mini_world, policy):
    calls, made = [], []
    scripted_generate(monkeypatch, calls)
    eps = episodes(mini_world, "mini_r2r")[:2]
    engine = RolloutEngine(policy, agent_cfg(), make_sim_for(mini_world, made), seed=3)
    trajs = engine.rollout(eps, G=3)
    assert len(made) == 2  # one simulator (one scene load) per group, not per trajectory
    assert [(t.group, t.member) for t in trajs] == [(g, m) for g in range(2) for m in range(3)]
    assert trajs[0].sim is trajs[2].sim and trajs[0].sim is not trajs[3].sim
    # every call holds every trajectory that needs a decision: the first holds all six
    assert calls[0] == 6 and sum(calls) == sum(len(t.decisions) for t in trajs)
    assert len(calls) == max(len(t.decisions) for t in trajs)
    for tr in trajs:
        assert tr.done
        assert [a for d in tr.decisions for a in d.executed] == tr.actions
        assert len(tr.positions) == tr.steps + 1
        assert len(tr.frames) in (tr.steps, tr.steps + 1) and len(tr.frames) >= tr.steps
        assert all(d.step in tr.snapshots for d in tr.decisions)
        assert tr.success == (tr.stopped and tr.distance < 3.0)
        for d in tr.decisions:
            assert d.steps == range(d.step, d.step + len(d.executed))
            if d.executed and d.executed[-1] == 0:
                assert d.steps[-1] == tr.steps - 1  # STOP ends the episode
    out = group_outcomes(trajs)
    assert out["groups"] == 2 and out["mixed_share"] + out["all_failure_share"] + out["all_success_share"] == 1.0


def test_rollouts_are_deterministic_for_a_seed(monkeypatch, mini_world, policy):
    scripted_generate(monkeypatch)
    eps = episodes(mini_world, "mini_rxr")[:1]

    def run(seed):
        engine = RolloutEngine(policy, agent_cfg(), make_sim_for(mini_world), seed=seed)
        return [tr.actions for tr in engine.rollout(eps, G=4)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_snapshots_replay_and_branch_from_a_prefix(monkeypatch, mini_world, policy):
    scripted_generate(monkeypatch)
    ep = episodes(mini_world, "mini_r2r")[1]
    engine = RolloutEngine(policy, agent_cfg(), make_sim_for(mini_world), seed=11)
    tr = max(engine.rollout([ep], G=4), key=lambda t: t.steps)
    assert tr.steps >= 8
    sim = tr.sim
    for step, state in tr.snapshots.items():
        sim.restore(state)
        assert sim.state.position == tr.positions[step]
    t = tr.steps // 2 + 1
    br = engine.branch(tr, t, member=9)
    assert br.actions == tr.actions[:t] and br.positions == tr.positions[: t + 1]
    assert br.state.position == tr.positions[t] and br.state.steps == t and not br.done
    assert br.origin == (tr.group, tr.member, t)
    assert sum(len(d.executed) for d in br.decisions) == t  # the decision spanning t is cut at t
    engine.run([br])
    assert br.done and br.actions[:t] == tr.actions[:t]
    assert [a for d in br.decisions for a in d.executed] == br.actions
    assert len(br.decisions) > sum(1 for d in tr.decisions if d.step < t)  # a new decision at t
    assert br.decisions[sum(1 for d in tr.decisions if d.step < t)].step == t


def test_teacher_forced_logprobs_equal_the_sampling_time_ones(policy):
    proc = policy.processor
    rng = np.random.default_rng(0)
    from saca.prompt import build_prompt

    encs = [proc.encode(build_prompt("Walk past the sofa and stop.", k, 15, 6),
                        [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(k + 1)]) for k in (0, 2, 1)]
    sampling = SamplingConfig(do_sample=True, temperature=0.7, max_new_tokens=12, seed=4)
    gen = generate_encoded(policy, encs, sampling, return_logprobs=True)
    with torch.no_grad():
        lp, mask = token_logprobs(policy.model, proc, encs, gen.token_ids, temperature=0.7)
    for i, ids in enumerate(gen.token_ids):
        assert int(mask[i].sum()) == len(ids)
        assert torch.allclose(lp[i, : len(ids)], torch.tensor(gen.logprobs[i]), atol=1e-4)
        assert float(lp[i, len(ids):].abs().sum()) == 0.0


# --- variants and config -----------------------------------------------------------------------

SECTION = {"G": 8, "beta": 0.04, "generation": {"temperature": 1.0, "max_new_tokens": 48},
           "datasets": ["mini_r2r"], "sft_mix": "r2r_rxr", "runs": ["grpo"], "auditor": {"patience": 6},
           "variants": {"grpo": GRPO_ONLY, "vlnr1": {"mode": "offline", "generation": {"temperature": 0.9}, **GRPO_ONLY},
                        "saca": {}, "global": {"auditor": {"modules": ["global"], "oracle": {"u": 0.5}}}}}
AUDITOR = {"backend": "oracle", "tau_hard": 0.25, "patience": 8, "modules": ["global", "box", "mask"],
           "oracle": {"f0": 0.01, "u": 1.0}, "runs": ["sft"], "splits": ["val_unseen"], "group_size": 8}


def test_variants_are_small_overrides_of_one_base():
    v = resolve_variant(SECTION, "vlnr1", AUDITOR)
    assert v["mode"] == "offline" and v["generation"] == {"temperature": 0.9, "max_new_tokens": 48} and v["G"] == 8
    assert "variants" not in v and "datasets" not in v and "runs" not in v
    # a variant that audits nothing gets no auditor settings: editing the auditor does not rerun it
    assert resolve_variant(SECTION, "grpo", AUDITOR) == {"G": 8, "beta": 0.04, **GRPO_ONLY,
                                                          "generation": {"temperature": 1.0, "max_new_tokens": 48}}
    # SACA's auditor: the top-level section (without the audit rule's keys), the rft overrides, the variant's
    a = resolve_variant(SECTION, "saca", AUDITOR)["auditor"]
    assert a == {"backend": "oracle", "tau_hard": 0.25, "patience": 6, "modules": ["global", "box", "mask"],
                 "oracle": {"f0": 0.01, "u": 1.0}}
    g = resolve_variant(SECTION, "global", AUDITOR)["auditor"]
    assert g["modules"] == ["global"] and g["oracle"] == {"f0": 0.01, "u": 0.5} and g["patience"] == 6
    with pytest.raises(SacaError, match=r"unknown variant 'sacaa'; defined variants: global, grpo, saca, vlnr1"):
        resolve_variant(SECTION, "sacaa")


def test_an_rft_policy_is_evaluated_sampling_as_its_rollouts_did():
    from dataclasses import asdict

    from saca.train.rft import check_variant, eval_agent_settings

    agent = {"n_actions": 6, "generation": {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "seed": 0}}
    # rollout (the default): exactly the sampling the trainer builds from the variant (a partial `generation` gets
    # SamplingConfig's defaults, do_sample False among them), the agent's other keys kept
    v = resolve_variant(SECTION, "vlnr1", AUDITOR)
    assert eval_agent_settings(v, agent) == {"n_actions": 6, "generation": {
        "do_sample": False, "temperature": 0.9, "top_p": 1.0, "top_k": 0, "max_new_tokens": 48, "seed": 0}}
    assert eval_agent_settings(v, agent)["generation"] == asdict(check_variant(SECTION, "vlnr1", AUDITOR).generation)
    assert eval_agent_settings({}, agent)["generation"]["temperature"] == 1.0  # RftConfig's rollout default
    assert agent["generation"]["temperature"] == 0.7  # not modified
    # agent: as the SFT policy is sampled; a variant may choose it
    section = {**SECTION, "variants": {**SECTION["variants"], "grpo_agent": {**GRPO_ONLY, "eval_sampling": "agent"}}}
    assert eval_agent_settings(resolve_variant(section, "grpo_agent"), agent) == agent
    with pytest.raises(SacaError, match=r"rft.eval_sampling: 'greedy' is not one of rollout, agent"):
        eval_agent_settings({"eval_sampling": "greedy"}, agent)
    # validation (Fig. 5) samples the same way; the setting changes no training step, so checkpoints still resume
    a07 = SamplingConfig(do_sample=True, temperature=0.7)
    assert RftConfig().eval_generation(a07).temperature == 1.0
    assert RftConfig(eval_sampling="agent").eval_generation(a07) is a07
    assert RftConfig(eval_sampling="agent").fingerprint_dict() == RftConfig().fingerprint_dict()
    with pytest.raises(SacaError, match=r"rft.eval_sampling: 'greedy' is not one of rollout, agent"):
        RftConfig(eval_sampling="greedy").validate("rft")


def test_the_paper_tables_are_variants_of_the_config():
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    rft = cfg["rft"]
    base = RftConfig(**{k: v for k, v in rft.items() if k not in ("variants", "runs", "datasets", "sft_mix", "generation", "auditor")})
    assert base.soft_score and base.afr and base.rr and (base.G, base.K) == (8, 3)  # the base is SACA (Table S2)
    want = {  # SACA Tables 2-5 (method-notes §3.4) as (key, value) overrides
        "grpo": {"soft_score": False, "afr": False, "rr": False}, "ss": {"afr": False, "rr": False},
        "ss_afr": {"rr": False}, "saca": {},
        "no_align": {"lambda_align": 0.0}, "no_con": {"lambda_con": 0.0}, "no_margin": {"kappa": 1.0},
        "no_negscale": {"eta": 1.0},
        "g4_k3": {"G": 4}, "g16_k3": {"G": 16}, "g8_k1": {"K": 1}, "g8_k5": {"K": 5},
        "global": {"auditor": {"modules": ["global"]}}, "global_box": {"auditor": {"modules": ["global", "box"]}},
    }
    for name, over in want.items():
        assert rft["variants"][name] == over, name
        v = resolve_variant(rft, name, cfg["auditor"])
        from saca.config import from_dict

        from_dict(RftConfig, v, f"rft.variants.{name}")  # every variant is a valid config


def test_group_size_below_two_is_refused_naming_the_key():
    with pytest.raises(SacaError, match=r"rft\.G: must be at least 2"):
        RftConfig(G=1).validate("rft")


# --- the trainer -------------------------------------------------------------------------------

def sim_args(world):
    return {name: (world["sim"], cfg, world["scenes"]) for name, cfg in world["datasets"].items()}


def online_trainer(world, tiny_dir, out, reward=None, **kw):
    base = dict(G=2, groups_per_step=2, max_steps=2, learning_rate=1e-3, eval_steps=1, eval_episodes=1,
                save_steps=1, micro_batch_size=8, device="cpu", seed=5, **GRPO_ONLY,
                generation=SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=40))
    base.update(kw)
    cfg = RftConfig(**base)
    train = {n: episodes(world, n)[:2] for n in world["datasets"]}
    val = {n: episodes(world, n, "val_seen")[:1] for n in world["datasets"]}
    return RftTrainer(tiny_dir, None, out, cfg, agent_cfg(), train, val, sim_args(world), reward=reward)


def token_reward(batch):
    """Rewards from the generated tokens (a random tiny policy never succeeds): groups are mixed, weights move."""
    return [float(sum(sum(s.token_ids) for s in ss) % 2) for ss in batch.samples_of]


def scripted_rewards(first):
    """The outcome rewards ``first`` for the first rollouts collected, the real ones (success) after them."""
    it = iter(first)

    def reward(batch):
        return [next(it, r) for r in outcome_reward(batch)]

    return reward


# the command with the token rewards, through the reward seam of `saca rft` (for the subprocess tests)
REWARD_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_rft import token_reward
from saca.cli import build_parser
from saca.commands.train import cmd_rft
sys.exit(cmd_rft(build_parser().parse_args(sys.argv[1:]), reward=token_reward))
"""


def test_online_grpo_runs_logs_and_writes_the_final_model(mini_world, tiny_dir, tmp_path):
    # update 1: one mixed group, one all-failure group
    tr = online_trainer(mini_world, tiny_dir, tmp_path / "run", reward=scripted_rewards([1.0, 0.0, 0.0, 0.0]))
    before = load_file(Path(tiny_dir) / "model.safetensors")
    summary = tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    first = train[0]
    assert first["collapsed_share"] == 0.5 and first["groups"] == 2 and first["reward_mean"] == 0.25
    assert first["ratio_mean"] == 1.0 and first["clip_frac"] == 0.0  # num_iterations 1: pi_old = pi_theta exactly
    for key in ("success_rate", "mixed_share", "all_failure_share", "pg_loss", "kl", "loss",
                "grad_norm", "tokens_per_s", "env_steps_per_s", "time_rollout", "time_train"):
        assert key in first
    vals = [r for r in rows if r["event"] == "val"]
    assert [r["step"] for r in vals] == [0, 1, 2] and set(vals[0]["val_sr"]) == {"mini_r2r", "mini_rxr"}
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "rft_summary.json").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
    after = load_file(final / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the mixed group trained it
    assert summary["collapsed_share_mean"] == 0.75  # update 2: both groups all-failure


def test_all_collapsed_update_leaves_the_weights_alone(mini_world, tiny_dir, tmp_path):
    # a random tiny policy never succeeds: every group is all-failure and gives no gradient
    tr = online_trainer(mini_world, tiny_dir, tmp_path / "run", max_steps=1, weight_decay=0.0, eval_steps=0, eval_episodes=0)
    tr.run()
    before = load_file(Path(tiny_dir) / "model.safetensors")
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_num_iterations_makes_pi_old_differ_from_pi_theta(mini_world, tiny_dir, tmp_path):
    tr = online_trainer(mini_world, tiny_dir, tmp_path / "run", max_steps=1, num_iterations=3, eval_steps=0,
                        eval_episodes=0, learning_rate=1e-2, reward=token_reward)
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    row = [r for r in rows if r["event"] == "train"][0]
    assert row["ratio_mean"] != 1.0  # the last of 3 optimizer steps on one rollout batch


def test_offline_vlnr1_rft_uses_the_time_decayed_reward(tiny_dir, tmp_path):
    ego = make_vln_ego(tmp_path / "ego", episodes=2, steps=6, seed=1)
    cfg = RftConfig(mode="offline", **GRPO_ONLY, G=4, groups_per_step=2, max_steps=2, learning_rate=1e-3, eval_steps=0,
                    eval_episodes=0, save_steps=0, device="cpu", tdr="time_decayed",
                    generation=SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=40))
    tr = RftTrainer(tiny_dir, None, tmp_path / "run", cfg, agent_cfg(), {}, {}, {}, [ego])
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    assert len(train) == 2 and all("unparseable" in r for r in train)
    assert all(0.0 <= r["reward_mean"] <= sum(0.9**k for k in range(6)) for r in train)


def test_a_reference_of_another_architecture_is_refused_naming_it(mini_world, tiny_dir, tmp_path):
    other = build_tiny_policy(tmp_path / "other", TinyConfig(seed=0, image_size=28, hidden_size=32, num_heads=2))
    cfg = RftConfig(G=2, groups_per_step=1, max_steps=1, device="cpu", **GRPO_ONLY)
    tr = RftTrainer(tiny_dir, other, tmp_path / "run", cfg, agent_cfg(), {"mini_r2r": episodes(mini_world, "mini_r2r")},
                    {}, sim_args(mini_world))
    with pytest.raises(SacaError, match=rf"reference checkpoint {other}.*does not match"):
        tr.run()
    assert not (tmp_path / "run").exists()


def _train_log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_moved_checkout_resumes_and_logs_the_same_fingerprint(monkeypatch, mini_world, tiny_dir, tmp_path, caplog):
    """Issue 25: the resume identity is the content of the weights and data, not their paths."""
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "a" / "init")
    kw = dict(max_steps=2, eval_steps=0, eval_episodes=0)

    def killed(self, summary):
        raise KeyboardInterrupt  # a kill -9 after the last update: the checkpoint of update 1 and the journal

    with monkeypatch.context() as m:
        m.setattr(RftTrainer, "save_final", killed)
        with pytest.raises(KeyboardInterrupt):
            online_trainer(mini_world, tmp_path / "a" / "init", tmp_path / "a" / "run", **kw).run()
    assert (tmp_path / "a" / "run" / "checkpoints" / "step-000001").exists()
    shutil.move(tmp_path / "a", tmp_path / "b")  # the checkout moved
    out = tmp_path / "b" / "run"
    with caplog.at_level("INFO", logger="saca.train.state"):
        online_trainer(mini_world, tmp_path / "b" / "init", out, **kw).run()
    assert "starting afresh" not in caplog.text and f"resumed from {out / 'checkpoints' / 'step-000001'}" in caplog.text
    starts = [r for r in _train_log(out) if r["event"] == "start"]
    assert [s["step"] for s in starts] == [0, 1] and starts[0]["fingerprint"] == starts[1]["fingerprint"]


def test_a_finished_run_whose_final_was_deleted_is_restored_not_retrained(monkeypatch, mini_world, tiny_dir, tmp_path, caplog):
    """Issue 25: Snakemake killed while `rft` ran on and finished; after --unlock the rerun deletes final/ (an
    incomplete output to Snakemake) and runs the job again: it restores the result, it does not train again."""
    import shutil

    out = tmp_path / "run"
    kw = dict(max_steps=2, eval_steps=0, eval_episodes=0)
    first = online_trainer(mini_world, tiny_dir, out, **kw).run()
    final = {p.name: p.read_bytes() for p in (out / "final").iterdir()}
    log_bytes = (out / "train_log.jsonl").read_bytes()
    assert not (out / "checkpoints").exists() and (out / "finished" / "finished.json").exists()
    shutil.rmtree(out / "final")  # what Snakemake does before it reruns an incomplete job

    def no_training(self, update):
        raise AssertionError("trained again")

    with monkeypatch.context() as m, caplog.at_level("WARNING", logger="saca.train.state"):
        m.setattr(RftTrainer, "update", no_training)
        again = online_trainer(mini_world, tiny_dir, out, **kw).run()
    assert again == first
    assert {p.name: p.read_bytes() for p in (out / "final").iterdir()} == final
    assert (out / "train_log.jsonl").read_bytes() == log_bytes
    assert f"{out / 'final'}: restored the finished result" in caplog.text
    # other settings: trained again (and the kept result replaced by the new one)
    shutil.rmtree(out / "final")
    online_trainer(mini_world, tiny_dir, out, **{**kw, "learning_rate": 5e-3}).run()
    assert json.loads((out / "final" / "rft_summary.json").read_text())["config"]["learning_rate"] == 5e-3


def test_non_finite_loss_stops_with_the_last_good_checkpoint_named(monkeypatch, mini_world, tiny_dir, tmp_path):
    from saca.train import grpo

    real = grpo.grpo_loss
    tr = online_trainer(mini_world, tiny_dir, tmp_path / "run", max_steps=3, eval_steps=0, eval_episodes=0,
                        reward=token_reward)
    orig_update = RftTrainer.update
    current = {"u": 0}

    def update(self, u):
        current["u"] = u
        return orig_update(self, u)

    def poisoned(*a, **kw):
        loss, st = real(*a, **kw)
        return (loss * float("nan"), st) if current["u"] == 2 else (loss, st)

    monkeypatch.setattr(grpo, "grpo_loss", poisoned)
    monkeypatch.setattr(RftTrainer, "update", update)
    with pytest.raises(SacaError, match=r"rft update 3 .*not finite.*last good checkpoint: .*step-000002"):
        tr.run()
    assert (tmp_path / "run" / "checkpoints" / "step-000002").exists()
    assert not (tmp_path / "run" / "final").exists()


# --- the command: kill -9 and resume, torchrun ---------------------------------------------------

def _cli(args, env_extra=None, nproc=None, rewards=False, tmp=None):
    """``python -m saca ARGS`` (or under torchrun); ``rewards``: ``saca rft`` with :func:`token_reward`."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    entry = ["-m", "saca"]
    if rewards:
        script = Path(tmp) / "saca_rft_with_token_rewards.py"
        script.write_text(REWARD_SCRIPT.format(tests=str(REPO / "tests")))
        entry = [str(script)]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *entry, *args]
    else:
        cmd = [sys.executable, *entry, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _online_args(world, tiny_dir, out, **params):
    p = dict(G=2, groups_per_step=2, max_steps=3, learning_rate=1e-3, eval_steps=0, eval_episodes=0, save_steps=1, **GRPO_ONLY,
             micro_batch_size=8, device="cpu", seed=3, generation={"do_sample": True, "temperature": 1.5, "max_new_tokens": 40})
    p.update(params)
    ds = {n: {"backend": "embedded", "turn_angle": c.turn_angle, "style": c.style, "landmarks": c.landmarks,
              "seed": c.seed, "episodes": c.episodes} for n, c in world["datasets"].items()}
    agent = {"memory": {"sampler": "long_short", "M": 2, "d1": 1, "d2": 2, "max_frames": 4}, "image_format": "none"}
    return ["rft", "--init", str(tiny_dir), "--out", str(out), "--data", *[f"{n}={world['root'] / n}" for n in ds],
            "--datasets", json.dumps(ds), "--scenes", str(world["scenes"]),
            "--sim", json.dumps({"width": 64, "height": 64}), "--agent", json.dumps(agent), "--params", json.dumps(p)]


def test_killed_run_resumes_to_identical_weights(mini_world, tiny_dir, tmp_path):
    full = _cli(_online_args(mini_world, tiny_dir, tmp_path / "full"), rewards=True, tmp=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _cli(_online_args(mini_world, tiny_dir, tmp_path / "killed"), {"SACA_TEST_KILL_AFTER_STEP": "2"},
                  rewards=True, tmp=tmp_path)
    assert killed.returncode == -9
    assert (tmp_path / "killed" / "checkpoints" / "step-000002").exists() and not (tmp_path / "killed" / "final").exists()
    resumed = _cli(_online_args(mini_world, tiny_dir, tmp_path / "killed"), rewards=True, tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(Path(tiny_dir) / "model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a)  # the run did train
    rows = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]


def test_unknown_variant_and_missing_checkpoint_are_named(tmp_path, tiny_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rft:\n  variants: {grpo: {}, vlnr1: {mode: offline}}\n")
    r = _cli(["rft", "--init", str(tiny_dir), "--out", str(tmp_path / "o"), "--config", str(cfg), "--variant", "saca"])
    assert r.returncode == 2 and "unknown variant 'saca'; defined variants: grpo, vlnr1" in r.stderr
    r = _cli(["rft", "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--params", "{}"])
    assert r.returncode == 2 and f"--init {tmp_path / 'nope'}" in r.stderr
    r = _cli(["rft", "--init", str(tiny_dir), "--out", str(tmp_path / "o"), "--params", json.dumps({"G": 1})])
    assert r.returncode == 2 and "rft.G" in r.stderr
    assert not (tmp_path / "o").exists()


def test_two_process_gradient_equals_one_process(tiny_dir, tmp_path):
    """torchrun with gloo: 2 ranks x 1 group give the first-update gradient of 1 rank x 2 groups."""
    ego = make_vln_ego(tmp_path / "ego", episodes=2, steps=6, seed=1)

    def args(out, B):
        p = dict(mode="offline", **GRPO_ONLY, G=4, groups_per_step=B, max_steps=1, eval_steps=0, eval_episodes=0, save_steps=0,
                 device="cpu", seed=2, learning_rate=1e-3, micro_batch_size=3,
                 generation={"do_sample": True, "temperature": 1.5, "max_new_tokens": 40})
        agent = {"memory": {"sampler": "long_short", "M": 8, "d1": 1, "d2": 4, "max_frames": 16}}
        return ["rft", "--init", str(tiny_dir), "--out", str(out), "--vln-ego", str(ego), "--agent", json.dumps(agent),
                "--params", json.dumps(p)]

    one = _cli(args(tmp_path / "one", 2), {"SACA_TEST_DUMP_GRAD": str(tmp_path / "g1.safetensors")}, rewards=True, tmp=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(args(tmp_path / "two", 1), {"SACA_TEST_DUMP_GRAD": str(tmp_path / "g2.safetensors")}, nproc=2,
               rewards=True, tmp=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    g1, g2 = load_file(tmp_path / "g1.safetensors"), load_file(tmp_path / "g2.safetensors")
    total = sum(float(v.abs().sum()) for v in g1.values())
    assert total > 0  # the groups were not collapsed
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-5, atol=1e-7), k


def test_groups_of_different_episodes_can_share_one_simulator(monkeypatch, mini_world, policy):
    scripted_generate(monkeypatch)
    a, b = episodes(mini_world, "mini_r2r")[:2]
    assert a.goal_position != b.goal_position
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    engine = RolloutEngine(policy, agent_cfg(), make_sim=None, seed=5)
    trajs = engine.start_group(a, 2, group=0, sim=sim) + engine.start_group(b, 2, group=1, sim=sim)
    engine.run(trajs)
    for tr in trajs:
        assert tr.distance == pytest.approx(sim.geodesic_distance(tr.positions[-1], tr.episode.goal_position))


@pytest.mark.parametrize("kw", [{"kl_mode": "reward"}, {"loss_aggregation": "sequence_mean"}])
def test_collapse_is_decided_on_task_rewards_in_every_mode(mini_world, tiny_dir, tmp_path, kw):
    # one mixed group, one all-failure group
    tr = online_trainer(mini_world, tiny_dir, tmp_path / "run", max_steps=1, eval_steps=0, eval_episodes=0,
                        reward=scripted_rewards([1.0, 0.0, 0.0, 0.0]), **kw)
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    row = [r for r in rows if r["event"] == "train"][0]
    # the KL penalty must not give the all-failure group a spread (and so a gradient)
    assert row["collapsed_share"] == 0.5 and np.isfinite(row["loss"]) and row["grad_norm"] > 0

"""SACA (§3.2-3.3, Eq. 4-13): group construction on hand-computed groups, repair, rescue, the trainer's SACA update,
equivalence with GRPO when every switch is off, the foundation backend in the loop, kill and resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from saca import SacaError
from saca.train.saca import (
    SacaSwitches,
    contrastive_correction,
    hard_negative_scores,
    kept_tokens,
    lcs_length,
    letter_token_variant,
    margin_rescue,
    near_misses,
    negative_only_scaling,
    option_letter_positions,
    plan_group,
    process_advantages,
    pseudo_anchor,
    reflection_advantages,
    route_group,
    select_hard_negatives,
    shaped_rewards,
)

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
A, B, C, D = 1, 2, 3, 0  # forward, left, right, stop (saca.sim.base.Action)


# --- pure functions, hand-computed -----------------------------------------------------------------

def test_routing_mixed_and_all_failure():
    assert route_group([False, True, False]) == "mixed"
    assert route_group([True, True]) == "mixed"  # an all-success group contains successes: its soft scores may differ
    assert route_group([False, False]) == "all_failure"
    with pytest.raises(SacaError):
        route_group([])


def test_soft_score_rewards_of_a_mixed_group():
    assert shaped_rewards([1, 0, 0], [0.2, 0.5, 0.1], 1.0, True).tolist() == pytest.approx([1.2, 0.5, 0.1])
    assert shaped_rewards([1, 0, 0], [0.2, 0.5, 0.1], 2.0, True).tolist() == pytest.approx([1.4, 1.0, 0.2])
    assert shaped_rewards([1, 0, 0], [0.2, 0.5, 0.1], 1.0, False).tolist() == [1.0, 0.0, 0.0]


def test_near_miss_selection_at_the_rho_boundary():
    success = [False, False, True, False, False]
    rho = [0.5, 0.5001, 0.9, 0.7, 0.2]
    assert near_misses(success, rho, 0.5) == [1, 3]  # rho > 0.5 strictly; successes are never near-misses
    assert near_misses(success, rho, 0.49) == [0, 1, 3]


def test_pseudo_anchor_breaks_ties_by_length_then_index():
    assert pseudo_anchor([0.3, 0.5, 0.5, 0.1], [10, 12, 15, 20]) == 2  # tie on P: the longer trajectory
    assert pseudo_anchor([0.3, 0.5, 0.5, 0.1], [10, 15, 15, 20]) == 1  # tie on P and length: the lower index
    assert pseudo_anchor([0.0, 0.0], [3, 7]) == 1


def test_lcs_and_hard_negative_ranking():
    assert lcs_length([A, A, B, C, D], [A, B, B, C, D]) == 4
    assert lcs_length([], [A]) == 0 and lcs_length([A, B], [B, A]) == 1
    anchor = [A, A, B, A, D]
    acts = [anchor, [A, A, B, A, D], [C, C, C], [A, B, A], [A, A, B, A, D, A, A, A, A, A]]
    P = [0.6, 0.1, 0.4, 0.0, 0.3]
    H = hard_negative_scores(acts, 0, P, lambda_hn=0.5)
    assert math.isnan(H[0])
    # LCS / max(len): 5/5, 0/5, 3/5, 5/10; plus 0.5 * P
    assert H[1:] == pytest.approx([1.05, 0.2, 0.6, 0.65])
    assert select_hard_negatives(H, 0, 2) == [1, 4]
    assert select_hard_negatives(H, 0, 3) == [1, 4, 3]
    assert select_hard_negatives(H, 0, 9) == [1, 4, 3, 2]  # k capped at G - 1
    assert select_hard_negatives([float("nan"), 0.5, 0.5], 0, 1) == [1]  # a tie goes to the lower index


def test_process_advantages_margin_above_delta_and_negative_only_scaling():
    # Eq. 8: P_S = [0.5, 0.3, 0.1]: mean 0.3, std sqrt(0.08/3) = 0.1632993
    adv = process_advantages([0.5, 0.3, 0.1], eps=0.0)
    assert adv.tolist() == pytest.approx([1.2247449, 0.0, -1.2247449])
    # Eq. 9-10: Delta = 0.5 - 0.3 = 0.2 >= delta 0.1: no rescue
    a, margin, rescued = margin_rescue(adv, 0.5, [0.3, 0.1], delta=0.1, kappa=0.5)
    assert margin == pytest.approx(0.2) and not rescued and a.tolist() == pytest.approx(adv.tolist())
    # Eq. 11: negatives halved, the rest unchanged
    assert negative_only_scaling(a, 0.5).tolist() == pytest.approx([1.2247449, 0.0, -0.6123724])
    full, info = reflection_advantages([0.5, 0.3, 0.1], delta=0.1, kappa=0.5, eta=0.5, eps=0.0)
    assert full.tolist() == pytest.approx([1.2247449, 0.0, -0.6123724]) and info == {"margin": pytest.approx(0.2), "rescued": False}


def test_margin_below_delta_rescales_every_advantage_by_kappa():
    # P_S = [0.5, 0.45, 0.1]: mean 0.35, std sqrt(0.095/3) = 0.1779513; Delta = 0.05 < 0.1
    full, info = reflection_advantages([0.5, 0.45, 0.1], delta=0.1, kappa=0.5, eta=0.5, eps=0.0)
    assert info["rescued"] and info["margin"] == pytest.approx(0.05)
    # [0.842927, 0.561951, -1.404878] * kappa 0.5, then the negative one * eta 0.5
    assert full.tolist() == pytest.approx([0.4214634, 0.2809756, -0.3512195], rel=1e-6)
    no_margin, _ = reflection_advantages([0.5, 0.45, 0.1], delta=0.1, kappa=1.0, eta=1.0, eps=0.0)  # Table 3 rows
    assert no_margin.tolist() == pytest.approx([0.8429272, 0.5619515, -1.4048787], rel=1e-6)
    assert process_advantages([0.2, 0.2, 0.2]).tolist() == [0.0, 0.0, 0.0]


def test_contrastive_correction_is_the_pairwise_logistic_loss():
    torch = pytest.importorskip("torch")
    assert contrastive_correction(-0.5, -1.5) == pytest.approx(math.log1p(math.exp(-1.0)))  # 0.3132617
    assert contrastive_correction(-1.5, -0.5) == pytest.approx(math.log1p(math.exp(1.0)))
    t = torch.tensor([-0.5], requires_grad=True)
    loss = contrastive_correction(t, torch.tensor([-1.5]))
    loss.sum().backward()
    assert float(loss.detach()) == pytest.approx(0.3132617, abs=1e-6)
    assert float(t.grad) == pytest.approx(-(1 - 1 / (1 + math.exp(-1.0))), abs=1e-6)  # raises logp(a*)


SW = SacaSwitches(soft_score=True, afr=True, rr=True, rho=0.5, lambda_hn=0.5, n_hard_negatives=2, delta=0.1,
                  kappa=0.5, eta=0.5, adv_eps=0.0)


def test_plan_of_a_mixed_group():
    plan = plan_group([True, False, False, False], [0.4, 0.3, 0.1, 0.2], [1.0, 0.8, 0.2, 0.6],
                      [[A, D]] * 4, SW)
    assert plan.scenario == "mixed" and plan.grpo == [0, 1, 2, 3] and plan.advantages == {}
    assert plan.rewards == pytest.approx([1.4, 0.3, 0.1, 0.2])
    assert plan.near_miss == [1, 3] and plan.roles == ["successful", "near_miss", "failed", "near_miss"]
    off = plan_group([True, False], None, None, [[A], [A]], SacaSwitches())  # plain GRPO: no audit needed
    assert off.rewards == [1.0, 0.0] and off.near_miss == []


def test_plan_of_an_all_failure_group_with_and_without_afr():
    acts = [[A, A, B, D], [A, A, B, C], [C, C, D], [A, A, D], [B, B, B, B]]
    P = [0.5, 0.5, 0.1, 0.3, 0.45]
    plan = plan_group([False] * 5, P, [0.2] * 5, acts, SW)
    assert plan.anchor == 0  # tie on P with member 1 (both length 4): lower index
    # H: 1: LCS 3/4 + 0.25 = 1.0; 2: 1/4 + 0.05 = 0.3; 3: 3/4 + 0.15 = 0.9; 4: 1/4 + 0.225 = 0.475
    assert plan.hn_scores[1:] == pytest.approx([1.0, 0.3, 0.9, 0.475])
    assert plan.negatives == [1, 3] and plan.grpo == [0, 1, 3]
    assert plan.roles == ["anchor", "hard_negative", "discarded", "hard_negative", "discarded"]
    adv, info = reflection_advantages([0.5, 0.5, 0.3], 0.1, 0.5, 0.5, 0.0)
    assert info["rescued"] and plan.rescued and plan.margin == pytest.approx(0.0)  # Delta = 0.5 - 0.5
    assert [plan.advantages[j] for j in (0, 1, 3)] == pytest.approx(adv.tolist())
    off = plan_group([False] * 5, P, [0.2] * 5, acts, replace(SW, afr=False))
    assert off.rewards == [0.0] * 5 and off.roles == ["discarded"] * 5 and off.anchor is None  # collapses in GRPO


# --- decision tokens -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("torch")
    from saca.policy.tiny import TinyConfig, build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "init", TinyConfig(seed=0, image_size=28))


@pytest.fixture(scope="module")
def policy(tiny_dir):
    from saca.policy.model import load_policy

    return load_policy(tiny_dir)


def test_option_tokens_of_a_chunk(policy):
    from saca.action_text import format_actions

    tok = policy.processor.tokenizer
    ids = tok(format_actions([A, B, C, D], 15), add_special_tokens=False)["input_ids"]
    # 'A' '.' ' Move' ' forward' ' 25' ' cm' ',' ' B' '.' ' Turn' ' left' ' 15' ' degrees' ',' ' C' ...
    pos = option_letter_positions(tok, ids)
    assert pos == [0, 7, 14, 21] and [tok.decode([ids[p]]).strip() for p in pos] == ["A", "B", "C", "D"]
    assert kept_tokens(tok, ids, 1) == 6  # "A. Move forward 25 cm" without the separator
    assert tok.decode(ids[: kept_tokens(tok, ids, 2)]) == "A. Move forward 25 cm, B. Turn left 15 degrees"
    assert kept_tokens(tok, ids, 4) == len(ids) and kept_tokens(tok, ids, 0) == 0
    assert kept_tokens(tok, tok("no actions here", add_special_tokens=False)["input_ids"], 1) == 0
    d_id = letter_token_variant(tok, ids[7], "D")  # ' B' -> ' D', the same form (leading space)
    assert tok.decode([d_id]) == " D" and tok.decode([letter_token_variant(tok, ids[0], "C")]) == "C"


# --- the rollout engine: repair is real ------------------------------------------------------------

def _teacher_chunk(sim, n):
    """The shortest-path teacher's next n actions from the simulator's state (state restored)."""
    snap = sim.snapshot()
    out = []
    for _ in range(n):
        a = int(sim.teacher_action())
        out.append(a)
        if a == D or sim.episode_over:
            break
        sim.step(a)
    sim.restore(snap)
    return out


def scripted_decide(monkeypatch, wander_after=None, n=3):
    """Replace the policy's decisions with the teacher's chunks, as real action text and tokens.

    ``wander_after(tr)``: the step from which an original trajectory turns left in place (its first decision
    at or after it) until step ``+ 12`` and stops; ``"near"``: from its first decision within 4 m of the goal;
    None: follow the teacher to the goal. Branches (repairs) follow the teacher."""
    from saca.action_text import format_actions
    from saca.prompt import build_prompt
    from saca.train import rollout as rollout_mod
    from saca.train.rollout import Decision

    def decide(self, need):
        tok = self.policy.processor.tokenizer
        for tr in need:
            self._bind(tr)
            t = tr.steps
            w = None if (tr.origin is not None or wander_after is None) else wander_after(tr)
            if w == "near":  # wander from the first decision within 4 m of the goal: a near-miss
                if getattr(tr, "wander_from", None) is None and tr.sim.distance_to_goal() < 4.0:
                    tr.wander_from = t
                w = getattr(tr, "wander_from", None)
            if w is not None and t >= w:
                chunk = [D] if t >= w + 12 else [B] * min(n, w + 12 - t)
            else:
                chunk = _teacher_chunk(tr.sim, n)
            text = format_actions(chunk, tr.sim.turn_angle)
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            tr.queue = list(chunk)
            tr.decisions.append(Decision(step=t, history=[], prompt="", token_ids=ids, logprobs=[-0.1] * len(ids),
                                         text=text, status="valid", actions=list(chunk),
                                         encoded=self._encode(tr, [], build_prompt(tr.episode.instruction_text, 0,
                                                                                   tr.sim.turn_angle, n))))
            self.calls += 1

    monkeypatch.setattr(rollout_mod.RolloutEngine, "decide", decide)


def _engine(policy, mini_world, audit=True):
    from saca.policy.agent import PolicyAgentConfig
    from saca.policy.generate import SamplingConfig
    from saca.sim import make_simulator
    from saca.train.rollout import RolloutEngine
    from saca.vln_ego.samplers import MemoryConfig

    cfg = PolicyAgentConfig(memory=MemoryConfig(M=2, d1=1, d2=2, max_frames=4), image_format="none", n_actions=3,
                            generation=SamplingConfig(do_sample=True, max_new_tokens=40))
    sim_cfg = replace(mini_world["sim"], instance=True)
    return RolloutEngine(policy, cfg, lambda ep: make_simulator("embedded", sim_cfg, 15, mini_world["scenes"]),
                         audit_frames=audit)


def _episode(mini_world, name="mini_r2r", split="train", k=0):
    from saca.episodes import load_split

    return load_split(mini_world["root"] / name / "episodes", split)[k]


def test_repair_restores_the_simulator_at_the_divergence_step(monkeypatch, mini_world, policy):
    scripted_decide(monkeypatch, wander_after=lambda tr: 6)
    eng = _engine(policy, mini_world)
    ep = _episode(mini_world)
    [orig] = eng.rollout([ep], 1)
    assert not orig.success and orig.steps == 6 + 12 + 1 and orig.actions[-1] == D
    t = 7
    rep = eng.branch(orig, t)
    eng.run([rep])
    assert rep.success and rep.origin == (orig.group, orig.member, t)
    assert rep.actions[:t] == orig.actions[:t] and rep.actions[t:] != orig.actions[t:]
    # the prefix is the original's, frame for frame: the policy's frames and the auditor's observations
    for a, b in zip(orig.frames[:t], rep.frames[:t]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(orig.audit[:t], rep.audit[:t]):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.instance, b.instance) and a.labels == b.labels
    assert len(rep.audit) == rep.steps and len(orig.audit) == orig.steps
    # and the suffix starts where the prefix ended: the frame at t re-rendered from the restored state
    assert np.array_equal(orig.audit[t].rgb, rep.audit[t].rgb)
    assert rep.positions[: t + 1] == orig.positions[: t + 1]


# --- the trainer: splicing, anchors, the SACA update -----------------------------------------------

def _trainer(mini_world, tiny_dir, out, landmarks=None, **kw):
    from saca.policy.agent import PolicyAgentConfig
    from saca.policy.generate import SamplingConfig
    from saca.train.rft import RftConfig, RftTrainer
    from saca.vln_ego.samplers import MemoryConfig

    base = dict(G=4, groups_per_step=2, max_steps=1, learning_rate=1e-3, eval_steps=0, eval_episodes=0, save_steps=0,
                micro_batch_size=8, device="cpu", seed=5, beta=0.04,
                generation=SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=40))
    base.update(kw)
    cfg = RftConfig(**base)
    train = {"mini_r2r": [_episode(mini_world, k=k) for k in range(2)]}
    sim_args = {n: (mini_world["sim"], c, mini_world["scenes"]) for n, c in mini_world["datasets"].items()}
    agent = PolicyAgentConfig(memory=MemoryConfig(M=2, d1=1, d2=2, max_frames=4), image_format="none", n_actions=3)
    lms = landmarks if landmarks is not None else {"mini_r2r": _landmarks(train["mini_r2r"])}
    return RftTrainer(tiny_dir, None, out, cfg, agent, train, {}, sim_args, landmarks=lms)


def _landmarks(episodes):
    from saca.landmarks import LandmarkConfig, extract_split

    return {r["episode_id"]: r["landmarks"] for r in extract_split(episodes, LandmarkConfig())}


def _fake_audit(monkeypatch, by_member):
    """Audit results chosen per member index: by_member[m] = (P, t_star)."""
    from saca.auditor.auditor import AuditResult, Auditor

    def audit_group(self, trajectories):
        out = []
        for k, tr in enumerate(trajectories):
            T = len(tr.frames)
            P, t_star = by_member[k % len(by_member)]
            t_star = min(t_star, T)
            out.append(AuditResult(T=T, landmarks=list(tr.landmarks), s=[0.0] * T, active=[0] * T, hard=[False] * T,
                                   mask=[1] * t_star + [0] * (T - t_star), t_star=t_star, rho=t_star / max(T, 1), P=P,
                                   reached=0, max_gap=0, transitions=[], success=tr.success))
        return out

    monkeypatch.setattr(Auditor, "audit_group", audit_group)


def test_repair_splicing_gives_prefix_and_suffix_samples(monkeypatch, mini_world, tiny_dir, tmp_path, policy):
    from saca.train.rft import alignment_samples, repair_samples

    scripted_decide(monkeypatch, wander_after=lambda tr: 6, n=3)
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run")
    tr.setup()
    eng = _engine(tr.policy, mini_world)
    [orig] = eng.rollout([_episode(mini_world)], 1)
    # decisions of 3 actions: steps 0-2, 3-5 (the teacher's), 6-8 (B B B, cut at t* = 7 after one action), ...
    t_star = 7
    rep = eng.branch(orig, t_star)
    eng.run([rep])
    assert rep.success
    tok = tr.proc.tokenizer
    samples = repair_samples(tok, rep)
    texts = [tok.decode(s.token_ids, skip_special_tokens=True) for s in samples]
    pre = [d for d in orig.decisions if d.step < t_star]
    assert [d.step for d in pre] == [0, 3, 6]
    # the prefix's whole decisions as generated, the cut one with its executed option only, then the suffix's
    assert texts[0] == pre[0].text and texts[1] == pre[1].text
    from saca.action_text import format_actions

    assert texts[2] == format_actions(pre[2].executed[:1], 15)
    assert texts[3:] == [d.text for d in rep.decisions if d.step >= t_star]
    assert sum(len(d.executed) for d in rep.decisions) == rep.steps
    # L_align's samples on the valid prefix [0, t*): the same two whole decisions and the cut one
    align = alignment_samples(tok, orig, t_star)
    assert [tok.decode(s.token_ids, skip_special_tokens=True) for s in align] == texts[:3]


def _decision(tok, step, chunk, executed, status="valid"):
    from saca.action_text import format_actions
    from saca.train.rollout import Decision

    text = format_actions(chunk, 15)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Decision(step=step, history=[], prompt="", token_ids=ids, logprobs=None, text=text, status=status,
                    actions=list(chunk), executed=list(executed))


def test_cloning_keeps_only_the_actions_executed_before_the_cut(policy):
    """execute_actions 2: each decision names 3 options and runs 2 before re-planning; the last one stops early."""
    from saca.action_text import format_actions
    from saca.train.rft import alignment_samples, repair_samples
    from saca.train.rollout import Trajectory

    tok = policy.processor.tokenizer
    tr = Trajectory(episode=None, group=0, member=0, actions=[A, B, C, C, A, D], decisions=[
        _decision(tok, 0, [A, B, C], [A, B]), _decision(tok, 2, [C, C, A], [C, C]),
        _decision(tok, 4, [A, D, A], [A, D])])
    text = lambda samples: [tok.decode(s.token_ids, skip_special_tokens=True) for s in samples]  # noqa: E731
    # L_align on [0, t* = 3): the first decision's two executed options (not its third, never executed and
    # naming step 2, which the second decision planned again), the second decision's first option only
    assert text(alignment_samples(tok, tr, 3)) == [format_actions([A, B], 15), format_actions([C], 15)]
    assert [len(s.token_ids) for s in alignment_samples(tok, tr, 3)] == [13, 6]  # no end-of-text token: cut
    # L_rep on the whole trajectory: the executed options of every decision; the last one ends at its STOP
    assert text(repair_samples(tok, tr)) == [format_actions(a, 15) for a in ([A, B], [C, C], [A, D])]
    # a decision whose every option ran is cloned whole, its end-of-text token included
    whole = Trajectory(episode=None, group=0, member=0, actions=[A, B, C], decisions=[_decision(tok, 0, [A, B, C], [A, B, C])])
    [s] = repair_samples(tok, whole)
    assert s.token_ids == whole.decisions[0].token_ids and s.token_ids[-1] == tok.eos_token_id


def test_partial_and_invalid_decisions_are_not_cloned_nor_contrasted(policy):
    """Only canonical (valid) decision text trains L_rep, L_align and L_con (docs/reconstructions.md)."""
    from saca.action_text import format_actions
    from saca.train.rft import alignment_samples, contrastive_pair
    from saca.train.rollout import Trajectory

    tok = policy.processor.tokenizer
    tr = Trajectory(episode=None, group=0, member=0, actions=[A, A, B, B, C, C], decisions=[
        _decision(tok, 0, [A, A], [A, A]), _decision(tok, 2, [B, B], [B, B], status="partial"),
        _decision(tok, 4, [C, C], [C, C], status="invalid")])
    assert [tok.decode(s.token_ids, skip_special_tokens=True) for s in alignment_samples(tok, tr, 6)] == [
        format_actions([A, A], 15)]

    class Teacher:  # the shortest-path teacher would turn right at every step
        def teacher_action_at(self, traj, t):
            return C

    assert contrastive_pair(tok, Teacher(), tr, 2) == (None, "token")  # the partial decision's step
    con, why = contrastive_pair(tok, Teacher(), tr, 1)  # the valid decision's 2nd option: a real pair
    assert why == "" and con.position == option_letter_positions(tok, tr.decisions[0].token_ids)[1]


def test_kl_reward_lowers_the_rewards_of_both_scenarios():
    """kl_mode reward: a mixed group's rewards and a rescue sub-group's process scores both lose beta x KL."""
    torch = pytest.importorskip("torch")
    from saca.train.rft import Sample
    from saca.train.rft.objective import kl_reward_advantages
    from saca.train.saca import SacaSwitches

    def sample(behav, ref):
        return [Sample(None, [1] * len(behav), 0.0, behav_logp=torch.tensor(behav), ref_logp=torch.tensor(ref))]

    # trajectories 0, 1: a mixed group (R = 1, 0); 2, 3, 4: an all-failure group's sub-group (anchor 2)
    samples_of = [sample([-1.0, -1.0], [-1.5, -1.5]), sample([-2.0], [-2.0]),
                  sample([-1.0], [-1.0]), sample([-1.25], [-1.0]), sample([-0.5], [-0.5])]
    sw = SacaSwitches(delta=0.1, kappa=0.5, eta=0.5, adv_eps=1e-4)
    got = kl_reward_advantages([1.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1, 1], [0, 1], [([2, 3, 4], [0.6, 0.45, 0.2])],
                               samples_of, beta=1.0, sw=sw)
    # mixed group: r = (1 - 1.0 * 0.5, 0 - 0) = (0.5, 0): mean 0.25, std 0.25
    assert got[0] == pytest.approx(0.25 / 0.2501, abs=1e-12) and got[1] == pytest.approx(-0.25 / 0.2501, abs=1e-12)
    # sub-group: P - penalty = (0.6 - 0, 0.45 + 0.25, 0.2 - 0) = (0.6, 0.7, 0.2): mean 0.5, std 0.216025 (ddof 0);
    # margin 0.6 - 0.7 < delta: x kappa 0.5; the negative one x eta 0.5 (Eq. 8-11)
    P = np.array([0.6, 0.7, 0.2])
    base = (P - 0.5) / (np.sqrt(0.14 / 3) + 1e-4) * 0.5
    assert P.std() == pytest.approx(0.216025, abs=1e-6)
    assert [got[2], got[3], got[4]] == pytest.approx([base[0], base[1], 0.5 * base[2]], abs=1e-12)
    assert got[2] > 0 and got[3] > got[2] and got[4] < 0
    # without the KL the same sub-group is not rescued (margin 0.15) and the anchor leads: the KL changed it
    none = kl_reward_advantages([1.0, 0.0, 0.0, 0.0, 0.0], [0, 0, 1, 1, 1], [0, 1], [([2, 3, 4], [0.6, 0.45, 0.2])],
                                samples_of, beta=0.0, sw=sw)
    assert none[2] > none[3] and none[2] == pytest.approx((0.6 - 1.25 / 3) / (np.std([0.6, 0.45, 0.2]) + 1e-4), abs=1e-12)


def test_contrastive_pair_at_exactly_the_divergence_decision(monkeypatch, mini_world, tiny_dir, tmp_path):
    from saca.train.rft import contrastive_pair

    scripted_decide(monkeypatch, wander_after=lambda tr: 6, n=3)
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run")
    tr.setup()
    eng = _engine(tr.policy, mini_world)
    [orig] = eng.rollout([_episode(mini_world)], 1)
    tok = tr.proc.tokenizer
    # at step 7 (the 2nd action of the decision at step 6) the trajectory turned left (B) where the teacher would not
    con, why = contrastive_pair(tok, eng, orig, 7)
    d = orig.decisions[orig.decision_at(7)]
    assert d.step == 6 and con is not None and why == ""
    assert con.position == option_letter_positions(tok, d.token_ids)[1]  # the 2nd option of the decision at step 7
    assert tok.decode([con.taken_id]).strip() == "B"
    teacher = eng.teacher_action_at(orig, 7)
    from saca.action_text import LETTERS
    from saca.sim.base import Action

    assert teacher != B and tok.decode([con.teacher_id]).strip() == LETTERS[Action(teacher)]
    # the teacher's own action: skipped
    none, why = contrastive_pair(tok, eng, orig, 2)
    assert none is None and why == "same"
    assert contrastive_pair(tok, eng, orig, orig.steps)[1] == "end"


def test_one_saca_update_routes_repairs_rescues_and_logs(monkeypatch, mini_world, tiny_dir, tmp_path):
    # member 0 follows the teacher (success); 1 and 3 turn in place from step 6 on (T = 19), 2 from step 0 (T = 13)
    scripted_decide(monkeypatch, wander_after=lambda tr: [None, 6, 0, 6][tr.member])
    # rho: member 1 15/19 (a near-miss), member 2 1/13, member 3 2/19
    _fake_audit(monkeypatch, [(0.6, 100), (0.4, 15), (0.1, 1), (0.3, 2)])
    torch = pytest.importorskip("torch")
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run", weight_decay=0.0)
    tr.setup()
    tr.ckpts.resume(tr.model, tr.optimizer, tr.scheduler, tr.device)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    row = tr.update(0)
    assert row["groups_mixed"] == 2 and row["groups_all_failure"] == 0
    assert row["role_successful"] == 2 and row["role_repaired"] == 2 and row["role_failed"] == 4
    assert row["repair_attempts"] == 2 and row["repair_successes"] == 2  # the teacher repairs at the first attempt
    assert row["rep_samples"] > 0 and row["rep_loss"] > 0 and row["align_samples"] == 0 and row["con_pairs"] == 0
    assert row["appendix_a_share"] == pytest.approx(2 / 6)
    assert row["rho_hist_failed"] == [2, 2, 0, 0, 0, 0, 0, 2, 0, 0]
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_all_failure_groups_are_rescued_with_align_and_con(monkeypatch, mini_world, tiny_dir, tmp_path):
    scripted_decide(monkeypatch, wander_after=lambda tr: [6, 0, 3, 9][tr.member])
    _fake_audit(monkeypatch, [(0.2, 9), (0.1, 1), (0.3, 8), (0.05, 3)])  # anchor: member 2, t* = 8 (turning left)
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run", n_hard_negatives=2)
    tr.setup()
    row = tr.update(0)
    assert row["groups_all_failure"] == 2 and row["afr_groups"] == 2 and row["collapsed_share"] == 0.0
    assert row["role_anchor"] == 2 and row["role_hard_negative"] == 4 and row["role_discarded"] == 2
    assert row["samples"] > 0 and row["align_samples"] > 0 and row["con_pairs"] == 2
    assert row["align_loss"] > 0 and row["con_loss"] > 0 and row["repair_attempts"] == 0
    # without AFR the same groups give nothing to train on: no step
    tr2 = _trainer(mini_world, tiny_dir, tmp_path / "run2", afr=False)
    tr2.setup()
    row2 = tr2.update(0)
    assert row2["collapsed_share"] == 1.0 and row2["samples"] == 0 and row2.get("skipped_step") is True


def test_with_every_saca_switch_off_the_update_is_grpo_exactly(monkeypatch, mini_world, tiny_dir, tmp_path):
    """Soft score, AFR and RR off (the auditor still running) give GRPO's loss and gradient on the same batch."""
    torch = pytest.importorskip("torch")
    scripted_decide(monkeypatch, wander_after=lambda tr: [None, 6, 0, 3][tr.member])
    grads = []
    for name, kw in (("grpo", dict(soft_score=False, afr=False, rr=False)),
                     ("off", dict(soft_score=False, afr=False, rr=False, audit_rollouts=True))):
        tr = _trainer(mini_world, tiny_dir, tmp_path / name, **kw)
        tr.setup()
        captured = {}
        real = tr.optimizer.step

        def step(*a, _c=captured, _tr=tr, _real=real, **k):
            _c.update({n: p.grad.detach().clone() for n, p in _tr.model.named_parameters() if p.grad is not None})
            return _real(*a, **k)

        tr.optimizer.step = step
        row = tr.update(0)
        grads.append((row, captured))
    (r1, g1), (r2, g2) = grads
    assert r1["loss"] == r2["loss"] and r1["samples"] == r2["samples"] > 0
    assert "appendix_a_share" in r2 and "appendix_a_share" not in r1
    assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)
    assert sum(float(v.abs().sum()) for v in g1.values()) > 0


def test_the_foundation_backend_runs_one_saca_update(monkeypatch, mini_world, tiny_dir, tmp_path):
    """The cluster path on CPU: tiny random CLIP / GroundingDINO / SAM3 models audit the rollouts in the loop."""
    from saca.auditor.tiny import build_foundation_models
    from saca.config import from_dict
    from saca.auditor.config import AuditorConfig

    scripted_decide(monkeypatch, wander_after=lambda tr: [None, 6, 0, 3][tr.member])
    paths = build_foundation_models(tmp_path / "models", segmenters=("sam3",))
    aud = from_dict(AuditorConfig, {"backend": "foundation", "tau_det": 0.0, "foundation": {
        "clip_path": paths["clip_path"], "gdino_path": paths["gdino_path"], "sam3_path": paths["sam3_path"],
        "device": "cpu", "batch_size": 32}}, "auditor")
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run", auditor=aud, G=2, groups_per_step=1)
    tr.setup()
    assert tr.auditor.backend.name == "foundation"
    row = tr.update(0)
    assert row["audit_calls"] >= 1 and row["audit_pairs"] > 0 and row["time_audit"] > 0
    assert row["groups_mixed"] == 1 and math.isfinite(row["loss"])


def test_missing_landmarks_are_named(mini_world, tiny_dir, tmp_path):
    pytest.importorskip("torch")
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run", landmarks={})
    with pytest.raises(SacaError, match=r"landmarks of dataset 'mini_r2r'"):
        tr.setup()
    eps = [_episode(mini_world, k=0)]
    tr = _trainer(mini_world, tiny_dir, tmp_path / "run", landmarks={"mini_r2r": _landmarks(eps)})
    with pytest.raises(SacaError, match=r"no row for training episode"):
        tr.setup()


def test_saca_switches_need_online_mode_and_sane_values():
    from saca.train.rft import RftConfig

    with pytest.raises(SacaError, match=r"rft: soft_score, afr, rr need mode online"):
        RftConfig(mode="offline").validate("rft")
    with pytest.raises(SacaError, match=r"rft\.kappa"):
        RftConfig(kappa=1.5).validate("rft")
    with pytest.raises(SacaError, match=r"rft\.K"):
        RftConfig(K=0).validate("rft")


# --- the command: kill -9 and resume ---------------------------------------------------------------

PATCH = """
import sys
sys.path.insert(0, {tests!r})
import pytest
from test_saca import scripted_decide

class _MP:
    def setattr(self, obj, name, value):
        setattr(obj, name, value)

# group 4 (update 3) all-failure (near-misses, wanderers), the others mixed (a success, near-misses); with seed 13
# groups 0 and 4 both draw the fixture's training episode 3, whose landmarks the teacher's path shows
scripted_decide(_MP(), wander_after=lambda tr: ([None, "near", 0, "near"], ["near", 0, "near", 3])[tr.group == 4][tr.member])
from saca.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(tmp, args, env_extra=None):
    script = Path(tmp) / "saca_scripted.py"
    script.write_text(PATCH.format(tests=str(REPO / "tests")))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600)


def _saca_args(world, tiny_dir, out, lm_file):
    p = dict(G=4, groups_per_step=2, max_steps=3, learning_rate=1e-3, eval_steps=0, eval_episodes=0, save_steps=1,
             micro_batch_size=8, device="cpu", seed=13, auditor={"patience": 8, "count_initial_gap": False},
             generation={"do_sample": True, "temperature": 1.0, "max_new_tokens": 40})
    c = world["datasets"]["mini_r2r"]
    ds = {"mini_r2r": {"backend": "embedded", "turn_angle": c.turn_angle, "style": c.style, "landmarks": c.landmarks,
                       "seed": c.seed, "episodes": c.episodes}}
    agent = {"memory": {"sampler": "long_short", "M": 2, "d1": 1, "d2": 2, "max_frames": 4}, "image_format": "none",
             "n_actions": 3}
    return ["rft", "--init", str(tiny_dir), "--out", str(out), "--data", f"mini_r2r={world['root'] / 'mini_r2r'}",
            "--datasets", json.dumps(ds), "--scenes", str(world["scenes"]), "--sim", json.dumps({"width": 64, "height": 64}),
            "--agent", json.dumps(agent), "--landmarks", f"mini_r2r={lm_file}", "--params", json.dumps(p)]


def test_killed_saca_run_resumes_to_identical_weights(mini_world, tiny_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from saca.episodes import load_split
    from saca.io import write_jsonl
    from saca.landmarks import LandmarkConfig, extract_split

    lm = tmp_path / "train.jsonl"
    write_jsonl(lm, extract_split(load_split(mini_world["root"] / "mini_r2r" / "episodes", "train"), LandmarkConfig()))
    full = _cli(tmp_path, _saca_args(mini_world, tiny_dir, tmp_path / "full", lm))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _cli(tmp_path, _saca_args(mini_world, tiny_dir, tmp_path / "killed", lm), {"SACA_TEST_KILL_AFTER_STEP": "2"})
    assert killed.returncode == -9
    resumed = _cli(tmp_path, _saca_args(mini_world, tiny_dir, tmp_path / "killed", lm))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(Path(tiny_dir) / "model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all("role_successful" in r for r in train)
    # every mechanism ran: repair of near-misses, the rescue's anchor, negatives and both anchor terms
    assert sum(r["repair_successes"] for r in train) > 0 and sum(r["rep_samples"] for r in train) > 0
    assert sum(r["afr_groups"] for r in train) > 0 and sum(r["align_samples"] for r in train) > 0
    assert sum(r["con_pairs"] for r in train) > 0 and sum(r["role_hard_negative"] for r in train) > 0
    # the resumed run logged the same SACA rows as the uninterrupted one
    ref = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    keys = ("loss", "repair_successes", "role_repaired", "appendix_a_share")
    assert [[r[k] for k in keys] for r in train] == [[r[k] for k in keys] for r in ref if r["event"] == "train"]

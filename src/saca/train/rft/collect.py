"""Collection: one update's samples on this rank, and the reward seam.

``mode: online`` (SACA §3.1): G trajectories per training episode, sampled from the current policy in the
simulator (:mod:`saca.train.rollout`); every decision of a trajectory is a training sample carrying its
trajectory's advantage. ``mode: offline`` (VLN-R1 §3.4): G generations per VLN-Ego training sample in one
``generate`` call, one training sample each.

The reward is a seam: a :class:`RewardFn` maps the collected :class:`Batch` to one outcome reward per
trajectory (online; 1 for success, 0 for failure by default, method-notes §1, and the reward SACA's routing
reads: a member with ``R > 0`` succeeded) or per generation (offline; VLN-R1's Time-Decayed Reward of the
parsed chunk against the expert's by default). The trainer takes one (``RftTrainer(..., reward=...)``), so
tests and experiments set rewards without touching the trainer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import numpy as np

from saca.train import grpo
from saca.train.rft.groups import SacaBatch
from saca.train.rft.samples import Sample


@dataclass
class Batch:
    """One update's collected samples on this rank.

    ``samples_of[i]``: the training samples of trajectory (online) or generation (offline) ``i``; ``groups[i]``
    its group id; ``trajectories`` (online) the rollouts; ``predictions`` / ``truths`` (offline) the parsed
    action chunks (None: unparseable) and the expert's; ``rewards`` the :class:`RewardFn`'s outcome rewards,
    then the rewards GRPO normalises (SACA's shaping); ``saca`` what group construction adds; ``stats`` the
    log's rollout numbers."""

    samples_of: list
    groups: list
    stats: dict
    trajectories: list | None = None
    predictions: list | None = None
    truths: list | None = None
    rewards: list = field(default_factory=list)
    saca: SacaBatch = field(default_factory=SacaBatch)


class RewardFn(Protocol):
    """The reward seam: one outcome reward per entry of ``batch.samples_of``."""

    def __call__(self, batch: Batch) -> Sequence[float]: ...


def outcome_reward(batch: Batch) -> list[float]:
    """The online outcome reward ``R`` (method-notes §1): 1 when the trajectory stopped within 3 m, else 0."""
    return [tr.reward for tr in batch.trajectories]


@dataclass(frozen=True)
class TimeDecayedReward:
    """VLN-R1's offline reward (:func:`saca.train.grpo.time_decayed_reward`, variant ``variant``) of every
    generation's parsed chunk against the expert's; an unparseable one scores 0."""

    variant: str = "time_decayed"
    gamma: float = 0.9

    def __call__(self, batch: Batch) -> list[float]:
        return [grpo.time_decayed_reward(p, t, self.variant, self.gamma) for p, t in zip(batch.predictions, batch.truths)]


def default_reward(cfg) -> RewardFn:
    """The reward of ``cfg.mode``: :func:`outcome_reward` online, :class:`TimeDecayedReward` offline."""
    return outcome_reward if cfg.mode == "online" else TimeDecayedReward(cfg.tdr, cfg.gamma)


def collect_online(engine, starts: Iterable[tuple], G: int) -> Batch:
    """``G`` rollouts of every ``(group id, dataset, episode, simulator)`` in ``starts`` (taken in turn, each just
    before its group starts), all in one batched run;
    every decision becomes a sample of its trajectory (advantage filled in later)."""
    from saca.train.rollout import group_outcomes

    trajs = []
    for j, ds, ep, sim in starts:
        trajs += engine.start_group(ep, G, group=j, dataset=ds, sim=sim)
    engine.run(trajs)
    stats = {**group_outcomes(trajs), **{f"rollout_{k}": v for k, v in engine.stats.as_dict().items()}}
    stats["traj_steps_mean"] = float(np.mean([tr.steps for tr in trajs]))
    stats["invalid_decisions"] = int(sum(tr.n_invalid for tr in trajs))
    samples_of = [[Sample(d.encoded, d.token_ids, 0.0, tr.group) for d in tr.decisions] for tr in trajs]
    return Batch(samples_of, [tr.group for tr in trajs], stats, trajectories=trajs)


def collect_offline(policy, data, picks: Sequence[tuple[int, int]], G: int, generation, seed: int, update: int) -> Batch:
    """``G`` generations of every VLN-Ego sample ``(group id, sample index)`` in ``picks``, one ``generate`` call
    per group seeded by ``(seed, update, group id)``: the same generations whichever rank the group lands on
    (the distributed-gradient test relies on it)."""
    from saca.action_text import parse_actions
    from saca.policy.generate import generate_encoded

    proc = policy.processor
    t0 = time.perf_counter()
    encoded, truths, angles, groups, token_ids, texts = [], [], [], [], [], []
    for j, i in picks:
        pi = data.policy_input(i)
        enc = proc.encode(pi.prompt, pi.images)
        s = data.sample(i)
        gen_seed = int(np.random.default_rng([seed, update, j]).integers(2**31 - 1))
        gen = generate_encoded(policy, [enc] * G, generation, seed=gen_seed, return_logprobs=True)
        encoded += [enc] * G
        truths += [[int(a) for a in s["actions"]]] * G
        angles += [float(s["turn_angle"])] * G
        groups += [j] * G
        token_ids += gen.token_ids
        texts += gen.texts
    predictions = []
    for text, truth, ang in zip(texts, truths, angles):
        parsed = parse_actions(text, len(truth), ang)
        predictions.append(list(parsed.actions) if parsed.ok else None)
    samples_of = [[Sample(e, ids, 0.0, g)] for e, ids, g in zip(encoded, token_ids, groups)]
    stats = {"unparseable": sum(p is None for p in predictions), "rollout_time_total": time.perf_counter() - t0,
             "rollout_decisions": len(encoded), "rollout_generated_tokens": sum(len(x) for x in token_ids)}
    return Batch(samples_of, groups, stats, predictions=predictions, truths=truths)

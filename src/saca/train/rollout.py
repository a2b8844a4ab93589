"""Group rollouts in the simulator (SACA §3.1): B instructions x G trajectories, batched by decision.

For each of B episodes, G trajectories start from the same pose and are sampled
from the current policy. A group shares **one** simulator (one scene load): the
simulator holds no per-agent state beyond :class:`~saca.sim.base.AgentState`,
so the engine keeps each member's state and ``restore``\\ s it before the
member's frames and steps. At paper scale a rank therefore holds B scenes, not
B x G.

The loop is synchronised on *decisions*, not on environment steps: every active
trajectory executes its queued actions (rendering one frame per step) until it
needs a new decision or its episode ends; then all trajectories that need a
decision are generated in **one** batched ``generate`` call. Agents re-plan on
their own schedules (a 6-action chunk can be cut by STOP), so stepping all
agents one environment step at a time would hand ``generate`` a few rows per
call; here every call holds every active trajectory.

What a :class:`Trajectory` records: every :class:`Decision` (its step, history
frame indices, prompt, encoded prompt, generated token ids, sampling-time
log-probs, parse status, the parsed chunk and the actions it executed), the
actions and positions, the policy's frames (after the same image codec as the
VLN-Ego export), a simulator snapshot at every decision boundary, and the
outcome (STOP called, geodesic distance to the goal, success = STOP within
3 m, method-notes §1).

:meth:`RolloutEngine.branch` copies a trajectory's first ``t`` steps (restoring
the nearest snapshot and replaying the actions after it) so that SACA's Repair
Resampling can sample a new suffix from the divergence point;
:meth:`RolloutEngine.run` continues any set of unfinished trajectories.

Deterministic for a seed: the ``k``-th ``generate`` call of an engine is seeded
with ``seed + k`` and its rows are in a fixed order (group, member).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from saca import SacaError
from saca.action_text import ParseCounter
from saca.auditor.base import Frame
from saca.episodes import Episode
from saca.policy.agent import PolicyAgentConfig, plan_chunk, policy_frame
from saca.policy.generate import generate_encoded
from saca.prompt import build_prompt
from saca.sim.base import AgentState, Simulator, SUCCESS_DISTANCE_M
from saca.vln_ego.samplers import history_indices


@dataclass
class Decision:
    """One policy call: the prompt at ``step`` and the action chunk it produced."""

    step: int
    history: list[int]
    prompt: str
    token_ids: list[int]
    logprobs: list[float] | None
    text: str
    status: str
    actions: list[int]  # the parsed chunk (may be shorter than n_actions; empty when invalid)
    executed: list[int] = field(default_factory=list)  # actions run in the simulator (the chunk can be cut by the episode's end)
    encoded: object = None  # the prompt as the processor encoded it (input ids + pixels), reused by the loss
    cut: bool = False  # branch() cut this decision: its tokens name actions after the executed ones

    @property
    def steps(self) -> range:
        """The environment steps this decision produced."""
        return range(self.step, self.step + len(self.executed))


@dataclass
class Trajectory:
    """One member of a group; see the module docstring."""

    episode: Episode
    group: object  # group id (unique within an update)
    member: int
    dataset: str = ""
    actions: list[int] = field(default_factory=list)
    positions: list = field(default_factory=list)  # positions[t]: before action t; len = steps + 1
    frames: list = field(default_factory=list)  # frames[t]: the view before action t (policy codec)
    decisions: list[Decision] = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)  # step -> AgentState at each decision boundary
    collided: list = field(default_factory=list)  # collided[t]: action t was a blocked forward step
    n_invalid: int = 0
    done: bool = False
    stopped: bool = False
    distance: float = float("nan")  # geodesic distance to the goal at the end
    success: bool = False
    origin: tuple | None = None  # (group, member, step) of the trajectory a branch was copied from
    # engine state
    state: AgentState | None = None
    queue: list[int] = field(default_factory=list)
    sim: Simulator | None = None
    processed: dict = field(default_factory=dict)  # frame index -> processed pixels (per-image families)
    audit: list = field(default_factory=list)  # audit[t]: the full observation before action t (engine.audit_frames)

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def collisions(self) -> int:
        return sum(self.collided)

    @property
    def reward(self) -> float:
        """The outcome reward R (method-notes §1): 1 for success, else 0."""
        return 1.0 if self.success else 0.0

    def decision_at(self, t: int) -> int:
        """Index of the decision that produced step ``t``."""
        for k, d in enumerate(self.decisions):
            if d.step <= t < d.step + len(d.executed):
                return k
        raise SacaError(f"trajectory ({self.group}, {self.member}): no decision produced step {t} of {self.steps}")

    def summary(self) -> dict:
        return {
            "episode_id": self.episode.episode_id, "group": self.group, "member": self.member,
            "dataset": self.dataset, "steps": self.steps, "decisions": len(self.decisions), "success": self.success,
            "stopped": self.stopped, "distance": self.distance, "collisions": self.collisions,
            "n_invalid": self.n_invalid, "origin": self.origin,
        }


@dataclass
class RolloutStats:
    env_steps: int = 0
    decisions: int = 0
    generate_calls: int = 0
    generated_tokens: int = 0
    time_generate: float = 0.0  # policy time: encoding + generate
    time_encode: float = 0.0  # of which: image processing + tokenization of the prompts
    time_env: float = 0.0  # simulator steps + rendering + image codec
    time_total: float = 0.0

    def add(self, other: "RolloutStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["env_steps_per_s"] = self.env_steps / max(self.time_total, 1e-9)
        d["decisions_per_s_policy"] = self.decisions / max(self.time_generate, 1e-9)
        d["rows_per_generate"] = self.decisions / max(self.generate_calls, 1)
        return d


class RolloutEngine:
    """Samples groups of trajectories from ``policy`` (see the module docstring).

    ``make_sim(episode)`` returns a simulator for an episode's dataset (the engine
    calls it once per group and reuses it for the whole group). ``cfg`` holds the
    agent settings (n_actions, execute_actions, memory sampler, image codec,
    sampling, invalid_action, max_batch): the same as evaluation, so rollouts
    and evaluation see and act alike.
    """

    def __init__(self, policy, cfg: PolicyAgentConfig, make_sim: Callable[[Episode], Simulator], seed: int = 0,
                 record_logprobs: bool = True, audit_frames: bool = False):
        self.policy = policy
        self.audit_frames = audit_frames  # keep each step's full observation (RGB, instance ids, labels) for the auditor
        self._labels: dict = {}  # scene id -> instance labels (the audit frames')
        self.cfg = cfg
        self.make_sim = make_sim
        self.seed = int(seed)
        self.calls = 0
        self.record_logprobs = record_logprobs
        self.counter = ParseCounter()
        self.stats = RolloutStats()

    # --- groups -----------------------------------------------------------------------------
    def start_group(self, episode: Episode, G: int, group, dataset: str = "", sim: Simulator | None = None) -> list[Trajectory]:
        """G fresh trajectories of ``episode`` sharing one simulator."""
        if G < 1:
            raise SacaError(f"group size G must be at least 1, got {G}")
        sim = sim or self.make_sim(episode)
        start = sim.reset(episode)
        return [
            Trajectory(episode=episode, group=group, member=m, dataset=dataset, positions=[start.position],
                       state=start, sim=sim)
            for m in range(G)
        ]

    def rollout(self, episodes: Sequence[Episode], G: int, groups: Sequence | None = None,
                datasets: Sequence[str] | None = None) -> list[Trajectory]:
        """B = len(episodes) groups of G trajectories each, run to the end; ordered by (group, member)."""
        groups = list(range(len(episodes))) if groups is None else list(groups)
        datasets = list(datasets) if datasets is not None else [""] * len(episodes)
        trajs = []
        for ep, g, ds in zip(episodes, groups, datasets):
            trajs += self.start_group(ep, G, g, ds)
        self.run(trajs)
        return trajs

    def branch(self, traj: Trajectory, t: int, member: int | None = None) -> Trajectory:
        """A new unfinished trajectory equal to ``traj``'s first ``t`` steps (SACA Repair Resampling, Eq. 4-5).

        The simulator is restored to the snapshot of the last decision boundary at or
        before ``t`` and the actions between it and ``t`` are replayed. Decisions that
        started before ``t`` are kept, the one spanning ``t`` cut to the actions it
        executed before ``t``; the new trajectory's next action comes from a new decision.
        """
        state = self.restore_at(traj, t)
        sim = traj.sim
        decisions = []
        for d in traj.decisions:
            if d.step >= t:
                break
            kept = d.executed[: t - d.step]
            decisions.append(replace(d, executed=kept, cut=d.cut or len(kept) < len(d.executed)))
        new = Trajectory(
            episode=traj.episode, group=traj.group, member=traj.member if member is None else member,
            dataset=traj.dataset, actions=list(traj.actions[:t]), positions=list(traj.positions[: t + 1]),
            frames=list(traj.frames[:t]), decisions=decisions,
            snapshots={s: v for s, v in traj.snapshots.items() if s <= t} | {t: state},
            collided=list(traj.collided[:t]), n_invalid=sum(1 for d in decisions if d.status == "invalid"),
            origin=(traj.group, traj.member, t), state=state, sim=sim,
            processed={k: v for k, v in traj.processed.items() if k < t}, audit=list(traj.audit[:t]),
        )
        return new

    def restore_at(self, traj: Trajectory, t: int) -> AgentState:
        """Put ``traj``'s simulator in the state before its action ``t``: restore the snapshot of the last
        decision boundary at or before ``t`` and replay the actions after it. Returns that state."""
        if not 0 <= t <= traj.steps:
            raise SacaError(f"restore at step {t}: the trajectory has {traj.steps} steps")
        if traj.sim is None:
            raise SacaError("the trajectory has no simulator (it was released, or not produced by this engine)")
        base = max(s for s in traj.snapshots if s <= t)
        sim = traj.sim
        self._bind(traj)
        sim.restore(traj.snapshots[base])
        for a in traj.actions[base:t]:
            sim.step(a)
        return sim.snapshot()

    def teacher_action_at(self, traj: Trajectory, t: int) -> int:
        """The simulator's shortest-path teacher action ``a*`` in the state before ``traj``'s action ``t``
        (SACA Eq. 13)."""
        self.restore_at(traj, t)
        a = int(traj.sim.teacher_action())
        traj.sim.restore(traj.state)
        return a

    # --- the loop ---------------------------------------------------------------------------
    def run(self, trajs: Sequence[Trajectory]) -> None:
        """Run unfinished trajectories to the end of their episodes."""
        t_start = time.perf_counter()
        active = [tr for tr in trajs if not tr.done]
        while active:
            need = []
            t0 = time.perf_counter()
            for tr in active:
                if self._advance(tr):
                    need.append(tr)
            self.stats.time_env += time.perf_counter() - t0
            if need:
                self.decide(need)
            active = [tr for tr in active if not tr.done]
        self.stats.time_total += time.perf_counter() - t_start

    @staticmethod
    def _bind(tr: Trajectory) -> None:
        """Point the (possibly shared) simulator at ``tr``'s episode and state."""
        sim, ep = tr.sim, tr.episode
        if sim.episode is not ep:
            sim.load_scene(ep.scene_id)  # no-op when the scene is loaded
            sim.episode = ep
            sim._prepare_goal(ep.goal_position)
        sim.restore(tr.state)

    def _advance(self, tr: Trajectory) -> bool:
        """Execute ``tr``'s queued actions; True when it needs a decision (its current frame is recorded)."""
        sim = tr.sim
        self._bind(tr)
        while True:
            if sim.episode_over:
                self._finish(tr)
                return False
            t = tr.steps
            if len(tr.frames) == t:
                ob = sim.observe()
                tr.frames.append(policy_frame(ob.rgb, self.cfg))
                if self.audit_frames:
                    labels = self._labels.get(tr.episode.scene_id)
                    if labels is None:  # per scene, shared by its frames
                        labels = self._labels[tr.episode.scene_id] = sim.instance_labels
                    tr.audit.append(Frame(rgb=ob.rgb, instance=ob.instance, labels=labels))
            if not tr.queue:
                tr.snapshots[t] = tr.state
                return True
            a = tr.queue.pop(0)
            new = sim.step(a)
            self.stats.env_steps += 1
            tr.actions.append(int(a))
            tr.decisions[-1].executed.append(int(a))
            tr.collided.append(bool(new.collided))
            tr.positions.append(new.position)
            tr.state = new

    def _finish(self, tr: Trajectory) -> None:
        sim = tr.sim
        self._bind(tr)
        tr.done = True
        tr.queue = []
        tr.stopped = bool(tr.state.stopped)
        tr.distance = float(sim.distance_to_goal())
        tr.success = tr.stopped and tr.distance < SUCCESS_DISTANCE_M

    def _encode(self, tr: Trajectory, hist: list[int], prompt: str):
        proc = self.policy.processor
        idx = hist + [tr.steps]
        if not proc.per_image:
            return proc.encode(prompt, [tr.frames[i] for i in idx])
        for i in idx:
            if i not in tr.processed:
                tr.processed[i] = proc.process_images([tr.frames[i]])
        return proc.encode(prompt, None, processed=proc.join_images([tr.processed[i] for i in idx]))

    def decide(self, need: Sequence[Trajectory]) -> None:
        """The policy's next decision for every trajectory in ``need`` (one batched ``generate`` call): appends a
        :class:`Decision` and queues its chunk. The engine's decision seam: a scripted agent (the tests' teacher
        with planned detours) replaces it."""
        t0 = time.perf_counter()
        cfg = self.cfg
        hists, prompts, encoded = [], [], []
        for tr in need:
            hist = history_indices(tr.steps, cfg.memory)
            prompt = build_prompt(tr.episode.instruction_text, len(hist), tr.sim.turn_angle, cfg.n_actions)
            hists.append(hist)
            prompts.append(prompt)
            encoded.append(self._encode(tr, hist, prompt))
        self.stats.time_encode += time.perf_counter() - t0
        gen = generate_encoded(self.policy, encoded, cfg.generation, seed=self.seed + self.calls,
                               return_logprobs=self.record_logprobs, max_batch=cfg.max_batch or None,
                               decoder=cfg.decoder)
        self.calls += 1
        self.stats.generate_calls += 1
        self.stats.decisions += len(need)
        self.stats.generated_tokens += sum(len(ids) for ids in gen.token_ids)
        for k, tr in enumerate(need):
            parsed, chunk, invalid = plan_chunk(gen.texts[k], cfg, tr.sim.turn_angle, self.counter)
            tr.n_invalid += int(invalid)
            tr.queue = list(chunk)
            tr.decisions.append(Decision(
                step=tr.steps, history=hists[k], prompt=prompts[k], token_ids=list(gen.token_ids[k]),
                logprobs=None if gen.logprobs is None else list(gen.logprobs[k]), text=gen.texts[k],
                status=parsed.status, actions=list(parsed.actions), encoded=encoded[k],
            ))
        self.stats.time_generate += time.perf_counter() - t0


def release(trajs: Sequence[Trajectory]) -> None:
    """Drop the engine state (simulators, pixel caches) of finished trajectories."""
    for tr in trajs:
        tr.sim = None
        tr.processed = {}
        tr.audit = []


def group_outcomes(trajs: Sequence[Trajectory]) -> dict:
    """Per update: rollout success rate and the shares of mixed / all-failure / all-success groups."""
    by_group: dict = {}
    for tr in trajs:
        by_group.setdefault(tr.group, []).append(tr.success)
    n = max(len(by_group), 1)
    mixed = sum(1 for v in by_group.values() if any(v) and not all(v))
    all_fail = sum(1 for v in by_group.values() if not any(v))
    all_succ = sum(1 for v in by_group.values() if all(v))
    return {
        "groups": len(by_group), "success_rate": float(np.mean([tr.success for tr in trajs])) if trajs else 0.0,
        "mixed_share": mixed / n, "all_failure_share": all_fail / n, "all_success_share": all_succ / n,
    }

"""DAgger: the current policy's rollouts, every visited frame labelled by the expert (issue 29).

Dataset Aggregation (Ross, Gordon & Bagnell, 2011), the recipe StreamVLN and
NaVILA use for on-policy data: roll the current policy out on the train
episodes, label every frame it visits with the expert's next ``n`` actions
*from where the agent actually is*, add these samples to the training data of
the earlier rounds and train again. The expert is the one the VLN-Ego data and
the noise-injected rollouts use (:class:`saca.episodes.generate.ExpertPlan`:
the simulator's shortest-path follower through the landmarks' approach points,
turning to face each landmark), so the labels agree with the rest of the
training data. Unlike the noise-injected (DART) rollouts, the states come from
the policy's own mistakes: walking into walls, overshooting, stopping early.

A rollout follows the policy only (DAgger with ``beta = 0`` after the first
round, whose data is the expert's own VLN-Ego split). It ends when the policy
says STOP or after ``max_steps`` frames; the frame it stopped on keeps the
expert's label (which says STOP only where the expert would stop). The output
is a VLN-Ego split directory (the same format as ``saca vln-ego``'s), so
aggregation is passing it to ``saca sft --train`` beside the earlier ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from saca import SacaError
from saca.evaluate.agent_api import EpisodeContext
from saca.io import atomic_dir, write_json
from saca.sim.base import Action
from saca.vln_ego.generate import VlnEgoConfig, episode_samples
from saca.vln_ego.store import FORMAT_VERSION, FrameShardWriter, encode_image, write_samples

SUCCESS_DISTANCE = 3.0  # VLN-CE success radius (method-notes §1)


TEACHERS = ("goal", "route")  # sft.dagger.teacher (DaggerConfig)


@dataclass
class DaggerConfig:
    """``sft.dagger``: on-policy expert labels (off with ``rounds: 0``)."""

    rounds: int = 0  # DAgger rounds after SFT: roll out, label, aggregate, train again; 0: off
    episodes: int = 0  # train episodes per dataset rolled out each round (evenly spaced); 0: all
    max_steps: int = 0  # SFT optimizer steps of each retraining round (from the previous round's weights); 0: sft's budget
    rollout_steps: int = 0  # frames per rollout at most; 0: the simulator's limit less the expert's look-ahead
    batch_size: int = 8  # episodes rolled out together (one simulator each; decisions batched)
    seed: int = 0  # policy sampling seed of round r: seed + r
    # whose actions label the visited states: "goal", the shortest-path teacher toward the episode's goal (STOP
    # within sim.stop_radius of it); "route", the VLN-Ego expert through the landmarks' approach points in order
    # (a waypoint counts as passed only once the agent stood within stop_radius of it, so a policy that skipped
    # one is labelled back toward it for the rest of the episode, and never STOP at the goal)
    teacher: str = "goal"

    def validate(self, where: str) -> None:
        for name in ("rounds", "episodes", "max_steps", "rollout_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SacaError(f"{where}.{name}: must be an integer >= 0, got {v!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SacaError(f"{where}.batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.teacher not in TEACHERS:
            raise SacaError(f"{where}.teacher: must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")


@dataclass
class _Rollout:
    ctx: EpisodeContext
    plan: object
    frames: list
    targets: list
    done: bool = False
    forward: int = 0
    blocked: int = 0
    agree: int = 0
    success: bool = False
    limit: int = 0


def _plan(sim, episode, teacher: str = "goal"):
    from saca.episodes.generate import ExpertPlan

    if teacher == "goal":  # the shortest-path follower to the goal, STOP on arrival
        return ExpertPlan([tuple(episode.goal_position)], None, sim.turn_angle)
    info = episode.info or {}
    if not info.get("waypoints"):
        raise SacaError(f"episode {episode.episode_id}: no info.waypoints (DAgger's expert labels need the route)")
    objects = {int(o["instance_id"]): o for o in sim.scene["objects"]}
    face = [objects[int(i)]["position"] for i in info.get("landmark_instances", [])] or None
    return ExpertPlan(info["waypoints"], face, sim.turn_angle)


def labelled_policy_rollouts(episodes: Sequence, make_sim: Callable, agent, n: int, *, batch_size: int = 8,
                             max_steps: int = 0, teacher: str = "goal") -> list[_Rollout]:
    """Roll ``agent`` out on ``episodes`` (``batch_size`` at a time, one simulator each from ``make_sim()``),
    labelling every visited frame with the ``teacher``'s next ``n`` actions from the agent's state
    (:class:`DaggerConfig`.teacher: ``goal`` or ``route``).

    The agent is driven as the evaluation runner drives it (``reset`` once, ``act`` once per step of
    every active episode). Returns one record per episode: frames, targets, and counts of forward
    steps, forward steps blocked by a wall, steps whose action equals the expert's label, and success
    (STOP within 3 m geodesic of the goal)."""
    out: list[_Rollout] = []
    for k in range(0, len(episodes), batch_size):
        batch: list[_Rollout] = []
        for ep in episodes[k:k + batch_size]:
            sim = make_sim()
            sim.reset(ep)
            limit = min(max_steps or sim.config.max_steps, sim.config.max_steps - (n - 1))
            if limit < 1:
                raise SacaError(f"sim.max_steps ({sim.config.max_steps}) leaves no room for the expert's "
                                f"{n}-action look-ahead")
            batch.append(_Rollout(EpisodeContext(episode=ep, sim=sim), _plan(sim, ep, teacher), [], [], limit=limit))
        agent.reset([r.ctx for r in batch])
        while True:
            active = [r for r in batch if not r.done]
            if not active:
                break
            for r in active:
                r.frames.append(r.ctx.sim.observe().rgb)
                r.targets.append(r.plan.lookahead(r.ctx.sim, n, advance=True))
            actions = agent.act([r.ctx for r in active])
            for r, a in zip(active, actions):
                a = int(a)
                sim = r.ctx.sim
                r.agree += int(a == r.targets[-1][0])
                r.ctx.actions.append(a)
                r.ctx.step += 1
                if a == Action.STOP:
                    goal = r.ctx.episode.goals[0]["position"]
                    r.success = sim.geodesic_distance(sim.state.position, tuple(goal)) < SUCCESS_DISTANCE
                    r.done = True
                    continue
                state = sim.step(a)
                if a == Action.MOVE_FORWARD:
                    r.forward += 1
                    r.blocked += int(bool(state.collided))
                if len(r.frames) >= r.limit or sim.episode_over:
                    r.done = True
        for r in batch:
            r.ctx.sim.close()
        out += batch
    return out


def rollout_stats(rollouts: Sequence[_Rollout]) -> dict:
    """Counts of a set of labelled rollouts: the wall-collision share (forward steps blocked by a wall)
    and the share of steps where the policy took the expert's action."""
    steps = sum(len(r.frames) for r in rollouts)
    fwd = sum(r.forward for r in rollouts)
    return {
        "rollouts": len(rollouts),
        "steps": steps,
        "success_rate": (sum(r.success for r in rollouts) / len(rollouts)) if rollouts else None,
        "forward_steps": fwd,
        "wall_collision_share": (sum(r.blocked for r in rollouts) / fwd) if fwd else None,
        "expert_agreement": (sum(r.agree for r in rollouts) / steps) if steps else None,
        "mean_steps": (steps / len(rollouts)) if rollouts else None,
    }


def write_dagger_split(rollouts: Sequence[_Rollout], cfg: VlnEgoConfig, turn_angle: float, out_dir: str | Path,
                       round_: int, extra: dict | None = None) -> dict:
    """Write the labelled rollouts as a VLN-Ego split directory (atomically); returns the manifest.

    Trajectory keys are ``{episode_id}~d{round}``, so the rounds' splits can be aggregated with the
    expert split and its noise-injected rollouts (``~{k}``) without clashes."""
    with atomic_dir(out_dir) as tmp:
        writer = FrameShardWriter(tmp, cfg.trajectories_per_shard)
        rows, n_frames = [], 0
        try:
            for r in rollouts:
                key = f"{r.ctx.episode.episode_id}~d{round_}"
                shard, rg = writer.add(key, [encode_image(f, cfg.image_format, cfg.jpeg_quality) for f in r.frames])
                rows += episode_samples(r.ctx.episode, cfg, turn_angle, shard, rg, targets=r.targets, key=key)
                n_frames += len(r.frames)
        finally:
            writer.close()
        n = write_samples(tmp, rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "episodes": len(rollouts),
            "dagger_round": round_,
            "frames": n_frames,
            "samples": n,
            "turn_angle": float(turn_angle),
            "config": {"n_actions": cfg.n_actions, "memory": vars(cfg.memory), "image_format": cfg.image_format,
                       "jpeg_quality": cfg.jpeg_quality, "trajectories_per_shard": cfg.trajectories_per_shard},
            "rollouts": rollout_stats(rollouts),
            **(extra or {}),
        }
        write_json(Path(tmp) / "manifest.json", manifest)
    return manifest


def select_episodes(episodes: Sequence, k: int) -> list:
    """``k`` episodes evenly spaced over the list (all when ``k`` is 0 or at least its length)."""
    episodes = list(episodes)
    if k <= 0 or k >= len(episodes):
        return episodes
    return [episodes[math.floor(i * len(episodes) / k)] for i in range(k)]

"""Replay expert actions, render frames, write VLN-Ego samples (VLN-R1 §3.2).

For an episode with expert actions ``a_0 .. a_{T-1}`` (the last one STOP),
frame ``t`` is the observation before ``a_t``. Sample ``t`` holds the
instruction, history indices from the memory sampler, the current frame index
``t`` and the target ``actions[t .. t+n-1]`` padded with STOP, as option text
with the dataset's real turn angle.

Optionally (``vln_ego.noise``, a mini-world deviation; VLN-R1's VLN-Ego holds expert
trajectories only) each episode also gets noise-injected rollouts: the expert acts,
but each step's action is replaced by a random other move with probability ``p``,
and every frame is labelled with the expert's next ``n`` actions *from where the
agent actually is* (:class:`saca.episodes.generate.ExpertPlan`). This is DART-style
data (Laskey et al., 2017): it shows the policy how to recover from its own errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from saca import SacaError
from saca.action_text import format_actions, target_actions
from saca.io import atomic_dir, write_json
from saca.sim.base import Action
from saca.vln_ego.samplers import MemoryConfig, history_indices
from saca.vln_ego.store import FORMAT_VERSION, FrameShardWriter, encode_image, write_samples


@dataclass
class NoiseConfig:
    """``vln_ego.noise``: noise-injected expert rollouts added to some splits (see the module docstring)."""

    trajectories: int = 0  # rollouts per episode; 0: expert trajectories only (VLN-R1)
    p: float = 0.15  # probability that a step's action is replaced by a random other move
    seed: int = 0
    splits: list = field(default_factory=lambda: ["train"])

    def validate(self, where: str) -> None:
        if self.trajectories < 0:
            raise SacaError(f"{where}.trajectories: must be >= 0")
        if not 0.0 <= self.p < 1.0:
            raise SacaError(f"{where}.p: must be in [0, 1)")


@dataclass
class VlnEgoConfig:
    """The ``vln_ego`` config section."""

    n_actions: int = 6
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    trajectories_per_shard: int = 64
    splits: list = field(default_factory=lambda: ["train", "val_seen", "val_unseen"])
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def validate(self, where: str) -> None:
        if self.n_actions < 1:
            raise SacaError(f"{where}.n_actions: must be at least 1")
        if self.image_format not in ("jpeg", "png"):
            raise SacaError(f"{where}.image_format: 'jpeg' or 'png', got '{self.image_format}'")
        if isinstance(self.memory, dict):  # from_dict converts nested sections; direct construction may not
            from saca.config import from_dict

            self.memory = from_dict(MemoryConfig, self.memory, f"{where}.memory")
        if isinstance(self.noise, dict):
            from saca.config import from_dict

            self.noise = from_dict(NoiseConfig, self.noise, f"{where}.noise")
        self.noise.validate(f"{where}.noise")


def _replay_reference(actions, locations) -> list | None:
    """The ``_gt`` location expected before each expert action, or None where the file allows no check.

    The mini world writes one location per action (the position before it). VLN-CE's R2R-CE / RxR-CE ``_gt``
    files record the start and then one location per forward step (a position is appended when it changes;
    VLN-CE issues #47, #57; docs/vlnce.md): there the position before action ``t`` is the entry after the forward
    steps so far. Any other length cannot be aligned, and the replay is not checked.
    """
    if not locations:
        return None
    if len(locations) == len(actions):
        return list(locations)
    forward = sum(1 for a in actions if a == Action.MOVE_FORWARD)
    if len(locations) != forward + 1:
        return None
    out, k = [], 0
    for a in actions:
        out.append(locations[k])
        k += a == Action.MOVE_FORWARD
    return out


REPLAY_TOLERANCE_M = 1e-3  # horizontal distance between a replayed position and the _gt location


@dataclass
class ReplayCheck:
    """Replay mismatches counted instead of raised (:func:`replay_frames` with ``check``).

    For Habitat: a navmesh recomputed at load (RxR-CE's setting), or built by another habitat-sim / Recast
    than the one that made the ``_gt`` file, moves the agent by millimetres at walls and corners, and the
    1 mm check would abort a whole split for that; the count and the largest offset go to the manifest.
    """

    episodes: int = 0  # episodes whose replay was checked
    episodes_off: int = 0  # ... of which at least one step was off by more than the tolerance
    steps_off: int = 0
    max_offset_m: float = 0.0

    def as_dict(self) -> dict:
        return {"tolerance_m": REPLAY_TOLERANCE_M, "episodes_checked": self.episodes,
                "episodes_off": self.episodes_off, "steps_off": self.steps_off, "max_offset_m": self.max_offset_m}


def replay_frames(sim, episode, check: ReplayCheck | None = None) -> list:
    """Reset to the episode start and render the frame before each expert action.

    The agent's horizontal position is checked against the ``_gt`` locations at every step
    (:func:`_replay_reference`): a replay that diverges by more than 1 mm raises, naming the
    episode and the step; with ``check``, the mismatches are counted there instead.
    """
    if not episode.gt_actions:
        raise SacaError(f"episode {episode.episode_id}: no expert actions (is the _gt file missing?)")
    sim.reset(episode)
    refs = _replay_reference(episode.gt_actions, episode.gt_locations)
    frames = []
    off = 0
    for t, a in enumerate(episode.gt_actions):
        if refs is not None:
            ref, pos = refs[t], sim.state.position
            dist = math.hypot(pos[0] - ref[0], pos[2] - ref[2])
            if dist > REPLAY_TOLERANCE_M:
                if check is None:
                    raise SacaError(
                        f"episode {episode.episode_id}: replay diverged at step {t} "
                        f"(at {list(pos)}, the _gt file says {ref}); were the scenes regenerated?"
                    )
                off += 1
                check.max_offset_m = max(check.max_offset_m, dist)
        frames.append(sim.observe().rgb)
        if a != Action.STOP:
            sim.step(a)
    if check is not None and refs is not None:
        check.episodes += 1
        check.episodes_off += off > 0
        check.steps_off += off
    return frames


def noisy_rollout(sim, episode, n: int, p: float, rng, max_steps: int | None = None) -> tuple[list, list[list[int]], list[int]]:
    """One noise-injected expert rollout: frames, the expert's next-``n`` target at each frame, executed actions.

    At frame ``t`` the target is the expert's continuation from the agent's actual state;
    the executed action is its first action, or with probability ``p`` a random other
    move (never STOP). The rollout ends when the expert says STOP (the last target is
    all STOP) or after ``max_steps`` frames (default: the simulator's limit less the
    ``n - 1`` steps the expert's look-ahead takes from the last frame).
    """
    from saca.episodes.generate import ExpertPlan

    info = episode.info or {}
    if not info.get("waypoints"):
        raise SacaError(f"episode {episode.episode_id}: no info.waypoints (noise-injected rollouts need the route)")
    sim.reset(episode)
    face = None
    if info.get("landmark_instances"):  # the embedded episodes face each landmark; navmesh (Habitat) ones name none
        objects = {int(o["instance_id"]): o for o in sim.scene["objects"]}
        face = [objects[int(i)]["position"] for i in info["landmark_instances"]]
    plan = ExpertPlan(info["waypoints"], face, sim.turn_angle)
    limit = min(max_steps or sim.config.max_steps, sim.config.max_steps - (n - 1))
    if limit < 1:
        raise SacaError(f"sim.max_steps ({sim.config.max_steps}) leaves no room for the expert's {n}-action look-ahead")
    moves = [int(Action.MOVE_FORWARD), int(Action.TURN_LEFT), int(Action.TURN_RIGHT)]
    frames, targets, executed = [], [], []
    while True:
        frames.append(sim.observe().rgb)
        targets.append(plan.lookahead(sim, n, advance=True))  # the plan moves on by the target's first action
        a = targets[-1][0]
        if a == Action.STOP or len(frames) >= limit:
            executed.append(int(Action.STOP))
            return frames, targets, executed
        if rng.random() < p:
            a = int(rng.choice([m for m in moves if m != a]))
        executed.append(a)
        sim.step(a)


def episode_samples(episode, cfg: VlnEgoConfig, turn_angle: float, shard: str, row_group: int,
                    targets: list[list[int]] | None = None, key: str | None = None) -> list[dict]:
    """Sample rows of one trajectory: the expert's (``targets`` None) or a noise-injected
    rollout's (``targets[t]`` per frame, frames stored under ``key``)."""
    actions = episode.gt_actions
    key = str(episode.episode_id) if key is None else key
    T = len(actions) if targets is None else len(targets)
    rows = []
    for t in range(T):
        target = target_actions(actions, t, cfg.n_actions) if targets is None else targets[t]
        rows.append(
            {
                "sample_id": f"{key}:{t}",
                "episode_id": key,
                "scene_id": episode.scene_id,
                "instruction": episode.instruction_text,
                "step": t,
                "num_frames": T,
                "history": history_indices(t, cfg.memory),
                "actions": target,
                "answer": format_actions(target, turn_angle),
                "turn_angle": float(turn_angle),
                "shard": shard,
                "row_group": row_group,
            }
        )
    return rows


def generate_vln_ego(episodes, sim, cfg: VlnEgoConfig, turn_angle: float, out_dir: str | Path,
                     split: str | None = None) -> dict:
    """Write a VLN-Ego split directory atomically; returns the manifest.

    ``split`` (the episodes' split) decides whether ``cfg.noise`` adds noise-injected rollouts.
    The gt replay check (:func:`replay_frames`) aborts on the embedded world, whose geometry is this
    project's own (a mismatch means regenerated scenes); on Habitat its mismatches are counted
    (:class:`ReplayCheck`, ``manifest["replay_check"]``) and logged."""
    import logging

    import numpy as np

    n_samples = n_frames = n_noisy = 0
    noise = cfg.noise if isinstance(cfg.noise, NoiseConfig) else NoiseConfig(**cfg.noise)
    k_noisy = noise.trajectories if split in noise.splits else 0
    check = None if getattr(sim, "backend", "embedded") == "embedded" else ReplayCheck()
    with atomic_dir(out_dir) as tmp:
        writer = FrameShardWriter(tmp, cfg.trajectories_per_shard)
        rows = []
        try:
            from saca.progress import Progress

            episodes = list(episodes)
            for ep in Progress(len(episodes), f"vln-ego {split or ''}".strip(), unit="episode").iterate(episodes):
                frames = replay_frames(sim, ep, check)
                encoded = [encode_image(f, cfg.image_format, cfg.jpeg_quality) for f in frames]
                shard, rg = writer.add(str(ep.episode_id), encoded)
                rows += episode_samples(ep, cfg, turn_angle, shard, rg)
                n_frames += len(frames)
                for k in range(k_noisy):
                    rng = np.random.default_rng([noise.seed, k, *str(ep.episode_id).encode()])
                    frames, targets, _ = noisy_rollout(sim, ep, cfg.n_actions, noise.p, rng)
                    key = f"{ep.episode_id}~{k}"
                    shard, rg = writer.add(key, [encode_image(f, cfg.image_format, cfg.jpeg_quality) for f in frames])
                    rows += episode_samples(ep, cfg, turn_angle, shard, rg, targets=targets, key=key)
                    n_frames += len(frames)
                    n_noisy += 1
        finally:
            writer.close()
        n_samples = write_samples(tmp, rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "episodes": len(episodes),
            "noisy_trajectories": n_noisy,
            "frames": n_frames,
            "samples": n_samples,
            "turn_angle": float(turn_angle),
            "resolution": [sim.config.width, sim.config.height],
            "replay_check": None if check is None else check.as_dict(),
            "config": {
                "n_actions": cfg.n_actions,
                "memory": vars(cfg.memory),
                "image_format": cfg.image_format,
                "jpeg_quality": cfg.jpeg_quality,
                "trajectories_per_shard": cfg.trajectories_per_shard,
                "noise": vars(noise) if k_noisy else None,
            },
        }
        if check is not None and check.steps_off:
            logging.getLogger(__name__).warning(
                "vln-ego %s: the gt replay is off by more than %g m at %d steps of %d of %d episodes (at most %.4f m): "
                "counted, not an error, on %s (a recomputed navmesh or another habitat-sim moves the agent slightly)",
                split or "", REPLAY_TOLERANCE_M, check.steps_off, check.episodes_off, check.episodes,
                check.max_offset_m, sim.backend)
        write_json(Path(tmp) / "manifest.json", manifest)
        from saca.provenance import write_provenance

        write_provenance(tmp, manifest["config"])
    return manifest

"""Replay expert actions, render frames, write VLN-Ego samples (VLN-R1 §3.2).

For an episode with expert actions ``a_0 .. a_{T-1}`` (the last one STOP),
frame ``t`` is the observation before ``a_t``. Sample ``t`` holds the
instruction, history indices from the memory sampler, the current frame index
``t`` and the target ``actions[t .. t+n-1]`` padded with STOP, as option text
with the dataset's real turn angle.
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
class VlnEgoConfig:
    """The ``vln_ego`` config section."""

    n_actions: int = 6
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    trajectories_per_shard: int = 64
    splits: list = field(default_factory=lambda: ["train", "val_seen", "val_unseen"])

    def validate(self, where: str) -> None:
        if self.n_actions < 1:
            raise SacaError(f"{where}.n_actions: must be at least 1")
        if self.image_format not in ("jpeg", "png"):
            raise SacaError(f"{where}.image_format: 'jpeg' or 'png', got '{self.image_format}'")
        if isinstance(self.memory, dict):  # from_dict converts nested sections; direct construction may not
            from saca.config import from_dict

            self.memory = from_dict(MemoryConfig, self.memory, f"{where}.memory")


def replay_frames(sim, episode) -> list:
    """Reset to the episode start and render the frame before each expert action."""
    if not episode.gt_actions:
        raise SacaError(f"episode {episode.episode_id}: no expert actions (is the _gt file missing?)")
    sim.reset(episode)
    frames = []
    for t, a in enumerate(episode.gt_actions):
        if episode.gt_locations:
            ref = episode.gt_locations[t]
            pos = sim.state.position
            if math.hypot(pos[0] - ref[0], pos[2] - ref[2]) > 1e-3:
                raise SacaError(
                    f"episode {episode.episode_id}: replay diverged at step {t} "
                    f"(at {list(pos)}, the _gt file says {ref}); were the scenes regenerated?"
                )
        frames.append(sim.observe().rgb)
        if a != Action.STOP:
            sim.step(a)
    return frames


def episode_samples(episode, cfg: VlnEgoConfig, turn_angle: float, shard: str, row_group: int) -> list[dict]:
    actions = episode.gt_actions
    rows = []
    for t in range(len(actions)):
        target = target_actions(actions, t, cfg.n_actions)
        rows.append(
            {
                "sample_id": f"{episode.episode_id}:{t}",
                "episode_id": str(episode.episode_id),
                "scene_id": episode.scene_id,
                "instruction": episode.instruction_text,
                "step": t,
                "num_frames": len(actions),
                "history": history_indices(t, cfg.memory),
                "actions": target,
                "answer": format_actions(target, turn_angle),
                "turn_angle": float(turn_angle),
                "shard": shard,
                "row_group": row_group,
            }
        )
    return rows


def generate_vln_ego(episodes, sim, cfg: VlnEgoConfig, turn_angle: float, out_dir: str | Path) -> dict:
    """Write a VLN-Ego split directory atomically; returns the manifest."""
    n_samples = n_frames = 0
    with atomic_dir(out_dir) as tmp:
        writer = FrameShardWriter(tmp, cfg.trajectories_per_shard)
        rows = []
        try:
            for ep in episodes:
                frames = replay_frames(sim, ep)
                encoded = [encode_image(f, cfg.image_format, cfg.jpeg_quality) for f in frames]
                shard, rg = writer.add(str(ep.episode_id), encoded)
                rows += episode_samples(ep, cfg, turn_angle, shard, rg)
                n_frames += len(frames)
        finally:
            writer.close()
        n_samples = write_samples(tmp, rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "episodes": len(episodes),
            "frames": n_frames,
            "samples": n_samples,
            "turn_angle": float(turn_angle),
            "resolution": [sim.config.width, sim.config.height],
            "config": {
                "n_actions": cfg.n_actions,
                "memory": vars(cfg.memory),
                "image_format": cfg.image_format,
                "jpeg_quality": cfg.jpeg_quality,
                "trajectories_per_shard": cfg.trajectories_per_shard,
            },
        }
        write_json(Path(tmp) / "manifest.json", manifest)
    return manifest

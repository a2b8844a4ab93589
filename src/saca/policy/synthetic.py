"""Small synthetic VLN-Ego directories, for tests and benchmarks that must not wait for the simulator.

Frames are flat-coloured images whose colour encodes the expert's next action
(plus noise), so a policy can learn the mapping quickly; episodes are random
action sequences ending in STOP. The files are written with the real
:mod:`saca.vln_ego.store` writers, so readers see exactly the workflow format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saca.action_text import format_actions, target_actions
from saca.sim.base import Action
from saca.vln_ego.samplers import MemoryConfig, history_indices
from saca.vln_ego.store import FrameShardWriter, encode_image, write_samples

COLOURS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200), 3: (200, 200, 30)}
INSTRUCTIONS = (
    "Walk past the table and stop next to the red cabinet.",
    "Turn left at the green sofa and wait by the door.",
    "Go forward through the hallway and stop at the yellow lamp.",
)


def synthetic_episode_actions(rng: np.random.Generator, steps: int) -> list[int]:
    body = rng.choice([1, 1, 1, 2, 3], size=max(1, steps - 1)).tolist()
    return [int(a) for a in body] + [int(Action.STOP)]


def make_vln_ego(
    split_dir: str | Path,
    episodes: int = 3,
    steps: int = 10,
    n_actions: int = 6,
    turn_angle: float = 15.0,
    seed: int = 0,
    size: int = 56,
    memory: MemoryConfig | None = None,
    per_shard: int = 2,
    prefix: str = "ep",
) -> Path:
    """Write ``episodes`` trajectories of ``steps`` frames into a VLN-Ego split directory."""
    split_dir = Path(split_dir)
    memory = memory or MemoryConfig(max_frames=8)
    rng = np.random.default_rng(seed)
    writer = FrameShardWriter(split_dir, per_shard)
    rows = []
    for e in range(episodes):
        eid = f"{prefix}{e}"
        actions = synthetic_episode_actions(rng, steps)
        frames = []
        for a in actions:
            img = np.empty((size, size, 3), dtype=np.uint8)
            img[:] = COLOURS[a]
            noise = rng.integers(-20, 21, size=img.shape)
            frames.append(encode_image(np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8), "png"))
        shard, rg = writer.add(eid, frames)
        instruction = INSTRUCTIONS[e % len(INSTRUCTIONS)]
        for t in range(len(actions)):
            target = target_actions(actions, t, n_actions)
            rows.append(
                {
                    "sample_id": f"{eid}:{t}",
                    "episode_id": eid,
                    "scene_id": "synthetic",
                    "instruction": instruction,
                    "step": t,
                    "num_frames": len(actions),
                    "history": history_indices(t, memory),
                    "actions": target,
                    "answer": format_actions(target, turn_angle),
                    "turn_angle": float(turn_angle),
                    "shard": shard,
                    "row_group": rg,
                }
            )
    writer.close()
    write_samples(split_dir, rows)
    return split_dir

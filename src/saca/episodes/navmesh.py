"""Point-goal episodes generated on a Habitat navmesh (a smoke world: docs/habitat.md).

The real R2R-CE / RxR-CE episodes are imported (:mod:`saca.episodes.vlnce`); where no
Matterport3D scene is at hand, the Habitat half of the workflow runs on habitat-sim's own
test scenes with episodes made here: a start and a goal drawn on the navmesh
(``PathFinder.get_random_navigable_point``, seeded), the ground truth from the backend's
teacher (habitat-sim's greedy geodesic follower, :meth:`saca.sim.habitat.HabitatSimulator.teacher_action`),
the reference path its shortest path, and a template instruction that gives the first turn
and the distance. The test scenes have no semantic annotation, so the instructions name no
landmark (``info.landmarks`` is empty).
"""

from __future__ import annotations

import math

import numpy as np

from saca import SacaError
from saca.episodes import Episode
from saca.episodes.generate import (
    MIN_START_GOAL,
    PATH_LIMITS,
    SPLIT_CODE,
    DatasetConfig,
    _direction,
    _turn_word,
    expert_actions,
)
from saca.sim.base import heading_to_quaternion


def instruction(style: str, rng: np.random.Generator, start_heading: float, path, length: float) -> str:
    """Template point-goal instruction: the first turn, the walk's length in metres, stop."""
    nxt = next((p for p in path[1:] if math.hypot(p[0] - path[0][0], p[2] - path[0][2]) > 0.3), path[-1])
    turn = _turn_word(math.degrees(_direction(path[0], nxt) - start_heading))
    first = {"straight": "Walk straight ahead", "around": "Turn around and walk"}.get(turn, f"Turn {turn} and walk")
    metres = max(1, round(length))
    end = ["Stop there.", "Wait there.", "Stop when you get there."][int(rng.integers(3))]
    if style == "r2r":
        return f"{first} about {metres} meters. {end}"
    bends = max(0, len(path) - 2)
    middle = f" The way bends {bends} time{'s' if bends != 1 else ''} around the furniture." if bends else ""
    return f"{first} about {metres} meters to your goal.{middle} {end}"


def generate_navmesh_split(name: str, cfg: DatasetConfig, split: str, scene_ids: list[str], sim) -> list[Episode]:
    """``cfg.episodes[split]`` point-goal episodes on the navmeshes of ``scene_ids`` (Habitat backend),
    deterministic in ``cfg.seed`` and the split. The route's geodesic length is within ``cfg.path_length``
    (default: the style's limits) and at least :data:`MIN_START_GOAL`; episodes whose teacher does not
    reach the goal within the step limit are drawn again."""
    if not scene_ids:
        raise SacaError(f"dataset {name}: no scenes for split {split}")
    n = int(cfg.episodes.get(split, 0))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLIT_CODE[split]]))
    lo, hi = cfg.path_length or PATH_LIMITS[cfg.style]
    lo = max(lo, MIN_START_GOAL)
    episodes: list[Episode] = []
    attempts = 0
    while len(episodes) < n:
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise SacaError(f"dataset {name}/{split}: could not generate {n} episodes with routes of {lo:g}-{hi:g} m "
                            f"on the navmeshes of {', '.join(scene_ids)} (datasets.{name}.path_length)")
        scene_id = scene_ids[attempts % len(scene_ids)]
        sim.load_scene(scene_id)
        start = sim.sample_navigable_point(seed=int(rng.integers(2**31)))
        goal = sim.sample_navigable_point(seed=int(rng.integers(2**31)))
        d = sim.geodesic_distance(start, goal)
        if not (math.isfinite(d) and lo <= d <= hi):
            continue
        steps_per_turn = int(round(360 / cfg.turn_angle))
        heading = math.remainder(2 * math.pi * int(rng.integers(steps_per_turn)) / steps_per_turn, 2 * math.pi)
        path = [list(p) for p in sim.shortest_path(start, goal)]
        ep = Episode(
            episode_id=len(episodes),
            trajectory_id=len(episodes),
            scene_id=scene_id,
            start_position=list(start),
            start_rotation=heading_to_quaternion(heading),
            goals=[{"position": list(goal), "radius": 3.0}],
            reference_path=path,
            instruction_text=instruction(cfg.style, rng, heading, path, d),
        )
        sim.reset(ep)
        ep.start_position = list(sim.state.position)  # snapped: the replay starts where the teacher did
        result = expert_actions(sim, [list(goal)], sim.config.max_steps - 1)
        if result is None:
            continue
        ep.gt_actions, ep.gt_locations = result
        ep.info = {
            "geodesic_distance": round(float(d), 4),
            "landmarks": [],
            "waypoints": [list(goal)],
            "turn_angle": cfg.turn_angle,
            "style": cfg.style,
        }
        episodes.append(ep)
    return episodes

"""Episodes for the embedded mini datasets (``mini_r2r``, ``mini_rxr``).

Each episode visits 1-4 landmark objects in order. Its goal is the approach
point of the last landmark (0.7 m in front of it), its expert actions come from
the simulator's shortest-path follower going through the approach points in
order, and its instruction, built from templates, names the landmarks in order
with the turns between them. ``r2r`` style is short; ``rxr`` style is longer and
richer (room colours, doorways, where landmarks stand).

Splits: ``train`` and ``val_seen`` use the training houses (different episodes,
different seeds); ``val_unseen`` uses the held-out houses only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.episodes import SPLITS, Episode
from saca.sim.base import Action, SimConfig, heading_to_quaternion

APPROACH_DISTANCE = 0.7
MIN_START_GOAL = 4.0  # geodesic; episodes that start within the 3 m success radius would reward doing nothing
SPLIT_CODE = {"train": 0, "val_seen": 1, "val_unseen": 2}
PATH_LIMITS = {"r2r": (3.0, 16.0), "rxr": (6.0, 40.0)}


@dataclass
class DatasetConfig:
    """One entry of the ``datasets`` config section."""

    backend: str = "embedded"
    turn_angle: float = 15
    style: str = "r2r"
    landmarks: list = field(default_factory=lambda: [1, 2])
    path_length: list | None = None  # [min, max] metres of the route through the landmarks; None: the style's PATH_LIMITS
    max_detour: float | None = None  # each leg's geodesic length <= max_detour x its straight-line length; None: any
    # issue 29 (mini-world deviation): the longest run of expert steps in which neither the landmark the expert
    # walks to (or turns to face) nor the one it just reached covers ``visible_fraction`` of the frame; a route
    # with a longer run is rejected. None: no check
    max_unseen_steps: int | None = None
    visible_fraction: float = 0.004
    seed: int = 0
    episodes: dict = field(default_factory=lambda: {"train": 100, "val_seen": 20, "val_unseen": 20})
    sim: dict = field(default_factory=dict)  # overrides of the global ``sim`` section for this dataset (saca.sim.dataset_sim_config)
    # real episodes, imported instead of generated (saca.episodes.vlnce; docs/vlnce.md):
    # {format: r2r_ce | rxr_ce, dir: the extracted archive, role: rxr_ce roles, languages: rxr_ce languages}
    source: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        from saca.sim import check_dataset_sim

        check_dataset_sim(self.sim, where)
        if self.source:
            unknown = sorted(set(self.source) - {"format", "dir", "role", "languages"})
            if unknown:
                raise SacaError(f"unknown config key '{where}.source.{unknown[0]}'; known: format, dir, role, languages")
            if self.source.get("format") not in ("r2r_ce", "rxr_ce"):
                raise SacaError(f"{where}.source.format: 'r2r_ce' or 'rxr_ce', got {self.source.get('format')!r}")
            if not self.source.get("dir"):
                raise SacaError(f"{where}.source.dir: the extracted episode archive (data/datasets/...)")
        if self.style not in PATH_LIMITS:
            raise SacaError(f"{where}.style: unknown style '{self.style}' (r2r or rxr)")
        lo, hi = self.landmarks
        if not 1 <= lo <= hi <= 4:
            raise SacaError(f"{where}.landmarks: need 1 <= min <= max <= 4, got {self.landmarks}")
        if self.path_length is not None:
            if len(self.path_length) != 2 or not MIN_START_GOAL <= self.path_length[0] <= self.path_length[1]:
                raise SacaError(f"{where}.path_length: need {MIN_START_GOAL} <= min <= max (metres), got {self.path_length}")
        if self.max_detour is not None and self.max_detour < 1.0:
            raise SacaError(f"{where}.max_detour: a leg's geodesic length is at least its straight-line length (>= 1.0), got {self.max_detour}")
        if self.max_unseen_steps is not None and (not isinstance(self.max_unseen_steps, int) or self.max_unseen_steps < 0):
            raise SacaError(f"{where}.max_unseen_steps: null or an integer >= 0, got {self.max_unseen_steps!r}")
        if not 0.0 < self.visible_fraction <= 1.0:
            raise SacaError(f"{where}.visible_fraction: must be in (0, 1], got {self.visible_fraction}")
        for k in self.episodes:
            if k not in SPLITS:
                raise SacaError(f"unknown config key '{where}.episodes.{k}'; splits are {', '.join(SPLITS)}")


def approach_point(obj: dict) -> tuple[float, float, float]:
    """The point ``APPROACH_DISTANCE`` m in front of an object (objects face into their room)."""
    yaw = obj["yaw"]
    nx, nz = -math.sin(yaw), math.cos(yaw)
    hx, hz = obj["half_extents"]
    depth = hz if abs(nz) > abs(nx) else hx
    x, _, z = obj["position"]
    d = depth + APPROACH_DISTANCE
    return (x + nx * d, 0.0, z + nz * d)


def _turn_word(angle_deg: float) -> str:
    a = math.remainder(angle_deg, 360.0)
    if abs(a) > 135:
        return "around"
    if a > 40:
        return "left"
    if a < -40:
        return "right"
    return "straight"


def _direction(a, b) -> float:
    """Heading (radians, Habitat convention) of the direction a -> b."""
    return math.atan2(-(b[0] - a[0]), -(b[2] - a[2]))


def _room_of(scene, p) -> dict | None:
    for room in scene["rooms"]:
        x0, z0, x1, z1 = room["rect"]
        if x0 <= p[0] <= x1 and z0 <= p[2] <= z1:
            return room
    return None


class ExpertPlan:
    """The expert as a state machine: walk to waypoint ``i`` (the simulator's shortest-path
    follower), then turn to face ``face[i]``, then the next waypoint; STOP after the last.

    ``next_action(sim)`` reads the simulator's current state, so the plan also gives the
    expert's continuation from states the expert itself never visits (noise-injected
    rollouts, :func:`saca.vln_ego.generate.noisy_rollout`). ``lookahead`` gives the next
    ``n`` actions without changing the simulator or the plan.
    """

    def __init__(self, waypoints, face=None, turn_angle: float = 15.0):
        self.waypoints = [tuple(w) for w in waypoints]
        self.face = None if face is None else [tuple(f) for f in face]
        self.turn_angle = float(turn_angle)
        self.i = 0  # current waypoint
        self.facing = False  # arrived at waypoint i, turning toward face[i]
        self.face_turns = 0

    def next_action(self, sim) -> Action:
        while self.i < len(self.waypoints):
            if not self.facing:
                a = sim.teacher_action(goal=self.waypoints[self.i])
                if a != Action.STOP:
                    return a
                self.facing, self.face_turns = True, 0  # arrived at this waypoint
            if self.face is not None and self.face_turns < int(360 / self.turn_angle):
                s = sim.state
                err = math.remainder(_direction(s.position, self.face[self.i]) - s.heading, 2 * math.pi)
                if abs(err) > math.radians(self.turn_angle) / 2 + 1e-9:
                    self.face_turns += 1
                    return Action.TURN_LEFT if err > 0 else Action.TURN_RIGHT
            self.i, self.facing = self.i + 1, False
        return Action.STOP

    def lookahead(self, sim, n: int, advance: bool = False) -> list[int]:
        """The expert's next ``n`` actions from the simulator's current state (padded with STOP).

        The look-ahead steps the simulator at most ``n - 1`` times and restores it afterwards, so
        it needs that many steps left below ``max_steps``. With ``advance`` the plan itself moves on by
        the first of those actions (as ``next_action`` would), without asking the teacher again."""
        plan, start, out = copy.copy(self), sim.snapshot(), []
        while len(out) < n:
            a = plan.next_action(sim)
            out.append(int(a))
            if len(out) == 1 and advance:
                self.__dict__.update(plan.__dict__)
            if a == Action.STOP or len(out) == n:
                break
            sim.step(a)  # at most n - 1 steps ahead of the current state
        sim.restore(start)
        return out + [int(Action.STOP)] * (n - len(out))


def expert_actions(sim, waypoints, max_steps: int, face=None,
                   targets: list | None = None) -> tuple[list[int], list[list[float]]] | None:
    """Teacher actions through ``waypoints`` in order, ending with STOP; None if it does not get there.

    With ``face`` (one point per waypoint, e.g. the landmark's centre) the
    expert turns toward that point on arrival, so every landmark the
    instruction names is seen, and the episode ends facing the last one.
    ``locations[t]`` is the agent position at frame ``t``, before ``actions[t]``.
    ``targets``, when given, receives for every action the index of the waypoint
    the expert walks to or turns at (the final STOP: the last one).
    """
    actions, locations = [], []
    plan = ExpertPlan(waypoints, face, sim.turn_angle)
    while True:
        a = plan.next_action(sim)
        if a == Action.STOP:
            break
        if len(actions) >= max_steps:
            return None
        locations.append(list(sim.state.position))
        actions.append(int(a))
        if targets is not None:
            targets.append(plan.i)
        sim.step(a)
        if not plan.facing and len(actions) >= 8 and len(set(actions[-8:])) == 2 and Action.MOVE_FORWARD not in actions[-8:]:
            return None  # oscillating between left and right: reject this route
    locations.append(list(sim.state.position))
    actions.append(int(Action.STOP))
    if targets is not None:
        targets.append(len(waypoints) - 1)
    sim.step(Action.STOP)
    return actions, locations


def longest_unseen_run(sim, episode, actions, targets, instances, fraction: float,
                       limit: int | None = None) -> int:
    """The longest run of steps of ``actions`` (replayed from ``episode``'s start) in whose frame neither
    ``instances[targets[t]]`` (the landmark the expert heads for) nor ``instances[targets[t] - 1]`` (the one it
    just reached) covers at least ``fraction`` of the pixels (issue 29, the landmark-visibility check).

    The simulator renders its instance channel for the check (and is set back afterwards); the replay stops
    as soon as the run exceeds ``limit``.
    """
    old = sim.config.instance
    sim.config.instance = True
    try:
        sim.reset(episode)
        best = run = 0
        for a, j in zip(actions, targets):
            inst = sim.observe().instance
            n = inst.size
            seen = any(0 <= i < len(instances) and np.count_nonzero(inst == instances[i]) >= fraction * n
                       for i in (j, j - 1))
            run = 0 if seen else run + 1
            best = max(best, run)
            if limit is not None and best > limit:
                break
            sim.step(int(a))
        return best
    finally:
        sim.config.instance = old


def generate_split(name: str, cfg: DatasetConfig, split: str, scene_ids: list[str], sim) -> list[Episode]:
    """Generate ``cfg.episodes[split]`` episodes deterministically from ``cfg.seed`` and the split."""
    if not scene_ids:
        raise SacaError(f"dataset {name}: no scenes for split {split}")
    n = int(cfg.episodes.get(split, 0))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLIT_CODE[split]]))
    lo_len, hi_len = cfg.path_length or PATH_LIMITS[cfg.style]
    episodes: list[Episode] = []
    attempts = 0
    while len(episodes) < n:
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise SacaError(f"dataset {name}/{split}: could not generate {n} valid episodes in the given scenes")
        scene_id = scene_ids[attempts % len(scene_ids)]  # by attempt: a house too small for a route is skipped
        sim.load_scene(scene_id)
        scene, nav = sim.scene, sim.nav
        objs = scene["objects"]
        k = int(rng.integers(cfg.landmarks[0], cfg.landmarks[1] + 1))
        if len(objs) < k:
            continue
        chosen = [objs[int(i)] for i in rng.choice(len(objs), size=k, replace=False)]
        waypoints = []
        for o in chosen:
            cell = nav.nearest_free_cell(approach_point(o), max_dist=0.5)
            if cell is None:
                break
            waypoints.append(nav.center_of(cell))
        if len(waypoints) < k:
            continue
        starts = nav.free_points(min_clearance=0.3)
        start = tuple(float(v) for v in starts[int(rng.integers(len(starts)))])
        if any(math.hypot(start[0] - w[0], start[2] - w[2]) < 1.5 for w in waypoints[:1]):
            continue
        legs = [start] + waypoints
        dists = [nav.geodesic_distance(a, b) for a, b in zip(legs, legs[1:])]
        total = sum(dists)
        if not all(math.isfinite(d) and d > 1.0 for d in dists) or not lo_len <= total <= hi_len:
            continue
        if cfg.max_detour is not None and any(
            d > cfg.max_detour * math.hypot(b[0] - a[0], b[2] - a[2]) for a, b, d in zip(legs, legs[1:], dists)
        ):
            continue  # a leg bends around walls: its landmark is out of sight from where the leg starts
        if nav.geodesic_distance(start, waypoints[-1]) < MIN_START_GOAL:
            continue
        steps_per_turn = 360 / cfg.turn_angle
        heading = 2 * math.pi * int(rng.integers(int(steps_per_turn))) / steps_per_turn
        heading = math.remainder(heading, 2 * math.pi)
        ep = Episode(
            episode_id=len(episodes),
            trajectory_id=len(episodes),
            scene_id=f"embedded/{scene_id}",
            start_position=list(start),
            start_rotation=heading_to_quaternion(heading),
            goals=[{"position": list(waypoints[-1]), "radius": 3.0}],
            reference_path=[],
            instruction_text="",
        )
        sim.reset(ep)
        targets: list[int] = []
        result = expert_actions(sim, waypoints, sim.config.max_steps - 1, face=[o["position"] for o in chosen],
                                targets=targets)
        if result is None:
            continue
        actions, locations = result
        if cfg.max_unseen_steps is not None and longest_unseen_run(
                sim, ep, actions, targets, [int(o["instance_id"]) for o in chosen], cfg.visible_fraction,
                limit=cfg.max_unseen_steps) > cfg.max_unseen_steps:
            continue  # a landmark out of view for too long along its leg
        path = [start]
        for a, b in zip(legs, legs[1:]):
            path += list(nav.shortest_path(a, b))[1:]
        ep.reference_path = [list(p) for p in _densify(path, 2.0)]
        ep.gt_actions, ep.gt_locations = actions, locations
        ep.instruction_text = make_instruction(cfg.style, rng, scene, chosen, legs, path, heading)
        ep.info = {
            "geodesic_distance": round(float(nav.geodesic_distance(start, waypoints[-1])), 4),
            "path_length": round(float(total), 4),
            "landmarks": [o["name"] for o in chosen],
            "landmark_instances": [int(o["instance_id"]) for o in chosen],
            "waypoints": [list(w) for w in waypoints],
            "turn_angle": cfg.turn_angle,
            "style": cfg.style,
        }
        episodes.append(ep)
    return episodes


def _densify(path, max_gap: float):
    out = [path[0]]
    for a, b in zip(path, path[1:]):
        d = math.hypot(b[0] - a[0], b[2] - a[2])
        n = max(1, int(math.ceil(d / max_gap)))
        for i in range(1, n + 1):
            t = i / n
            out.append((a[0] + t * (b[0] - a[0]), 0.0, a[2] + t * (b[2] - a[2])))
    return out


def _leg_turns(legs, path, start_heading):
    """Turn before each leg: the first relative to the start heading, later ones at each landmark."""
    turns = []
    for i in range(len(legs) - 1):
        a = legs[i]
        nxt = next((p for p in path if _after(p, path, a) and math.hypot(p[0] - a[0], p[2] - a[2]) > 0.3), legs[i + 1])
        out_dir = _direction(a, nxt)
        in_dir = start_heading if i == 0 else _direction(legs[i - 1], a)
        turns.append(_turn_word(math.degrees(out_dir - in_dir)))
    return turns


def _after(p, path, a):
    # the path point p comes after the path point closest to a
    idx_a = min(range(len(path)), key=lambda i: math.hypot(path[i][0] - a[0], path[i][2] - a[2]))
    return path.index(p) > idx_a


def make_instruction(style: str, rng: np.random.Generator, scene, chosen, legs, path, start_heading) -> str:
    """Template instruction naming the landmarks in order with the turns between them."""
    names = [o["name"] for o in chosen]
    turns = _leg_turns(legs, path, start_heading)

    def turn_phrase(t, first=False):
        if t == "straight":
            return "walk straight ahead" if first else "continue straight"
        if t == "around":
            return "turn around"
        return f"turn {t}"

    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if style == "r2r":
        parts = []
        first = turn_phrase(turns[0], first=True)
        parts.append(f"{first.capitalize()} and {pick(['walk to', 'go to', 'head to'])} the {names[0]}")
        for i in range(1, len(names)):
            parts.append(f"then {turn_phrase(turns[i])} and {pick(['go to', 'walk to', 'head towards'])} the {names[i]}")
        end = pick([f"Stop next to the {names[-1]}.", f"Wait by the {names[-1]}.", f"Stop in front of the {names[-1]}."])
        return ", ".join(parts) + ". " + end
    # rxr: longer, with room colours, doorways and where the landmarks stand
    sentences = []
    start_room = _room_of(scene, legs[0])
    if start_room is not None:
        sentences.append(f"You are starting in a {pick(['room', 'space'])} with {start_room['colour']} walls.")
    for i, name in enumerate(names):
        t = turn_phrase(turns[i], first=(i == 0))
        room_from, room_to = _room_of(scene, legs[i]), _room_of(scene, legs[i + 1])
        through = ""
        if room_from is not None and room_to is not None and room_from["id"] != room_to["id"]:
            kind = "hallway" if room_to["kind"] == "hallway" else "room"
            through = f", go through the doorway into the {kind} with {room_to['colour']} walls"
        if i == 0:
            sentences.append(f"{t.capitalize()}{through} and walk towards the {name}, which stands against the wall.")
        else:
            sentences.append(
                f"{pick(['Once you reach it', 'When you get there', 'After that'])}, {t}{through} "
                f"and continue until you are next to the {name}."
            )
    sentences.append(
        pick(
            [
                f"You have arrived when you are standing right in front of the {names[-1]}.",
                f"Stop there, facing the {names[-1]}; that is your destination.",
            ]
        )
    )
    return " ".join(sentences)

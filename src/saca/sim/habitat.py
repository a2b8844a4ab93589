"""Habitat backend (habitat-sim 0.3.1-0.3.4, conda-only; runs on the cluster through envs/habitat.yaml).

Implements :class:`saca.sim.base.Simulator` on Matterport3D scenes as VLN-CE uses
them; ``docs/habitat.md`` describes the design, gives each per-dataset value
with its VLN-CE source and lists every ``habitat_sim`` attribute used, with the
file of habitat-sim v0.3.3 it comes from.

* **Settings per dataset.** Sensors and agent come from :class:`SimConfig`, which a
  dataset overrides (``datasets.<name>.sim``, :func:`saca.sim.dataset_sim_config`):
  R2R-CE and RxR-CE differ in HFOV, camera height, agent radius and height, the
  navmesh (R2R-CE: the scene's shipped ``.navmesh``; RxR-CE: recomputed for
  radius 0.18 m, height 0.88 m) and sliding.
* **Moves** go through the pathfinder, never ``agent.act`` (no action space is
  configured), as Habitat's ``Simulator.step_filter`` filters a body move:
  ``allow_sliding: false`` (VLN-CE RxR-CE): ``PathFinder.try_step_no_sliding``, so a
  blocked step moves the agent up to the contact point with the navmesh's edge
  (Detour ``moveAlongSurface`` without sliding; habitat-sim main, Recast 1.6: the
  wall edge the ray start -> target crosses, ``src/esp/nav/PathFinder.cpp``
  ``tryStep``); ``allow_sliding: true`` (VLN-CE R2R-CE): ``PathFinder.try_step``
  slides along the wall. Either way the step is a collision as Habitat counts it
  (``agent/controls/object_controls.py``: the squared distance moved is shorter
  than the one intended, by more than 1e-5), and the end takes the navmesh height,
  so steps up stairs and slopes move (and are no collision). A full step ends at
  the target's x and z exactly (the pathfinder answers in float32);
  :meth:`HabitatSimulator.move_to` (the base class's question "does a full step
  fit?") is None for a blocked one.
* **Positions** are snapped to the navmesh (``snap_point``) when an episode starts,
  whatever ``is_navigable`` says; a point with no navmesh within 0.5 m raises.
* **Teacher**: :meth:`HabitatSimulator.teacher_action` is habitat-sim's
  ``GreedyGeodesicFollower`` planner (``src/esp/nav/GreedyFollower.cpp``), ported to
  this interface: of the primitives ``[LEFT] * n + [FORWARD]`` and
  ``[RIGHT] * n + [FORWARD]`` it takes the first action of the one that most
  reduces the geodesic distance per metre, with costs for turning, collisions and
  ending within 0.2 m of an obstacle. It tries the actual moves, so it never aims
  through the wall at a navmesh corner (the base class's look-ahead does, and then
  turns left and right until ``max_steps``). The embedded backend keeps the base
  class's teacher.
* **Observations** follow :class:`saca.sim.base.Observation`: depth in metres with
  the clip planes :data:`~saca.sim.base.DEPTH_NEAR` / :data:`~saca.sim.base.DEPTH_FAR`
  and ``DEPTH_FAR`` where nothing was rendered (Habitat writes 0 there,
  ``src/esp/gfx_batch/DepthUnprojection.cpp``); instance ids are the semantic
  sensor's ids that have a labelled object in the semantic scene, -1 elsewhere
  (Habitat writes 0 for background).
* **One scene load per group**: simulators with the same scene and the same render
  and navmesh settings share one ``habitat_sim.Simulator`` (:class:`ScenePool`,
  reference-counted). Each render sets the agent state first, and nothing else in
  the habitat simulator depends on which of them uses it.

The contract tests in ``tests/test_sim_contract.py`` run against this backend
wherever ``habitat_sim`` imports and a test scene is given by the
``SACA_HABITAT_TEST_SCENE`` environment variable; ``tests/test_sim_habitat.py``
runs it everywhere against a geometric stand-in (``tests/fakes/``).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.sim.base import (
    DEPTH_FAR,
    DEPTH_NEAR,
    Action,
    Observation,
    SimConfig,
    Simulator,
    forward_vector,
    heading_to_quaternion,
)

log = logging.getLogger(__name__)

MOVE_TOLERANCE_M = 1e-3  # a no-sliding step whose horizontal end misses the target by more is blocked
SNAP_LIMIT_M = 0.5  # a start position farther than this from the navmesh is an error
CONTACT_BACKOFF_M = 1e-3  # a blocked no-sliding step ends this far before the wall (see forward_move)
COLLISION_EPS = 1e-5  # habitat_sim/agent/controls/object_controls.py: EPS of the collision test (squared metres)

# GreedyGeodesicFollowerImpl (habitat-sim v0.3.3 src/esp/nav/GreedyFollower.h / GreedyFollower.cpp)
GREEDY_COLLISION_COST = 0.25  # collisionCost_
GREEDY_CLOSE_TO_OBSTACLE_M = 0.2  # closeToObsThreshold_
GREEDY_CLOSE_TO_OBSTACLE_COST = 0.05  # computeReward: "Avoid being close to an obstacle"
GREEDY_TURN_COST = 0.0125  # computeReward: "Prefer shortest primitives", per turn
GREEDY_GOOD_ENOUGH = 0.99  # nextBestPrimAlong: goodEnoughRewardThresh


def _import_habitat():
    try:
        import habitat_sim  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the cluster env
        raise SacaError(
            "the habitat backend needs habitat-sim (conda-only): create envs/habitat.yaml, "
            "or use backend 'embedded'"
        ) from err
    return habitat_sim


# --- one habitat_sim.Simulator per scene and settings ---------------------------------------------

@dataclass(eq=False)
class SharedScene:
    """One loaded scene: the habitat simulator, its instance labels, and how many users hold it."""

    key: tuple
    sim: object
    labels: dict = field(default_factory=dict)
    refs: int = 1
    lut: np.ndarray = field(default_factory=lambda: np.full(1, -1, dtype=np.int32))


class ScenePool:
    """Reference-counted ``habitat_sim.Simulator`` instances keyed by scene and settings.

    ``acquire(key, build, previous)`` returns the entry for ``key``, building it with
    ``build(reuse)`` if none is open. ``previous`` (the caller's entry, if any) is
    released; when the caller was its only user, its simulator is reconfigured for the
    new scene instead of being closed and a new one created (one GL context kept).
    ``release(entry)`` closes the simulator when its last user lets go.
    """

    def __init__(self):
        self._entries: dict[tuple, SharedScene] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def refs(self, key: tuple) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.refs

    def acquire(self, key: tuple, build, previous: SharedScene | None = None) -> SharedScene:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.refs += 1
                if previous is not None:
                    self.release(previous)
                return entry
            reuse = None
            if previous is not None and previous.refs == 1 and self._entries.get(previous.key) is previous:
                del self._entries[previous.key]
                previous.refs = 0
                reuse = previous.sim
            elif previous is not None:
                self.release(previous)
            try:
                sim, labels = build(reuse)
            except BaseException:
                if reuse is not None:
                    reuse.close()
                raise
            entry = SharedScene(key, sim, labels)
            if labels:
                entry.lut = np.full(max(labels) + 1, -1, dtype=np.int32)
                for k in labels:
                    entry.lut[k] = k
            self._entries[key] = entry
            return entry

    def release(self, entry: SharedScene) -> None:
        with self._lock:
            if entry.refs <= 0:
                return
            entry.refs -= 1
            if entry.refs == 0:
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
                entry.sim.close()


POOL = ScenePool()


class HabitatSimulator(Simulator):
    backend = "habitat"

    def __init__(self, config: SimConfig, turn_angle: float, scenes_dir, pool: ScenePool | None = None):
        super().__init__(config, turn_angle)
        self.hs = _import_habitat()
        self.scenes_dir = Path(scenes_dir)
        self.pool = POOL if pool is None else pool
        self._shared: SharedScene | None = None
        self._scene_id: str | None = None

    # --- scene ---------------------------------------------------------------
    def scene_path(self, scene_id: str) -> Path:
        p = Path(scene_id)
        return p if p.is_absolute() else self.scenes_dir / p

    def settings_key(self) -> tuple:
        """Everything that goes into the habitat simulator and its navmesh: instances that
        agree on it (and on the scene) share one ``habitat_sim.Simulator``."""
        c = self.config
        return (c.width, c.height, float(c.hfov), float(c.camera_height), bool(c.depth), bool(c.instance),
                float(c.agent_radius), float(c.agent_height), bool(c.allow_sliding), bool(c.recompute_navmesh),
                int(c.gpu_device_id))

    @property
    def _sim(self):
        return None if self._shared is None else self._shared.sim

    def load_scene(self, scene_id: str) -> None:
        if self._shared is not None and self._scene_id == scene_id:
            return
        path = self.scene_path(scene_id)
        if not path.exists():
            raise SacaError(f"unknown scene: {path} does not exist (scene_id '{scene_id}')")
        key = (str(path.resolve()), self.settings_key())
        previous, self._shared, self._scene_id = self._shared, None, None
        self._shared = self.pool.acquire(key, lambda reuse: self._build(path, reuse), previous)
        self._scene_id = scene_id
        self._forget_frames()

    def configuration(self, path: Path):
        """The ``habitat_sim.Configuration`` of a scene under this simulator's settings."""
        hs, c = self.hs, self.config
        backend = hs.SimulatorConfiguration()
        backend.scene_id = str(path)
        backend.allow_sliding = bool(c.allow_sliding)
        backend.enable_physics = False
        backend.gpu_device_id = int(c.gpu_device_id)  # -1: EGL's default display (Mesa llvmpipe on a CPU machine)
        sensors = []
        for uuid, kind, on in (
            ("rgb", hs.SensorType.COLOR, True),
            ("depth", hs.SensorType.DEPTH, c.depth),
            ("semantic", hs.SensorType.SEMANTIC, c.instance),
        ):
            if not on:
                continue
            spec = hs.CameraSensorSpec()
            spec.uuid, spec.sensor_type = uuid, kind
            spec.resolution = [c.height, c.width]
            spec.position = [0.0, c.camera_height, 0.0]
            spec.hfov = c.hfov
            spec.near, spec.far = DEPTH_NEAR, DEPTH_FAR
            sensors.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.height = c.agent_height
        agent.radius = c.agent_radius
        agent.sensor_specifications = sensors
        agent.action_space = {}  # moves go through the pathfinder (forward_move), never agent.act
        return hs.Configuration(backend, [agent])

    def _build(self, path: Path, reuse):
        """Load ``path`` (a new habitat simulator, or ``reuse`` reconfigured) and set up its navmesh."""
        hs, c = self.hs, self.config
        cfg = self.configuration(path)
        if reuse is None:
            sim = hs.Simulator(cfg)
        else:
            reuse.reconfigure(cfg)
            sim = reuse
        try:
            pf = sim.pathfinder
            if c.recompute_navmesh:
                settings = hs.NavMeshSettings()
                settings.set_defaults()
                settings.agent_radius = c.agent_radius
                settings.agent_height = c.agent_height
                if not sim.recompute_navmesh(pf, settings) or not pf.is_loaded:
                    raise SacaError(f"scene {path}: recomputing the navmesh for agent_radius {c.agent_radius} m, "
                                    f"agent_height {c.agent_height} m failed")
            elif not pf.is_loaded:
                raise SacaError(f"scene {path}: no navmesh loaded; sim.recompute_navmesh is false, so the scene's "
                                f"own {path.with_suffix('.navmesh').name} is needed")
            else:
                shipped = getattr(pf, "nav_mesh_settings", None)
                if shipped is not None and (not math.isclose(shipped.agent_radius, c.agent_radius, abs_tol=1e-3)
                                            or not math.isclose(shipped.agent_height, c.agent_height, abs_tol=1e-3)):
                    log.warning("scene %s: its navmesh was built for agent radius %.3f m, height %.3f m; "
                                "sim.agent_radius/agent_height say %.3f m, %.3f m (sim.recompute_navmesh is false)",
                                path, shipped.agent_radius, shipped.agent_height, c.agent_radius, c.agent_height)
            labels: dict[int, str] = {}
            scene = sim.semantic_scene if c.instance else None
            if scene is not None:
                for obj in scene.objects:
                    if obj is None or obj.category is None or int(obj.semantic_id) < 0:
                        continue
                    name = obj.category.name()
                    if name:
                        labels[int(obj.semantic_id)] = name
        except BaseException:
            if reuse is None:
                sim.close()
            raise
        return sim, labels

    def _need(self):
        if self._shared is None:
            raise SacaError("no scene loaded: call reset(episode) or load_scene(scene_id) first")
        return self._shared.sim

    @property
    def instance_labels(self) -> dict[int, str]:
        return {} if self._shared is None else dict(self._shared.labels)

    # --- rendering -----------------------------------------------------------
    def render(self, position, heading: float) -> Observation:
        sim = self._need()
        state = self.hs.AgentState()
        state.position = np.asarray(position, dtype=np.float32)
        state.rotation = heading_to_quaternion(heading)  # [x, y, z, w]: Agent.set_state applies quat_from_coeffs
        sim.get_agent(0).set_state(state, reset_sensors=True)
        obs = sim.get_sensor_observations()
        rgb = np.ascontiguousarray(np.asarray(obs["rgb"])[:, :, :3], dtype=np.uint8)
        depth = None
        if "depth" in obs:
            d = np.asarray(obs["depth"], dtype=np.float32)
            depth = np.where(np.isfinite(d) & (d > 0), d, np.float32(DEPTH_FAR)).astype(np.float32)
        inst = None
        if "semantic" in obs:
            sem = np.asarray(obs["semantic"]).astype(np.int64)
            lut = self._shared.lut
            inside = (sem >= 0) & (sem < len(lut))
            inst = np.where(inside, lut[np.clip(sem, 0, len(lut) - 1)], -1).astype(np.int32)
        return Observation(rgb=rgb, depth=depth, instance=inst)

    # --- navigation ----------------------------------------------------------
    def move_to(self, start, target):
        """End of a full straight step, or None if it is blocked (``try_step_no_sliding`` stops short
        of the target by more than 1 mm). The end keeps the target's x and z and takes the navmesh
        height there (stairs, slopes)."""
        pf = self._need().pathfinder
        t = np.asarray(target, dtype=np.float64)
        end = np.asarray(pf.try_step_no_sliding(np.asarray(start, dtype=np.float32), t.astype(np.float32)), dtype=np.float64)
        if not np.all(np.isfinite(end)) or math.hypot(end[0] - t[0], end[2] - t[2]) > MOVE_TOLERANCE_M:
            return None
        return (float(t[0]), float(end[1]), float(t[2]))

    def forward_move(self, start, target):
        """Habitat's body move: ``step_filter`` (``try_step`` with sliding, ``try_step_no_sliding``
        without: a blocked step ends at the contact point) and ``ObjectControls``' collision test."""
        pf = self._need().pathfinder
        s = np.asarray(start, dtype=np.float64)
        t = np.asarray(target, dtype=np.float64)
        step = pf.try_step if self.config.allow_sliding else pf.try_step_no_sliding
        end = np.asarray(step(s.astype(np.float32), t.astype(np.float32)), dtype=np.float64)
        if not np.all(np.isfinite(end)):
            return tuple(start), True
        intended, moved = float(np.sum((t - s) ** 2)), float(np.sum((end - s) ** 2))
        collided = moved + COLLISION_EPS < intended
        full = math.hypot(end[0] - t[0], end[2] - t[2]) <= MOVE_TOLERANCE_M
        if not self.config.allow_sliding and not collided and full:
            return (float(t[0]), float(end[1]), float(t[2])), False  # a full step: exactly the target's x, z
        if not self.config.allow_sliding and collided:
            # habitat-sim 57ee494's tryStep without sliding blocks every move whose start lies on a wall edge (its
            # ray-edge test hits that edge at t = 0, whatever the direction): an agent left on the contact point
            # could never move again. Stop CONTACT_BACKOFF_M short of it, inside the navmesh.
            ahead = float(np.hypot(end[0] - s[0], end[2] - s[2]))
            if ahead > 0.0:
                k = max(0.0, ahead - CONTACT_BACKOFF_M) / ahead
                back = (float(s[0] + k * (end[0] - s[0])), float(end[1]), float(s[2] + k * (end[2] - s[2])))
                # 57ee494 takes the wall crossing nearest the *target*: a ray that leaves the navmesh (cutting a
                # corner) and comes back "hits" where it re-enters, and 1 mm before that lies off the navmesh,
                # where every later move is blocked. Such a step is a collision that leaves the agent where it was.
                if self._on_navmesh(back):
                    return back, True
            return tuple(float(v) for v in start), True
        return tuple(float(v) for v in end), collided

    def _on_navmesh(self, position) -> bool:
        """True if ``position`` (in float32) lies on a navmesh polygon: ``snap_point`` keeps its x and z
        exactly (Detour's ``closestPointOnPoly`` copies a point over its polygon); a point off the navmesh, even
        by a fraction of a millimetre, snaps onto the nearest edge."""
        p = np.asarray(position, dtype=np.float32)
        snapped = np.asarray(self._need().pathfinder.snap_point(p), dtype=np.float32)
        return bool(snapped[0] == p[0] and snapped[2] == p[2])

    def snap_to_floor(self, position):
        """The navmesh point nearest ``position`` (always snapped: its height is the navmesh's)."""
        pf = self._need().pathfinder
        p = np.asarray(position, dtype=np.float64)
        snapped = np.asarray(pf.snap_point(p.astype(np.float32)), dtype=np.float64)
        if not np.all(np.isfinite(snapped)):
            raise SacaError(f"position {list(map(float, position))} is not navigable in scene {self._scene_id}: "
                            "no navmesh near it")
        if float(np.linalg.norm(snapped - p)) > SNAP_LIMIT_M:
            raise SacaError(f"position {list(map(float, position))} is not navigable in scene {self._scene_id}: "
                            f"the nearest navmesh point {[round(float(v), 3) for v in snapped]} is more than "
                            f"{SNAP_LIMIT_M} m away")
        return tuple(float(v) for v in snapped)

    def _path(self, a, b):
        path = self.hs.ShortestPath()
        path.requested_start = np.asarray(a, dtype=np.float32)
        path.requested_end = np.asarray(b, dtype=np.float32)
        found = self._need().pathfinder.find_path(path)
        return found, path

    def _raw_geodesic(self, a, b) -> float:
        found, path = self._path(a, b)
        return float(path.geodesic_distance) if found else math.inf

    def geodesic_distance(self, a, b) -> float:
        g = self._raw_geodesic(a, b)
        if not math.isfinite(g):
            return math.inf
        euclid = float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))
        return max(g, euclid)

    def shortest_path(self, a, b):
        found, path = self._path(a, b)
        return [tuple(float(v) for v in p) for p in path.points] if found else []

    def sample_navigable_point(self, seed: int | None = None):
        """A random navmesh point; ``seed`` reseeds the pathfinder's generator first (``PathFinder.seed``)."""
        pf = self._need().pathfinder
        if seed is not None:
            pf.seed(int(seed))
        return tuple(float(v) for v in pf.get_random_navigable_point())

    # --- teacher -------------------------------------------------------------
    def teacher_action(self, goal=None) -> Action:
        """habitat-sim's greedy geodesic follower (``GreedyGeodesicFollowerImpl::nextBestPrimAlong``,
        v0.3.3 ``src/esp/nav/GreedyFollower.cpp``) on this simulator's own moves.

        STOP once the geodesic distance is below ``stop_radius`` (as the base class).
        Otherwise, for ``n = 0, 1, ...`` while ``n * turn_angle < 180`` deg, the primitives
        ``[LEFT] * n + [FORWARD]`` then ``[RIGHT] * n + [FORWARD]`` are scored by trying
        the forward step from the turned pose: geodesic distance gained / forward step,
        minus 0.0125 per turn, 0.25 if the step collides and 0.05 if it ends within 0.2 m
        of an obstacle; the first strictly best one is kept, and the search stops once
        a score exceeds 0.99. The answer is its first action. Habitat's planner is the
        same except its thrashing fix, which needs an action history (this teacher is
        asked from states it did not produce: noisy rollouts, restored snapshots); the
        search is deterministic, so after the chosen turn the same primitive, one turn
        shorter, scores best again and the agent does not thrash. If every primitive
        collides, the base class's rule answers.
        """
        s = self.state
        goal = self.episode.goal_position if goal is None else goal
        d0 = self._raw_geodesic(s.position, goal)
        if not math.isfinite(d0):
            raise SacaError(f"teacher: goal {list(map(float, goal))} cannot be reached from {list(s.position)} "
                            f"on the navmesh of scene {self._scene_id}")
        if max(d0, math.dist(s.position, goal)) < self.config.stop_radius:
            return Action.STOP
        pf = self._need().pathfinder
        step = self.config.forward_step
        turn = math.radians(self.turn_angle)
        best_reward, best = -GREEDY_COLLISION_COST, None
        n = 0
        while n * turn < math.pi - 1e-9:
            for sign, first in ((1.0, Action.TURN_LEFT), (-1.0, Action.TURN_RIGHT)):
                heading = math.remainder(s.heading + sign * n * turn, 2 * math.pi)
                target = np.asarray(s.position) + step * forward_vector(heading)
                end, collided = self.forward_move(s.position, tuple(float(v) for v in target))
                after = self._raw_geodesic(end, goal)
                clearance = float(pf.distance_to_closest_obstacle(np.asarray(end, dtype=np.float32),
                                                                  1.1 * GREEDY_CLOSE_TO_OBSTACLE_M))
                reward = ((d0 - after) / step - GREEDY_TURN_COST * n
                          - (GREEDY_COLLISION_COST if collided else 0.0)
                          - (GREEDY_CLOSE_TO_OBSTACLE_COST if clearance < GREEDY_CLOSE_TO_OBSTACLE_M else 0.0))
                if reward > best_reward:
                    best_reward, best = reward, (first if n else Action.MOVE_FORWARD)
            if best_reward > GREEDY_GOOD_ENOUGH:
                break
            n += 1
        if best is None:
            return super().teacher_action(goal)
        return best

    def close(self) -> None:
        """Let go of the shared scene (closed when its last user lets go). Idempotent."""
        if self._shared is not None:
            shared, self._shared = self._shared, None
            self.pool.release(shared)
        self._scene_id = None
        self._forget_frames()

    def __del__(self):  # a simulator dropped without close() must not pin its scene in the pool
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the pool may already be gone
            pass

"""Habitat backend (habitat-sim 0.3, conda-only; runs on the cluster through envs/habitat.yaml).

Implements :class:`saca.sim.base.Simulator` on Matterport3D scenes as VLN-CE
uses them: RGB/depth/semantic sensors at ``camera_height``, the navmesh
recomputed for ``agent_radius``, geodesic distances and shortest paths from
the pathfinder. Collisions follow this project's contract (a blocked forward
step does not move the agent), i.e. ``allow_sliding=False`` with the partial
move undone; VLN-CE's default slides along walls, so numbers for published
comparisons should set ``sliding: true`` **(deviation, documented in docs/data.md)**.

The contract tests in ``tests/test_sim_contract.py`` run against this backend
wherever ``habitat_sim`` imports and a test scene is given by the
``SACA_HABITAT_TEST_SCENE`` environment variable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.sim.base import Observation, SimConfig, Simulator, heading_to_quaternion


def _import_habitat():
    try:
        import habitat_sim  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the cluster env
        raise SacaError(
            "the habitat backend needs habitat-sim (conda-only): create envs/habitat.yaml, "
            "or use backend 'embedded'"
        ) from err
    return habitat_sim


class HabitatSimulator(Simulator):
    backend = "habitat"

    def __init__(self, config: SimConfig, turn_angle: float, scenes_dir):
        super().__init__(config, turn_angle)
        self.hs = _import_habitat()
        self.scenes_dir = Path(scenes_dir)
        self._sim = None
        self._scene_id: str | None = None
        self._labels: dict[int, str] = {}

    # --- scene ---------------------------------------------------------------
    def scene_path(self, scene_id: str) -> Path:
        p = Path(scene_id)
        return p if p.is_absolute() else self.scenes_dir / p

    def load_scene(self, scene_id: str) -> None:
        if self._scene_id == scene_id:
            return
        path = self.scene_path(scene_id)
        if not path.exists():
            raise SacaError(f"unknown scene: {path} does not exist (scene_id '{scene_id}')")
        hs, c = self.hs, self.config
        backend = hs.SimulatorConfiguration()
        backend.scene_id = str(path)
        backend.allow_sliding = False
        backend.enable_physics = False
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
            sensors.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.radius = c.agent_radius
        agent.height = 1.5
        agent.sensor_specifications = sensors
        agent.action_space = {}
        cfg = hs.Configuration(backend, [agent])
        if self._sim is None:
            self._sim = hs.Simulator(cfg)
        else:
            self._sim.reconfigure(cfg)
        settings = hs.NavMeshSettings()
        settings.set_defaults()
        settings.agent_radius = c.agent_radius
        settings.agent_height = 1.5
        self._sim.recompute_navmesh(self._sim.pathfinder, settings)
        self._labels = {}
        if c.instance and self._sim.semantic_scene is not None:
            for obj in self._sim.semantic_scene.objects:
                if obj is not None and obj.category is not None:
                    self._labels[int(obj.semantic_id)] = obj.category.name()
        self._scene_id = scene_id
        self._obs_cache = None

    def _need(self):
        if self._sim is None:
            raise SacaError("no scene loaded: call reset(episode) or load_scene(scene_id) first")
        return self._sim

    @property
    def instance_labels(self) -> dict[int, str]:
        return dict(self._labels)

    # --- rendering -----------------------------------------------------------
    def render(self, position, heading: float) -> Observation:
        sim = self._need()
        from habitat_sim.utils.common import quat_from_coeffs

        state = self.hs.AgentState()
        state.position = np.asarray(position, dtype=np.float32)
        state.rotation = quat_from_coeffs(heading_to_quaternion(heading))
        sim.get_agent(0).set_state(state, reset_sensors=True)
        obs = sim.get_sensor_observations()
        rgb = np.asarray(obs["rgb"])[:, :, :3].astype(np.uint8)
        depth = np.asarray(obs["depth"], dtype=np.float32) if "depth" in obs else None
        inst = np.asarray(obs["semantic"], dtype=np.int32) if "semantic" in obs else None
        return Observation(rgb=rgb, depth=depth, instance=inst)

    # --- navigation ----------------------------------------------------------
    def move_to(self, start, target):
        pf = self._need().pathfinder
        end = pf.try_step_no_sliding(np.asarray(start, dtype=np.float32), np.asarray(target, dtype=np.float32))
        if float(np.linalg.norm(np.asarray(end) - np.asarray(target))) > 1e-3:
            return None
        return tuple(float(v) for v in end)

    def snap_to_floor(self, position):
        pf = self._need().pathfinder
        p = np.asarray(position, dtype=np.float32)
        if not pf.is_navigable(p):
            snapped = np.asarray(pf.snap_point(p))
            if not np.all(np.isfinite(snapped)) or np.linalg.norm(snapped - p) > 0.5:
                raise SacaError(f"position {list(map(float, position))} is not navigable in scene {self._scene_id}")
            p = snapped
        return tuple(float(v) for v in p)

    def _path(self, a, b):
        path = self.hs.ShortestPath()
        path.requested_start = np.asarray(a, dtype=np.float32)
        path.requested_end = np.asarray(b, dtype=np.float32)
        found = self._need().pathfinder.find_path(path)
        return found, path

    def geodesic_distance(self, a, b) -> float:
        found, path = self._path(a, b)
        if not found:
            return math.inf
        euclid = float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))
        return max(float(path.geodesic_distance), euclid)

    def shortest_path(self, a, b):
        found, path = self._path(a, b)
        return [tuple(float(v) for v in p) for p in path.points] if found else []

    def sample_navigable_point(self):
        return tuple(float(v) for v in self._need().pathfinder.get_random_navigable_point())

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None
            self._scene_id = None

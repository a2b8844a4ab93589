"""A geometric stand-in for ``habitat_sim`` (0.3.3): only what ``saca.sim.habitat`` uses.

Never importable as ``habitat_sim``: tests load this file by path and put it into
``sys.modules["habitat_sim"]`` with ``monkeypatch`` (tests/test_sim_habitat.py), so
``importlib.util.find_spec("habitat_sim")`` in tests/test_sim_contract.py still sees
no Habitat here.

Names, signatures and defaults follow habitat-sim v0.3.3:

* ``SimulatorConfiguration`` ``CameraSensorSpec`` ``NavMeshSettings``
  ``ShortestPath`` ``PathFinder``: ``src/esp/bindings/{Sim,Sensor,ShortestPath}Bindings.cpp``
  (C++ defaults: ``allow_sliding`` true, sensor position ``[0, 1.5, 0]``, near 0.01,
  far 1000; ``NavMeshSettings::setDefaults`` in ``src/esp/nav/PathFinder.h``);
* ``agent.AgentConfiguration`` ``AgentState``: ``src_python/habitat_sim/agent/agent.py``;
* ``Configuration`` ``Simulator``: ``src_python/habitat_sim/simulator.py``.

A scene file is JSON (whatever its suffix)::

    {"floor": [{"rect": [x0, z0, x1, z1], "y": 0.0} | {"rect": [...], "ramp": [y_at_x0, y_at_x1]}, ...],
     "navmesh": {"agent_radius": 0.1, "agent_height": 1.5} | null,   # the shipped .navmesh, if any
     "objects": [{"id": 5, "name": "chair"}, ...]}

The navmesh is the union of the ``floor`` rectangles (already eroded: recomputing it
records the settings and rebuilds the same rectangles). Geometry is exact for
axis-aligned rectangles: a segment is inside the union where the Liang-Barsky
intervals of the rectangles cover it, shortest paths bend at the union's reflex corners
(visibility graph of the reflex corners + Dijkstra), ``try_step_no_sliding`` stops where the segment
leaves the navmesh, the contact point with its edge (habitat-sim main, Recast 1.6.0:
``PathFinder::Impl::tryStep`` with ``allowSliding`` false takes, of the wall edges that the ray
start -> end crosses, the crossing nearest the target: where the ray comes back onto the navmesh
if it cuts the corner of an obstacle; v0.3.3: Detour's ``moveAlongSurface(allowSliding=false)`` of
``erikwijmans/recastnavigation``, the first wall), ``try_step`` slides to the navmesh point nearest
the target, ``snap_point`` returns the nearest navmesh point or NaN beyond Detour's
search box (half extents 2, 4, 2 m; ``projectToPoly`` in ``src/esp/nav/PathFinder.cpp``).

Sensors: the top half of every image is "nothing rendered" (depth 0, semantic 0, as
Habitat writes them), the bottom half shows object 5 (left quarter, depth 2 m), an
id with no object, 7 (next quarter, 3 m) and unlabelled floor, id 0 (right half, 1 m).
RGB encodes the pose, so frames differ between poses and repeat for the same pose.
"""

from __future__ import annotations

import enum
import heapq
import json
import math
import types
from pathlib import Path

import numpy as np

__version__ = "0.3.3+saca-fake"

LOG: dict = {"simulators": [], "recompute": [], "reconfigure": 0, "closed": 0}


def reset_log() -> None:
    LOG.update(simulators=[], recompute=[], reconfigure=0, closed=0)


class SensorType(enum.Enum):
    NONE = 0
    COLOR = 1
    DEPTH = 2
    SEMANTIC = 3


class SimulatorConfiguration:
    def __init__(self):
        self.scene_id = ""
        self.scene_dataset_config_file = "default"
        self.random_seed = 0
        self.default_agent_id = 0
        self.gpu_device_id = 0
        self.allow_sliding = True
        self.enable_physics = False
        self.create_renderer = False
        self.load_semantic_mesh = False
        self.requires_textures = True


class CameraSensorSpec:
    def __init__(self):
        self.uuid = ""
        self.sensor_type = SensorType.COLOR
        self.resolution = [128, 128]
        self.position = [0.0, 1.5, 0.0]
        self.orientation = [0.0, 0.0, 0.0]
        self.hfov = 90.0
        self.near = 0.01
        self.far = 1000.0


class NavMeshSettings:
    def __init__(self):
        self.set_defaults()

    def set_defaults(self):
        self.cell_size = 0.05
        self.cell_height = 0.2
        self.agent_height = 1.5
        self.agent_radius = 0.1
        self.agent_max_climb = 0.2
        self.agent_max_slope = 45.0
        self.include_static_objects = False


class ShortestPath:
    def __init__(self):
        self.requested_start = np.zeros(3, dtype=np.float32)
        self.requested_end = np.zeros(3, dtype=np.float32)
        self.points = []
        self.geodesic_distance = math.inf


class AgentState:
    def __init__(self, position=None, rotation=None):
        self.position = np.zeros(3) if position is None else position
        self.rotation = [0.0, 0.0, 0.0, 1.0] if rotation is None else rotation
        self.sensor_states = {}


class AgentConfiguration:
    def __init__(self, height=1.5, radius=0.1, sensor_specifications=None, action_space=None):
        self.height = height
        self.radius = radius
        self.sensor_specifications = [] if sensor_specifications is None else sensor_specifications
        self.action_space = {"move_forward": None, "turn_left": None, "turn_right": None} if action_space is None else action_space


class Agent:
    def __init__(self, agent_config: AgentConfiguration):
        self.agent_config = agent_config
        self.state = AgentState()

    def set_state(self, state, reset_sensors=True, infer_sensor_states=True, is_initial=False):
        rot = state.rotation
        if not isinstance(rot, (list, tuple, np.ndarray)) or len(rot) != 4:
            raise TypeError("rotation must be quaternion coefficients [x, y, z, w]")
        pos = np.asarray(state.position, dtype=np.float64)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise ValueError(f"bad position {state.position!r}")
        self.state = AgentState(pos.copy(), [float(v) for v in rot])

    def get_state(self):
        return self.state


agent = types.SimpleNamespace(AgentConfiguration=AgentConfiguration, AgentState=AgentState, Agent=Agent)


class Configuration:
    def __init__(self, sim_cfg, agents):
        self.sim_cfg = sim_cfg
        self.agents = agents
        self.metadata_mediator = None
        self.enable_batch_renderer = False


# --- navmesh geometry ---------------------------------------------------------------------------

class _Rect:
    def __init__(self, spec: dict):
        x0, z0, x1, z1 = (float(v) for v in spec["rect"])
        self.x0, self.z0, self.x1, self.z1 = min(x0, x1), min(z0, z1), max(x0, x1), max(z0, z1)
        self.ramp = spec.get("ramp")
        self.y = float(spec.get("y", 0.0))

    def contains(self, x, z, eps=1e-9):
        return self.x0 - eps <= x <= self.x1 + eps and self.z0 - eps <= z <= self.z1 + eps

    def height(self, x):
        if self.ramp is None:
            return self.y
        a, b = self.ramp
        return a + (b - a) * (min(max(x, self.x0), self.x1) - self.x0) / (self.x1 - self.x0)

    def clamp(self, x, z):
        return min(max(x, self.x0), self.x1), min(max(z, self.z0), self.z1)

    def clip(self, ax, az, bx, bz):
        """Parameter interval of segment a->b inside this rectangle (Liang-Barsky), or None."""
        t0, t1 = 0.0, 1.0
        dx, dz = bx - ax, bz - az
        for p, q in ((-dx, ax - self.x0), (dx, self.x1 - ax), (-dz, az - self.z0), (dz, self.z1 - az)):
            if abs(p) < 1e-15:
                if q < -1e-9:
                    return None
                continue
            r = (q + 1e-9) / p
            if p < 0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
        return (t0, t1) if t0 <= t1 else None

    def area(self):
        return (self.x1 - self.x0) * (self.z1 - self.z0)


class PathFinder:
    def __init__(self):
        self._rects: list[_Rect] = []
        self._settings = None
        self._rng = np.random.default_rng(0)
        self._corners: list[tuple[float, float]] = []
        self._graph: dict[int, list[tuple[int, float]]] = {}
        self._boundary = np.zeros((0, 2))

    # state
    @property
    def is_loaded(self) -> bool:
        return bool(self._rects)

    @property
    def nav_mesh_settings(self):
        return self._settings

    def seed(self, new_seed: int) -> None:
        self._rng = np.random.default_rng(new_seed)

    def _build(self, floor: list, settings) -> None:
        self._rects = [_Rect(r) for r in floor]
        self._settings = settings
        xs = sorted({v for r in self._rects for v in (r.x0, r.x1)})
        zs = sorted({v for r in self._rects for v in (r.z0, r.z1)})
        corners = [(x, z) for x in xs for z in zs if self._inside(x, z) and self._reflex(x, z)]
        self._corners = corners
        self._graph = {i: [] for i in range(len(corners))}
        for i in range(len(corners)):
            for j in range(i + 1, len(corners)):
                if self._visible(corners[i], corners[j]):
                    d = self._len3(corners[i], corners[j])
                    self._graph[i].append((j, d))
                    self._graph[j].append((i, d))
        pieces = []
        for r in self._rects:
            for (ax, az), (bx, bz), (nx, nz) in ((((r.x0, r.z0), (r.x1, r.z0), (0, -1))),
                                                 (((r.x0, r.z1), (r.x1, r.z1), (0, 1))),
                                                 (((r.x0, r.z0), (r.x0, r.z1), (-1, 0))),
                                                 (((r.x1, r.z0), (r.x1, r.z1), (1, 0)))):
                n = max(1, int(math.hypot(bx - ax, bz - az) / 0.01))
                for k in range(n):
                    t = (k + 0.5) / n
                    mx, mz = ax + t * (bx - ax), az + t * (bz - az)
                    if not self._inside(mx + 1e-4 * nx, mz + 1e-4 * nz):
                        pieces.append((mx, mz))
        self._boundary = np.asarray(pieces, dtype=np.float64).reshape(-1, 2)

    # helpers
    def _inside(self, x, z, eps=1e-9):
        return any(r.contains(x, z, eps) for r in self._rects)

    def _reflex(self, x, z):
        """A reflex corner of the navmesh (one of the four quadrants around it is off the navmesh):
        the only points where a shortest path bends."""
        d = 1e-4
        return sum(not self._inside(x + sx * d, z + sz * d, 0) for sx in (-1, 1) for sz in (-1, 1)) == 1

    def _height(self, x, z):
        for r in self._rects:
            if r.contains(x, z, 1e-6):
                return r.height(x)
        return math.nan

    def _reach(self, ax, az, bx, bz) -> float:
        """How far along a->b (parameter in [0, 1]) the segment stays on the navmesh from a."""
        ivs = sorted(iv for iv in (r.clip(ax, az, bx, bz) for r in self._rects) if iv is not None)
        reach = 0.0
        if not ivs or ivs[0][0] > 1e-9:
            return 0.0
        for t0, t1 in ivs:
            if t0 > reach + 1e-9:
                break
            reach = max(reach, t1)
        return min(reach, 1.0)

    def _wall_crossings(self, ax, az, bx, bz) -> list[float]:
        """Parameters in (0, 1) where segment a->b crosses the navmesh's edge (leaving or coming back)."""
        ivs = sorted(iv for iv in (r.clip(ax, az, bx, bz) for r in self._rects) if iv is not None)
        merged: list[list[float]] = []
        for t0, t1 in ivs:
            if merged and t0 <= merged[-1][1] + 1e-9:
                merged[-1][1] = max(merged[-1][1], t1)
            else:
                merged.append([t0, t1])
        return [t for iv in merged for t in iv if 1e-9 < t < 1.0 - 1e-9]

    def _visible(self, a, b) -> bool:
        return self._reach(a[0], a[1], b[0], b[1]) >= 1.0 - 1e-9

    def _len3(self, a, b) -> float:
        return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (self._height(*a) - self._height(*b)) ** 2)

    def _closest(self, x, z):
        best, bd = None, math.inf
        for r in self._rects:
            cx, cz = r.clamp(x, z)
            d = math.hypot(cx - x, cz - z)
            if d < bd:
                best, bd = (cx, cz), d
        return best

    def _snap(self, pt):
        x, y, z = (float(v) for v in pt)
        if not self._rects:
            return None
        cx, cz = self._closest(x, z)
        cy = self._height(cx, cz)
        if abs(cx - x) > 2.0 or abs(cz - z) > 2.0 or abs(cy - y) > 4.0:
            return None
        return cx, cy, cz

    @staticmethod
    def _vec(x, y, z):
        return np.array([x, y, z], dtype=np.float32)

    # queries (habitat-sim names and signatures)
    def snap_point(self, point, island_index=-1):
        p = self._snap(point)
        return self._vec(math.nan, math.nan, math.nan) if p is None else self._vec(*p)

    def is_navigable(self, pt, max_y_delta=0.5):
        p = self._snap(pt)
        if p is None:
            return False
        return abs(p[1] - float(pt[1])) <= max_y_delta and math.hypot(p[0] - float(pt[0]), p[2] - float(pt[2])) <= 1e-2

    def get_random_navigable_point(self, max_tries=10, island_index=-1):
        areas = np.array([r.area() for r in self._rects])
        r = self._rects[int(self._rng.choice(len(areas), p=areas / areas.sum()))]
        x, z = self._rng.uniform(r.x0, r.x1), self._rng.uniform(r.z0, r.z1)
        return self._vec(x, self._height(x, z), z)

    def _step(self, start, end, sliding):
        s = self._snap(start)
        if s is None or self._snap(end) is None:
            return np.asarray(start, dtype=np.float32)
        ex, ez = float(end[0]), float(end[2])
        t = self._reach(s[0], s[2], ex, ez)
        if t >= 1.0 - 1e-9:
            x, z = ex, ez
        elif sliding:
            x, z = self._closest(ex, ez)
        else:
            # 57ee494 keeps the wall crossing nearest the target: the exit for a ray that leaves the navmesh,
            # the point where it comes back for one that cuts a corner of an obstacle
            t = max(self._wall_crossings(s[0], s[2], ex, ez), default=t)
            x, z = s[0] + t * (ex - s[0]), s[2] + t * (ez - s[2])
        return self._vec(x, self._height(x, z), z)

    def try_step(self, start, end):
        return self._step(start, end, sliding=True)

    def try_step_no_sliding(self, start, end):
        return self._step(start, end, sliding=False)

    def distance_to_closest_obstacle(self, pt, max_search_radius=2.0):
        p = self._snap(pt)
        if p is None:
            return math.inf
        if not len(self._boundary):
            return float(max_search_radius)
        d = float(np.min(np.hypot(self._boundary[:, 0] - p[0], self._boundary[:, 1] - p[2])))
        return min(d, float(max_search_radius))

    def find_path(self, path) -> bool:
        a, b = self._snap(path.requested_start), self._snap(path.requested_end)
        path.points, path.geodesic_distance = [], math.inf
        if a is None or b is None:
            return False
        A, B = (a[0], a[2]), (b[0], b[2])
        if self._visible(A, B):
            chain = [A, B]
        else:
            nodes = self._corners + [A, B]
            ia, ib = len(nodes) - 2, len(nodes) - 1
            graph = {k: list(v) for k, v in self._graph.items()}
            graph[ia], graph[ib] = [], []
            for i, c in enumerate(self._corners):
                for k, P in ((ia, A), (ib, B)):
                    if self._visible(P, c):
                        d = self._len3(P, c)
                        graph[k].append((i, d))
                        graph[i].append((k, d))
            dist, prev, heap = {ia: 0.0}, {}, [(0.0, ia)]
            while heap:
                d, u = heapq.heappop(heap)
                if u == ib:
                    break
                if d > dist.get(u, math.inf):
                    continue
                for v, w in graph[u]:
                    if d + w < dist.get(v, math.inf) - 1e-12:
                        dist[v], prev[v] = d + w, u
                        heapq.heappush(heap, (d + w, v))
            if ib not in dist:
                return False
            chain, u = [B], ib
            while u != ia:
                u = prev[u]
                chain.append(nodes[u])
            chain.reverse()
        path.points = [self._vec(x, self._height(x, z), z) for x, z in chain]
        path.geodesic_distance = float(sum(self._len3(chain[i], chain[i + 1]) for i in range(len(chain) - 1)))
        return True


# --- simulator --------------------------------------------------------------------------------

class _Category:
    def __init__(self, name):
        self._name = name

    def name(self, mapping=""):
        return self._name


class _SemanticObject:
    def __init__(self, semantic_id, category):
        self.semantic_id = semantic_id
        self.category = category


class Simulator:
    def __init__(self, config: Configuration):
        LOG["simulators"].append(self)
        self.pathfinder = PathFinder()
        self.closed = False
        self._configure(config)

    def _configure(self, config):
        self.config = config
        path = Path(config.sim_cfg.scene_id)
        self.scene = json.loads(path.read_text())
        self.agents = [Agent(a) for a in config.agents]
        shipped = self.scene.get("navmesh")
        self.pathfinder = PathFinder()
        if shipped is not None:
            settings = NavMeshSettings()
            settings.agent_radius, settings.agent_height = shipped["agent_radius"], shipped["agent_height"]
            self.pathfinder._build(self.scene["floor"], settings)
        self.pathfinder.seed(config.sim_cfg.random_seed)
        objs = [_SemanticObject(o["id"], _Category(o["name"]) if "name" in o else None) for o in self.scene.get("objects", [])]
        self.semantic_scene = types.SimpleNamespace(objects=objs)

    def reconfigure(self, config):
        LOG["reconfigure"] += 1
        self._configure(config)

    def recompute_navmesh(self, pathfinder, navmesh_settings) -> bool:
        LOG["recompute"].append((self, navmesh_settings.agent_radius, navmesh_settings.agent_height))
        pathfinder._build(self.scene["floor"], navmesh_settings)
        return True

    def get_agent(self, agent_id):
        return self.agents[agent_id]

    def get_sensor_observations(self, agent_ids=0):
        st = self.agents[0].state
        out = {}
        for spec in self.config.agents[0].sensor_specifications:
            h, w = spec.resolution
            top = np.arange(h)[:, None] < h // 2
            col = np.broadcast_to(np.arange(w)[None, :], (h, w))
            if spec.sensor_type == SensorType.COLOR:
                img = np.zeros((h, w, 4), dtype=np.uint8)
                code = [int(round(st.position[0] * 40)) % 256, int(round(st.position[2] * 40)) % 256,
                        int(round(math.atan2(st.rotation[1], st.rotation[3]) * 80)) % 256]
                img[..., :3] = code
                img[..., 3] = 255
                out[spec.uuid] = img
            elif spec.sensor_type == SensorType.DEPTH:
                d = np.where(col < w // 4, 2.0, np.where(col < w // 2, 3.0, 1.0)).astype(np.float32)
                out[spec.uuid] = np.where(top, np.float32(0.0), d).astype(np.float32)
            elif spec.sensor_type == SensorType.SEMANTIC:
                s = np.where(col < w // 4, 5, np.where(col < w // 2, 7, 0)).astype(np.uint32)
                out[spec.uuid] = np.where(top, np.uint32(0), s).astype(np.uint32)
        return out

    def close(self, destroy=True):
        if not self.closed:
            self.closed = True
            LOG["closed"] += 1

"""The embedded simulator: pybullet (DIRECT, TinyRenderer on CPU) + the navigation grid."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.io import read_json
from saca.sim.base import Observation, SimConfig, Simulator
from saca.sim.embedded.catalogue import BY_NAME
from saca.sim.embedded.navgrid import NavGrid
from saca.sim.embedded.world import WALL_THICKNESS, validate_scene

NEAR, FAR = 0.05, 30.0
TEACHER_LOOKAHEAD = 0.6


def scene_name(scene_id: str) -> str:
    """``embedded/house_003`` (or ``house_003``) -> ``house_003``."""
    return scene_id.split("/")[-1].removesuffix(".json")


# every house of a run stays loaded (a few MB each): episode generation visits the houses in turn, one attempt each,
# so a cache smaller than the number of houses rebuilt a navigation grid on every attempt (with 24 train houses
# and 16 places, 80 % of the time of generating mini_r2r's train episodes)
@lru_cache(maxsize=256)
def _load_scene(path: str, agent_radius: float) -> tuple[dict, NavGrid]:
    p = Path(path)
    if not p.exists():
        raise SacaError(f"unknown scene: {p} does not exist (run the 'scenes' step, or check the episode's scene_id)")
    scene = read_json(p)
    validate_scene(scene, str(p))
    return scene, NavGrid.from_scene(scene, agent_radius)


class EmbeddedSimulator(Simulator):
    backend = "embedded"

    def __init__(self, config: SimConfig, turn_angle: float, scenes_dir):
        super().__init__(config, turn_angle)
        import pybullet as p
        import pybullet_data

        self._p = p
        self.scenes_dir = Path(scenes_dir)
        self._client = p.connect(p.DIRECT)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self._client)
        self.scene: dict | None = None
        self.nav: NavGrid | None = None
        self._uid_to_instance = np.full(1, -1, dtype=np.int32)
        self._labels: dict[int, str] = {}
        w, h = config.width, config.height
        aspect = w / h
        vfov = math.degrees(2 * math.atan(math.tan(math.radians(config.hfov) / 2) / aspect))
        self._proj = p.computeProjectionMatrixFOV(vfov, aspect, NEAR, FAR)

    # --- scene ---------------------------------------------------------------
    def scene_path(self, scene_id: str) -> Path:
        return self.scenes_dir / f"{scene_name(scene_id)}.json"

    def load_scene(self, scene_id: str) -> None:
        name = scene_name(scene_id)
        if self.scene is not None and self.scene["scene_id"] == name:
            return
        scene, nav = _load_scene(str(self.scene_path(scene_id)), self.config.agent_radius)
        self._build(scene)
        self.scene, self.nav = scene, nav
        self._forget_frames()

    def _build(self, scene: dict) -> None:
        p, cid = self._p, self._client
        p.resetSimulation(physicsClientId=cid)
        uid_map: dict[int, int] = {}
        h = scene.get("wall_height", 2.6)

        def box(cx, cy, cz, hx, hy, hz, rgba, yaw=0.0):
            # Habitat (x, y-up, z) -> bullet (x, -z, y-up)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[hx, hz, hy], rgbaColor=rgba, physicsClientId=cid)
            return p.createMultiBody(0, -1, vis, [cx, -cz, cy], p.getQuaternionFromEuler([0, 0, yaw]), physicsClientId=cid)

        def quads(verts, rgba):
            # static surfaces as bare quads (no hidden faces): TinyRenderer's cost is mostly fill
            idx = [i for q in range(len(verts) // 4) for i in (4 * q, 4 * q + 1, 4 * q + 2, 4 * q, 4 * q + 2, 4 * q + 3)]
            vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, rgbaColor=rgba, physicsClientId=cid)
            return p.createMultiBody(0, -1, vis, [0, 0, 0], physicsClientId=cid)

        # Floors only: a ceiling quad per room cost ~25% of the frame rate, and the
        # renderer's white background above the walls reads as a ceiling anyway.
        for room in scene["rooms"]:
            x0, z0, x1, z1 = room["rect"]
            rect = [[x0, -z0], [x1, -z0], [x1, -z1], [x0, -z1]]
            quads([[x, y, 0.0] for x, y in reversed(rect)], room["floor_rgba"])  # normal up
        for w in scene["walls"]:
            cx, cz = (w[0] + w[2]) / 2, (w[1] + w[3]) / 2
            corners = [(w[0], w[1]), (w[2], w[1]), (w[2], w[3]), (w[0], w[3])]
            verts = []
            for (ax, az), (bx, bz) in zip(corners, corners[1:] + corners[:1]):
                verts += [[ax, -az, -0.05], [bx, -bz, -0.05], [bx, -bz, h], [ax, -az, h]]  # sunk: no crack at the floor
            quads(verts, self._wall_colour(scene, cx, cz))
        for obj in scene["objects"]:
            spec = BY_NAME[obj["name"]]
            x, _, z = obj["position"]
            yaw = obj["yaw"]
            if spec.kind == "mesh":
                q = p.getQuaternionFromEuler([spec.euler[0], spec.euler[1], spec.euler[2] + yaw])
                pos = [x, -z, spec.z_offset]
                if spec.urdf.endswith(".sdf"):
                    uid = p.loadSDF(spec.urdf, globalScaling=spec.scale, physicsClientId=cid)[0]
                    p.resetBasePositionAndOrientation(uid, pos, q, physicsClientId=cid)
                else:
                    uid = p.loadURDF(spec.urdf, pos, q, useFixedBase=True, globalScaling=spec.scale, physicsClientId=cid)
            elif spec.kind == "box":
                uid = box(x, spec.size[2] / 2, z, spec.size[0] / 2, spec.size[2] / 2, spec.size[1] / 2, spec.color, yaw)
            else:
                vis = p.createVisualShape(p.GEOM_CYLINDER, radius=spec.size[0] / 2, length=spec.size[2], rgbaColor=spec.color, physicsClientId=cid)
                uid = p.createMultiBody(0, -1, vis, [x, -z, spec.size[2] / 2], physicsClientId=cid)
            uid_map[uid] = obj["instance_id"]
        lut = np.full(p.getNumBodies(physicsClientId=cid) + 1, -1, dtype=np.int32)
        for uid, inst in uid_map.items():
            lut[uid] = inst
        self._uid_to_instance = lut
        self._labels = {o["instance_id"]: o["name"] for o in scene["objects"]}

    @staticmethod
    def _wall_colour(scene, cx, cz):
        # a wall takes the colour of the room whose interior is nearest its centre
        best, rgba = math.inf, [0.8, 0.8, 0.8, 1.0]
        for room in scene["rooms"]:
            x0, z0, x1, z1 = room["rect"]
            d = math.hypot(max(x0 - cx, 0, cx - x1), max(z0 - cz, 0, cz - z1))
            inside = x0 + WALL_THICKNESS < cx < x1 - WALL_THICKNESS and z0 + WALL_THICKNESS < cz < z1 - WALL_THICKNESS
            if d < best and not inside:
                best, rgba = d, room["wall_rgba"]
        return rgba

    @property
    def instance_labels(self) -> dict[int, str]:
        return dict(self._labels)

    # --- rendering -----------------------------------------------------------
    def render(self, position, heading: float) -> Observation:
        p = self._p
        x, _, z = position
        eye = [x, -z, self.config.camera_height]
        fx, fz = -math.sin(heading), -math.cos(heading)
        target = [x + fx, -(z + fz), self.config.camera_height]
        view = p.computeViewMatrix(eye, target, [0, 0, 1])
        w, h = self.config.width, self.config.height
        flags = 0 if self.config.instance else p.ER_NO_SEGMENTATION_MASK
        _, _, rgba, depth, seg = p.getCameraImage(
            w,
            h,
            view,
            self._proj,
            renderer=p.ER_TINY_RENDERER,
            flags=flags,
            lightDirection=[0.4, -0.3, 1.0],
            lightAmbientCoeff=0.65,
            lightDiffuseCoeff=0.45,
            lightSpecularCoeff=0.0,
            shadow=0,
            physicsClientId=self._client,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[:, :, :3].copy()
        d = None
        if self.config.depth:
            buf = np.asarray(depth, dtype=np.float32).reshape(h, w)
            d = (FAR * NEAR / (FAR - (FAR - NEAR) * buf)).astype(np.float32)
        inst = None
        if self.config.instance:
            seg = np.asarray(seg, dtype=np.int64).reshape(h, w)
            valid = (seg >= 0) & (seg < len(self._uid_to_instance))
            inst = np.where(valid, self._uid_to_instance[np.clip(seg, 0, len(self._uid_to_instance) - 1)], -1).astype(np.int32)
        return Observation(rgb=rgb, depth=d, instance=inst)

    # --- navigation ----------------------------------------------------------
    def _need_scene(self) -> NavGrid:
        if self.nav is None:
            raise SacaError("no scene loaded: call reset(episode) or load_scene(scene_id) first")
        return self.nav

    def move_to(self, start, target):
        nav = self._need_scene()
        if not nav.segment_free(start, target):
            return None
        return (float(target[0]), float(start[1]), float(target[2]))

    def snap_to_floor(self, position):
        """The free point nearest ``position`` (``position`` itself when free); raises when none is
        within ``SNAP_TOL`` (the tolerance the geodesic and the shortest path snap with)."""
        nav = self._need_scene()
        snapped = nav.snap(position)
        if snapped is not None:
            return snapped
        raise SacaError(
            f"position {[round(float(v), 3) for v in position]} is not navigable in scene {self.scene['scene_id']}"
        )

    def geodesic_distance(self, a, b) -> float:
        return self._need_scene().geodesic_distance(a, b)

    def shortest_path(self, a, b):
        return self._need_scene().shortest_path(a, b)

    def _lookahead_point(self, position, goal):
        return self._need_scene().carrot(position, goal, TEACHER_LOOKAHEAD)

    def top_down_map(self) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Navigable-floor mask ``[z, x]`` (row 0 at min z) and its extent ``(x0, x1, z0, z1)`` for plotting."""
        nav = self._need_scene()
        x0, z0 = nav.origin
        return nav.free.T.copy(), (x0, x0 + nav.shape[0] * nav.res, z0, z0 + nav.shape[1] * nav.res)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._p.disconnect(physicsClientId=self._client)
            except Exception:  # already disconnected
                pass
            self._client = None

    def __del__(self):
        self.close()

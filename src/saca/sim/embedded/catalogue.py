"""Landmark objects the embedded houses are furnished with.

Meshes come with pybullet_data; primitives are coloured boxes and cylinders.
The heavier pybullet_data meshes (kiva shelf, bicycle, r2d2, soccer ball) are
left out: in view, each cut TinyRenderer's frame rate by 20-50% (measured).
``size`` is the object's footprint (x, z extent in metres, before yaw) and
height; the navigation grid uses the footprint, the renderer the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    kind: str  # mesh | box | cylinder
    size: tuple[float, float, float]  # footprint x, footprint z, height (m)
    color: tuple[float, float, float, float] = (0.6, 0.6, 0.6, 1.0)
    urdf: str | None = None
    scale: float = 1.0
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)  # pybullet (z-up) base orientation
    z_offset: float = 0.0  # lift the mesh so it rests on the floor


CATALOGUE: tuple[ObjectSpec, ...] = (
    ObjectSpec("table", "mesh", (1.2, 0.8, 0.75), urdf="table/table.urdf", scale=0.8),
    ObjectSpec("teddy bear", "mesh", (0.6, 0.6, 0.8), urdf="teddy_vhacd.urdf", scale=8.0, euler=(1.5708, 0, 0)),
    ObjectSpec("duck", "mesh", (0.6, 0.6, 0.6), urdf="duck_vhacd.urdf", scale=7.0, euler=(1.5708, 0, 0)),
    ObjectSpec("wooden shelf", "box", (1.0, 0.4, 1.9), color=(0.55, 0.35, 0.15, 1.0)),
    ObjectSpec("teal stool", "cylinder", (0.45, 0.45, 0.5), color=(0.0, 0.55, 0.55, 1.0)),
    ObjectSpec("green plant", "cylinder", (0.5, 0.5, 1.1), color=(0.1, 0.4, 0.1, 1.0)),
    ObjectSpec("grey washing machine", "box", (0.6, 0.6, 0.85), color=(0.5, 0.5, 0.55, 1.0)),
    ObjectSpec("red cabinet", "box", (0.7, 0.45, 1.2), color=(0.8, 0.1, 0.1, 1.0)),
    ObjectSpec("blue pillar", "cylinder", (0.4, 0.4, 2.2), color=(0.1, 0.2, 0.85, 1.0)),
    ObjectSpec("green sofa", "box", (1.6, 0.7, 0.8), color=(0.15, 0.6, 0.2, 1.0)),
    ObjectSpec("white fridge", "box", (0.7, 0.7, 1.8), color=(0.95, 0.95, 0.95, 1.0)),
    ObjectSpec("purple armchair", "box", (0.8, 0.8, 0.9), color=(0.55, 0.2, 0.7, 1.0)),
    ObjectSpec("orange barrel", "cylinder", (0.6, 0.6, 0.9), color=(0.95, 0.5, 0.05, 1.0)),
    ObjectSpec("black piano", "box", (1.4, 0.6, 1.1), color=(0.05, 0.05, 0.05, 1.0)),
    ObjectSpec("yellow lamp", "cylinder", (0.3, 0.3, 1.6), color=(0.95, 0.85, 0.1, 1.0)),
    ObjectSpec("pink bed", "box", (1.4, 1.9, 0.6), color=(0.95, 0.55, 0.7, 1.0)),
)
BY_NAME = {o.name: o for o in CATALOGUE}
LANDMARK_NAMES = tuple(o.name for o in CATALOGUE)

# Wall colours give rooms a visual identity the RxR-style instructions can name.
WALL_COLOURS: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("beige", (0.86, 0.80, 0.66, 1.0)),
    ("light blue", (0.62, 0.78, 0.92, 1.0)),
    ("mint green", (0.66, 0.88, 0.72, 1.0)),
    ("salmon", (0.93, 0.64, 0.56, 1.0)),
    ("grey", (0.62, 0.62, 0.64, 1.0)),
    ("lavender", (0.76, 0.70, 0.90, 1.0)),
    ("cream", (0.95, 0.93, 0.82, 1.0)),
)
FLOOR_COLOURS: tuple[tuple[float, float, float, float], ...] = (
    (0.55, 0.40, 0.26, 1.0),
    (0.45, 0.45, 0.48, 1.0),
    (0.70, 0.60, 0.45, 1.0),
    (0.35, 0.30, 0.28, 1.0),
)

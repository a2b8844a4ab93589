"""Procedural multi-room houses, from a seed, as a JSON-serialisable scene description.

A house is a connected set of cells on a 3x3 grid. Cells are rooms, or hallway
segments when they lie on the (optional) hallway strip; adjacent rooms are
joined by doorways along a random spanning tree (plus a few extra doors),
adjacent hallway segments are open to each other. Rooms are furnished with
landmark objects from :mod:`catalogue` placed against their walls, away from
doorways. The scene file is what the simulator loads, as Habitat loads a
``.glb``: same seed, same file, same world, same frames.

Coordinates are Habitat's: the floor is the x-z plane, y is up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saca import SacaError
from saca.sim.embedded.catalogue import BY_NAME, CATALOGUE, FLOOR_COLOURS, WALL_COLOURS

SCENE_FORMAT = 1
WALL_THICKNESS = 0.1
WALL_HEIGHT = 2.6
DOOR_WIDTH = 1.0
HALLWAY_WIDTH = 1.6
GRID = 3


@dataclass
class SceneGenConfig:
    """The ``scenes`` config section: how many houses and how they are built."""

    backend: str = "embedded"
    seed: int = 0
    train: int = 8
    val_unseen: int = 3
    # index of the first held-out house (house_{i:03d}); None: right after the train houses. Pinning it (e.g. 8)
    # keeps the held-out houses, and so the val_unseen episodes, the same while `train` grows: the extra train
    # houses are numbered after the held-out ones.
    val_unseen_start: int | None = None
    rooms: list = field(default_factory=lambda: [3, 5])
    room_size: list = field(default_factory=lambda: [3.0, 4.5])
    landmarks_per_room: list = field(default_factory=lambda: [1, 2])
    dir: str = ""  # habitat: the scene datasets folder (data/scene_datasets, holding mp3d/{scan}/{scan}.glb)

    def validate(self, where: str) -> None:
        if self.backend not in ("embedded", "habitat"):
            raise SacaError(f"{where}.backend: 'embedded' or 'habitat', got '{self.backend}'")
        if self.backend == "habitat":
            if not self.dir:
                raise SacaError(f"{where}.dir: the habitat backend needs the scene datasets folder (data/scene_datasets)")
            return
        if self.val_unseen_start is not None and not 0 <= self.val_unseen_start <= self.train:
            raise SacaError(f"{where}.val_unseen_start: the first held-out house's index, 0 to train "
                            f"({self.train}), got {self.val_unseen_start}")
        lo, hi = self.rooms
        if not 1 <= lo <= hi <= GRID * GRID:
            raise SacaError(f"{where}.rooms: need 1 <= min <= max <= {GRID * GRID}, got {self.rooms}")
        if not 2.0 <= self.room_size[0] <= self.room_size[1]:
            raise SacaError(f"{where}.room_size: need 2.0 <= min <= max, got {self.room_size}")
        if self.landmarks_per_room[0] > self.landmarks_per_room[1] or self.landmarks_per_room[0] < 0:
            raise SacaError(f"{where}.landmarks_per_room: need 0 <= min <= max, got {self.landmarks_per_room}")

    def scene_ids(self) -> dict[str, list[str]]:
        """The house ids of each split: ``house_000`` ... numbered without gaps; the ``val_unseen`` held-out
        houses start at ``val_unseen_start`` (default: after the ``train`` houses)."""
        start = self.train if self.val_unseen_start is None else self.val_unseen_start
        held_out = range(start, start + self.val_unseen)
        ids = range(self.train + self.val_unseen)
        return {"train": [f"house_{i:03d}" for i in ids if i not in held_out],
                "val_unseen": [f"house_{i:03d}" for i in held_out]}


def scenes_for_split(scenes_dir: str | Path, split: str) -> list[str]:
    """The scene ids of ``split`` (``val_unseen``, or the training houses for every other split) in the scenes
    index ``scenes_dir/index.json`` that the ``scenes`` step writes; SacaError naming the file when malformed."""
    from saca.io import read_json

    path = Path(scenes_dir) / "index.json"
    index = read_json(path)
    if isinstance(index, dict) and index.get("backend") == "habitat":
        # linked habitat scenes have no splits: a generated (smoke) dataset draws every split from all of them
        return list(index.get("scenes") or [])
    try:
        splits = index["splits"]
        return list(splits["val_unseen"] if split == "val_unseen" else splits["train"])
    except (KeyError, TypeError) as err:
        raise SacaError(f"{path}: missing field splits.{err}") from err


def scene_seed(base_seed: int, scene_id: str) -> int:
    """A per-scene seed that depends only on the base seed and the scene id."""
    return int(np.random.SeedSequence([base_seed, *scene_id.encode()]).generate_state(1)[0])


def _polyomino(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    cells = [(int(rng.integers(GRID)), int(rng.integers(GRID)))]
    while len(cells) < n:
        frontier = sorted(
            {
                (c + dc, r + dr)
                for c, r in cells
                for dc, dr in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= c + dc < GRID and 0 <= r + dr < GRID and (c + dc, r + dr) not in cells
            }
        )
        cells.append(frontier[int(rng.integers(len(frontier)))])
    return sorted(cells)


def generate_scene(scene_id: str, seed: int, cfg: SceneGenConfig) -> dict:
    """Build one house. Retries object placement until every cell is reachable from every other."""
    rng = np.random.default_rng(seed)
    n_rooms = int(rng.integers(cfg.rooms[0], cfg.rooms[1] + 1))
    cells = _polyomino(rng, n_rooms)
    col_w = [float(rng.uniform(*cfg.room_size)) for _ in range(GRID)]
    row_h = [float(rng.uniform(*cfg.room_size)) for _ in range(GRID)]
    # an optional hallway strip: one grid row or column of narrow cells
    hall = None
    if n_rooms >= 3 and rng.random() < 0.5:
        axis = "col" if rng.random() < 0.5 else "row"
        idx = int(rng.integers(GRID))
        strip = [c for c in cells if (c[0] if axis == "col" else c[1]) == idx]
        if len(strip) >= 2:
            hall = (axis, idx)
            (col_w if axis == "col" else row_h)[idx] = HALLWAY_WIDTH
    xs = np.concatenate([[0.0], np.cumsum(col_w)])
    zs = np.concatenate([[0.0], np.cumsum(row_h)])

    def is_hall(c):
        return hall is not None and (c[0] if hall[0] == "col" else c[1]) == hall[1]

    colours = list(range(len(WALL_COLOURS)))
    rng.shuffle(colours)
    rooms = []
    for i, (c, r) in enumerate(cells):
        wall_name, wall_rgba = WALL_COLOURS[colours[i % len(colours)]]
        rooms.append(
            {
                "id": i,
                "cell": [c, r],
                "kind": "hallway" if is_hall((c, r)) else "room",
                "colour": wall_name,
                "wall_rgba": list(wall_rgba),
                "floor_rgba": list(FLOOR_COLOURS[int(rng.integers(len(FLOOR_COLOURS)))]),
                "rect": [float(xs[c]), float(zs[r]), float(xs[c + 1]), float(zs[r + 1])],
            }
        )
    index = {tuple(room["cell"]): room["id"] for room in rooms}
    # adjacency: spanning tree by randomised DFS + extra doors
    pairs = sorted(
        {
            tuple(sorted((index[a], index[(a[0] + d[0], a[1] + d[1])])))
            for a in index
            for d in ((1, 0), (0, 1))
            if (a[0] + d[0], a[1] + d[1]) in index
        }
    )
    open_pairs = {p for p in pairs if is_hall(tuple(rooms[p[0]]["cell"])) and is_hall(tuple(rooms[p[1]]["cell"]))}
    parent = list(range(len(rooms)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in open_pairs:
        parent[find(a)] = find(b)
    doors = set()
    for k in rng.permutation(len(pairs)):
        a, b = pairs[int(k)]
        if (a, b) in open_pairs:
            continue
        if find(a) != find(b):
            parent[find(a)] = find(b)
            doors.add((a, b))
        elif rng.random() < 0.25:
            doors.add((a, b))

    walls, door_list = _walls(rooms, index, doors, open_pairs, rng)
    for attempt in range(50):
        objects = _furnish(rooms, door_list, cfg, rng)
        scene = {
            "format": SCENE_FORMAT,
            "scene_id": scene_id,
            "seed": int(seed),
            "bounds": [0.0, 0.0, float(xs[-1]), float(zs[-1])],
            "rooms": rooms,
            "walls": walls,
            "doors": door_list,
            "objects": objects,
            "wall_height": WALL_HEIGHT,
        }
        if _connected(scene):
            return scene
    raise SacaError(f"scene {scene_id}: could not place furniture without cutting the house in two (seed {seed})")


def _walls(rooms, index, doors, open_pairs, rng):
    """Wall segments as rectangles [x0, z0, x1, z1]; doorways are gaps of DOOR_WIDTH."""
    t = WALL_THICKNESS / 2
    walls, door_list = [], []
    for room in rooms:
        x0, z0, x1, z1 = room["rect"]
        c, r = room["cell"]
        sides = {
            (1, 0): ("x", x1, z0, z1),
            (-1, 0): ("x", x0, z0, z1),
            (0, 1): ("z", z1, x0, x1),
            (0, -1): ("z", z0, x0, x1),
        }
        for d, (axis, at, lo, hi) in sides.items():
            nb = index.get((c + d[0], r + d[1]))
            if nb is not None and nb < room["id"]:
                continue  # the shared wall is drawn by the lower id
            pair = tuple(sorted((room["id"], nb))) if nb is not None else None
            if pair in open_pairs:
                continue
            segs = [(lo, hi)]
            if pair in doors:
                mid = float(rng.uniform(lo + 0.4 + DOOR_WIDTH / 2, hi - 0.4 - DOOR_WIDTH / 2))
                segs = [(lo, mid - DOOR_WIDTH / 2), (mid + DOOR_WIDTH / 2, hi)]
                door_list.append({"rooms": list(pair), "axis": axis, "at": at, "center": mid})
            for a, b in segs:
                if axis == "x":
                    walls.append([at - t, a - t, at + t, b + t])
                else:
                    walls.append([a - t, at - t, b + t, at + t])
    return walls, door_list


def _furnish(rooms, doors, cfg, rng):
    names = [o.name for o in CATALOGUE]
    order = [names[int(i)] for i in rng.permutation(len(names))]
    objects = []
    for room in rooms:
        if room["kind"] != "room":
            continue
        k = int(rng.integers(cfg.landmarks_per_room[0], cfg.landmarks_per_room[1] + 1))
        x0, z0, x1, z1 = room["rect"]
        placed = []
        for _ in range(k):
            if not order:
                break
            spec = BY_NAME[order.pop(0)]
            for _try in range(30):
                side = int(rng.integers(4))  # 0: -z wall, 1: +x, 2: +z, 3: -x; the object faces into the room
                yaw = [0.0, math.pi / 2, math.pi, -math.pi / 2][side]
                fx, fz = spec.size[0] / 2, spec.size[1] / 2
                hx, hz = (fx, fz) if side in (0, 2) else (fz, fx)
                gap = WALL_THICKNESS / 2 + 0.05
                if side == 0:
                    cx, cz = rng.uniform(x0 + gap + hx, x1 - gap - hx), z0 + gap + hz
                elif side == 2:
                    cx, cz = rng.uniform(x0 + gap + hx, x1 - gap - hx), z1 - gap - hz
                elif side == 1:
                    cx, cz = x1 - gap - hx, rng.uniform(z0 + gap + hz, z1 - gap - hz)
                else:
                    cx, cz = x0 + gap + hx, rng.uniform(z0 + gap + hz, z1 - gap - hz)
                box = (cx - hx, cz - hz, cx + hx, cz + hz)
                if any(_overlap(box, p, 0.5) for p in placed) or _blocks_door(box, doors):
                    continue
                placed.append(box)
                objects.append(
                    {
                        "instance_id": len(objects),
                        "name": spec.name,
                        "room": room["id"],
                        "position": [float(cx), 0.0, float(cz)],
                        "yaw": yaw,
                        "half_extents": [float(hx), float(hz)],
                        "height": spec.size[2],
                    }
                )
                break
    return objects


def _overlap(a, b, margin):
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _blocks_door(box, doors, clearance=0.9):
    for d in doors:
        if d["axis"] == "x":
            door = (d["at"] - clearance, d["center"] - DOOR_WIDTH / 2 - 0.2, d["at"] + clearance, d["center"] + DOOR_WIDTH / 2 + 0.2)
        else:
            door = (d["center"] - DOOR_WIDTH / 2 - 0.2, d["at"] - clearance, d["center"] + DOOR_WIDTH / 2 + 0.2, d["at"] + clearance)
        if _overlap(box, door, 0.0):
            return True
    return False


def _connected(scene, agent_radius: float = 0.18) -> bool:
    from saca.sim.embedded.navgrid import NavGrid

    grid = NavGrid.from_scene(scene, agent_radius)
    return grid.is_connected([room_center(r) for r in scene["rooms"]])


def room_center(room) -> list[float]:
    x0, z0, x1, z1 = room["rect"]
    return [(x0 + x1) / 2, 0.0, (z0 + z1) / 2]


def validate_scene(scene: dict, source: str) -> None:
    """Structural check of a scene file; errors name the file and the field."""
    if not isinstance(scene, dict):
        raise SacaError(f"{source}: a scene must be a JSON object")
    for key in ("format", "scene_id", "bounds", "rooms", "walls", "objects"):
        if key not in scene:
            raise SacaError(f"{source}: scene file lacks the field '{key}'")
    if scene["format"] != SCENE_FORMAT:
        raise SacaError(f"{source}: scene format {scene['format']} is not supported (expected {SCENE_FORMAT})")
    for i, obj in enumerate(scene["objects"]):
        if obj.get("name") not in BY_NAME:
            raise SacaError(f"{source}: objects[{i}].name '{obj.get('name')}' is not in the catalogue")

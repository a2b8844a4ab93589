"""Navigation of an embedded house: exact free space and geodesics, and the teacher's grid.

Navigability, collisions, geodesic distances and shortest paths are exact for
the house's geometry (:mod:`saca.sim.embedded.geodesic`: rooms minus wall and
object footprints grown by ``agent_radius``), as Habitat's are exact on its
navmesh. The floor is also rasterised at ``resolution`` (5 cm), a cell being
navigable when its centre is; the grid serves what needs cells: sampling
start and goal points, connectivity, top-down maps, and the teacher, which
follows a Dijkstra field whose edge costs grow near obstacles so that its
paths keep to the middle of doorways and corridors. ``grid_distance`` (the
16-neighbour grid Dijkstra this project used before, 2-9 % long) is kept as
the baseline ``benchmarks/geodesic.py`` compares against.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from saca import SacaError
from saca.sim.embedded.geodesic import ExactGeodesic

_MOVES = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1),
          (1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1)]


class NavGrid:
    def __init__(self, free: np.ndarray, origin: tuple[float, float], resolution: float, exact: ExactGeodesic,
                 clearance_margin: float = 0.4):
        self.free = free  # [ix, iz] bool
        self.exact = exact
        self.origin = origin
        self.res = resolution
        self.shape = free.shape
        self._ids = -np.ones(free.shape, dtype=np.int64)
        cells = np.argwhere(free)
        self._cells = cells
        self._ids[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        clearance = ndimage.distance_transform_edt(free) * resolution
        self.clearance = clearance
        self._graph_len, self._graph_cost = self._build_graphs(clearance, clearance_margin)
        self._fields: OrderedDict = OrderedDict()
        self._labels, _ = ndimage.label(free, structure=np.ones((3, 3)))

    # --- construction --------------------------------------------------------
    @classmethod
    def from_scene(cls, scene: dict, agent_radius: float, resolution: float = 0.05) -> "NavGrid":
        bx0, bz0, bx1, bz1 = scene["bounds"]
        pad = 0.5
        ox, oz = bx0 - pad, bz0 - pad
        nx = int(math.ceil((bx1 - bx0 + 2 * pad) / resolution))
        nz = int(math.ceil((bz1 - bz0 + 2 * pad) / resolution))
        xs = ox + (np.arange(nx) + 0.5) * resolution
        zs = oz + (np.arange(nz) + 0.5) * resolution
        X, Z = np.meshgrid(xs, zs, indexing="ij")
        exact = ExactGeodesic.from_scene(scene, agent_radius)
        free = exact.free_mask(np.stack([X.ravel(), Z.ravel()], axis=1)).reshape(nx, nz)  # a cell is free when its centre is
        return cls(free, (ox, oz), resolution, exact=exact)

    def _build_graphs(self, clearance, margin):
        rows, cols, lens, costs = [], [], [], []
        nx, nz = self.shape
        free = self.free
        pen = 1.0 + 3.0 * np.clip((margin - clearance) / margin, 0.0, 1.0)
        for dx, dz in _MOVES:
            src = self._cells
            dst = src + np.array([dx, dz])
            ok = (dst[:, 0] >= 0) & (dst[:, 0] < nx) & (dst[:, 1] >= 0) & (dst[:, 1] < nz)
            s, d = src[ok], dst[ok]
            ok = free[d[:, 0], d[:, 1]]
            if abs(dx) + abs(dz) == 3:  # knight move: both cells it crosses must be free
                m1 = s + np.array([int(np.sign(dx)) if abs(dx) == 2 else 0, int(np.sign(dz)) if abs(dz) == 2 else 0])
                m2 = s + np.array([int(np.sign(dx)), int(np.sign(dz))])
                ok &= free[np.clip(m1[:, 0], 0, nx - 1), np.clip(m1[:, 1], 0, nz - 1)]
                ok &= free[np.clip(m2[:, 0], 0, nx - 1), np.clip(m2[:, 1], 0, nz - 1)]
            elif dx != 0 and dz != 0:
                ok &= free[s[:, 0] + dx, s[:, 1]] & free[s[:, 0], s[:, 1] + dz]
            s, d = s[ok], d[ok]
            length = self.res * math.hypot(dx, dz)
            rows.append(self._ids[s[:, 0], s[:, 1]])
            cols.append(self._ids[d[:, 0], d[:, 1]])
            lens.append(np.full(len(s), length))
            costs.append(length * 0.5 * (pen[s[:, 0], s[:, 1]] + pen[d[:, 0], d[:, 1]]))
        n = len(self._cells)
        r, c = np.concatenate(rows), np.concatenate(cols)
        return csr_matrix((np.concatenate(lens), (r, c)), shape=(n, n)), csr_matrix((np.concatenate(costs), (r, c)), shape=(n, n))

    # --- cells and points ----------------------------------------------------
    def cell_of(self, p) -> tuple[int, int]:
        return int(math.floor((p[0] - self.origin[0]) / self.res)), int(math.floor((p[2] - self.origin[1]) / self.res))

    def center_of(self, cell) -> tuple[float, float, float]:
        return (self.origin[0] + (cell[0] + 0.5) * self.res, 0.0, self.origin[1] + (cell[1] + 0.5) * self.res)

    def is_free(self, p) -> bool:
        """Whether a floor point is exactly in the free space (in a room, >= the agent radius from every footprint)."""
        return self.exact.is_free(p)

    def snap(self, p) -> tuple[float, float, float] | None:
        """The free point nearest ``p`` when ``p`` is within ``SNAP_TOL`` (2 cm) of the free space, else None
        (:meth:`ExactGeodesic.snap`)."""
        q = self.exact.snap(p)
        return None if q is None else (float(q[0]), 0.0, float(q[1]))

    def is_navigable(self, p) -> bool:
        """Free or within ``SNAP_TOL`` of the free space: where the geodesic and the shortest path are defined."""
        return self.exact.navigable(p)

    def nearest_free_cell(self, p, max_dist: float = 0.3) -> tuple[int, int] | None:
        ix, iz = self.cell_of(p)
        if 0 <= ix < self.shape[0] and 0 <= iz < self.shape[1] and self.free[ix, iz]:
            return ix, iz
        r = int(math.ceil(max_dist / self.res))
        lo_x, hi_x = max(ix - r, 0), min(ix + r + 1, self.shape[0])
        lo_z, hi_z = max(iz - r, 0), min(iz + r + 1, self.shape[1])
        if lo_x >= hi_x or lo_z >= hi_z:
            return None
        sub = np.argwhere(self.free[lo_x:hi_x, lo_z:hi_z])
        if len(sub) == 0:
            return None
        sub = sub + np.array([lo_x, lo_z])
        d = np.hypot(sub[:, 0] - ix, sub[:, 1] - iz)
        k = int(np.argmin(d))
        if d[k] * self.res > max_dist:
            return None
        return int(sub[k, 0]), int(sub[k, 1])

    def segment_free(self, a, b) -> bool:
        """True when every point of the straight segment a->b is on navigable floor."""
        return self.exact.segment_free(a, b)

    def is_connected(self, points) -> bool:
        labels = set()
        for p in points:
            c = self.nearest_free_cell(p, max_dist=1.0)
            if c is None:
                return False
            labels.add(int(self._labels[c]))
        return len(labels) == 1

    def same_component(self, a, b) -> bool:
        ca, cb = self.nearest_free_cell(a), self.nearest_free_cell(b)
        return ca is not None and cb is not None and self._labels[ca] == self._labels[cb]

    # --- distance fields ---------------------------------------------------
    def _field(self, target_cell, kind: str):
        key = (target_cell, kind)
        if key in self._fields:
            self._fields.move_to_end(key)
            return self._fields[key]
        graph = self._graph_len if kind == "length" else self._graph_cost
        src = int(self._ids[target_cell])
        # edges are symmetric, so distances from the target equal distances to it
        dist, pred = dijkstra(graph, directed=True, indices=src, return_predecessors=True)
        self._fields[key] = (dist, pred)
        if len(self._fields) > 32:
            self._fields.popitem(last=False)
        return dist, pred

    def _snap(self, p, what: str):
        c = self.nearest_free_cell(p)
        if c is None:
            raise SacaError(f"{what} {[round(float(v), 3) for v in p]} is not on navigable floor")
        return c

    def geodesic_distance(self, a, b) -> float:
        """Exact shortest-path length between two navigable points, snapped (``inf`` when not navigable or
        unreachable)."""
        return self.exact.distance(a, b)

    def grid_distance(self, a, b) -> float:
        """The former approximation: 16-neighbour Dijkstra between cell centres (reads 2-9 % long); benchmarks only."""
        ca, cb = self.nearest_free_cell(a), self.nearest_free_cell(b)
        if ca is None or cb is None:
            return math.inf
        euclid = math.hypot(a[0] - b[0], a[2] - b[2])
        if ca == cb:
            return euclid
        dist, _ = self._field(cb, "length")
        d = float(dist[self._ids[ca]])
        return max(d, euclid) if math.isfinite(d) else math.inf

    def path_cells(self, a, b, kind: str = "length") -> list[tuple[int, int]]:
        ca, cb = self._snap(a, "path start"), self._snap(b, "path goal")
        dist, pred = self._field(cb, kind)
        i = int(self._ids[ca])
        if not math.isfinite(dist[i]):
            return []
        out = [ca]
        while pred[i] >= 0:
            i = int(pred[i])
            out.append(tuple(int(v) for v in self._cells[i]))
        return out

    def shortest_path(self, a, b) -> list[tuple[float, float, float]]:
        """Waypoints of an exact shortest path (tangent segments, arcs sampled every 15 degrees)."""
        return self.exact.path(a, b)

    def carrot(self, a, b, lookahead: float) -> tuple[float, float, float]:
        """The point ``lookahead`` metres along the teacher's (clearance-aware) path from a to b."""
        cells = self.path_cells(a, b, "cost")
        if not cells:
            return (float(b[0]), 0.0, float(b[2]))
        acc = 0.0
        prev = a
        for c in cells[1:]:
            p = self.center_of(c)
            acc += math.hypot(p[0] - prev[0], p[2] - prev[2])
            prev = p
            if acc >= lookahead:
                return p
        return (float(b[0]), 0.0, float(b[2]))

    def free_points(self, rect=None, min_clearance: float = 0.0) -> np.ndarray:
        """Centres of navigable cells (optionally inside ``rect`` and with some clearance), as [N, 3]."""
        mask = self.free & (self.clearance >= min_clearance)
        cells = np.argwhere(mask)
        pts = np.stack(
            [self.origin[0] + (cells[:, 0] + 0.5) * self.res, np.zeros(len(cells)), self.origin[1] + (cells[:, 1] + 0.5) * self.res],
            axis=1,
        )
        if rect is not None:
            x0, z0, x1, z1 = rect
            pts = pts[(pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 2] > z0) & (pts[:, 2] < z1)]
        return pts


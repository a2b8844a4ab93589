"""Exact geodesic distance and shortest paths in an embedded house.

The navigable floor of a house is the union of its room rectangles minus every
wall and object footprint grown by the agent radius ``r``: a point is free when
it lies in a room and at least ``r`` from every footprint rectangle. The grown
footprints are rounded rectangles, so a shortest path in that free space (as
Habitat's navmesh path is in its own geometry) is made of straight segments
that are tangent to circles of radius ``r`` centred on footprint corners, and
of arcs of those circles where the path bends around a corner.

:class:`ExactGeodesic` builds that *tangent graph* once per scene:

* **disks**: one per footprint corner whose outward quarter circle touches
  free space (corners buried in a wall junction or facing outside the house
  are dropped);
* **nodes**: tangent points, each on one disk with one winding direction
  (``side = +1``: the disk is on the left of the direction of travel, the path
  turns counter-clockwise around it; ``-1``: clockwise);
* **edges**: free bitangent segments between disks (4 per disk pair), and arcs
  between consecutive tangent points along the same disk and winding, where
  the arc is free.

For a goal ``b`` (cached, like Habitat caches nothing but we do) the free
tangents from every disk to ``b`` are added and Dijkstra gives every node's
distance to ``b``. A query point ``a`` then costs one vectorised visibility
test: the distance is ``|ab|`` when the segment is free, otherwise the best of
``|a t| + arc + D(next node)`` over the free tangents ``a -> t``. The only
approximation is that arcs are checked for obstruction by other footprints on
a 1-degree grid (a 0.003 m sliver at ``r = 0.18`` could be missed).

A shortest path hugs the grown footprints, so its points lie *on* the boundary
of the free space. A query point on a disk's circle is its own tangent point
(length 0, both windings): the path from it follows the arc, as a path through
it does. A query point that is not free but within :data:`SNAP_TOL` of the
free space (a point of a path rounded or interpolated a few millimetres into a
grown footprint) is snapped to the nearest free point first, as Habitat's
``find_path`` snaps its end points to the navmesh (:meth:`ExactGeodesic.snap`);
a point deeper inside a footprint, or outside every room, stays unreachable.

Angles are ``atan2(z, x)`` in the floor plane (x, z); counter-clockwise means
increasing angle.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

TOL = 1e-6  # metres: a segment that passes r - TOL from a footprint still counts as free (tangents graze at r)
# metres: a query point this close to the free space is snapped to its nearest free point (docs/data.md); below the
# 5 cm cells Habitat's navmesh is built from, above the 1.5 mm by which a chord of an arc sampled every 15 degrees
# cuts into a grown footprint, and far below the 0.23 m from the middle of a wall to the free space
SNAP_TOL = 0.02
_ARC_SAMPLES = 91  # one per degree over a corner's quarter circle
_EPS_EDGE = 1e-12  # scipy.sparse drops explicit zeros: zero-length edges get this length
_HALF_PI = math.pi / 2


def _left(u: np.ndarray) -> np.ndarray:
    """Left normal (rotate +90 degrees) of direction vectors ``[..., 2]``."""
    return np.stack([-u[..., 1], u[..., 0]], axis=-1)


def _rotate(u: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    c, s = np.cos(alpha), np.sin(alpha)
    return np.stack([c * u[..., 0] - s * u[..., 1], s * u[..., 0] + c * u[..., 1]], axis=-1)


def point_rect_distance(p: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Distance from points ``[N, 2]`` to axis-aligned rectangles ``[R, 4]`` (x0, z0, x1, z1), as ``[N, R]``."""
    dx = np.maximum(np.maximum(rects[None, :, 0] - p[:, None, 0], p[:, None, 0] - rects[None, :, 2]), 0.0)
    dz = np.maximum(np.maximum(rects[None, :, 1] - p[:, None, 1], p[:, None, 1] - rects[None, :, 3]), 0.0)
    return np.hypot(dx, dz)


def segment_rect_distance(a: np.ndarray, b: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Distance between segments ``a[i] -> b[i]`` (``[S, 2]`` each) and rectangles ``[R, 4]``, as ``[S, R]``.

    Zero when a segment crosses a rectangle (slab clipping); otherwise the
    smallest of the end points' distances to the rectangle and the
    rectangle corners' distances to the segment.
    """
    a3, d3 = a[:, None, :], (b - a)[:, None, :]
    lo = np.stack([rects[:, 0], rects[:, 1]], axis=-1)[None]
    hi = np.stack([rects[:, 2], rects[:, 3]], axis=-1)[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - a3) / d3
        t2 = (hi - a3) / d3
    par = np.abs(d3) < 1e-15
    inside_slab = (a3 >= lo) & (a3 <= hi)
    tmin = np.where(par, np.where(inside_slab, -np.inf, np.inf), np.minimum(t1, t2))
    tmax = np.where(par, np.where(inside_slab, np.inf, -np.inf), np.maximum(t1, t2))
    t_in = np.maximum(np.maximum(tmin[..., 0], tmin[..., 1]), 0.0)
    t_out = np.minimum(np.minimum(tmax[..., 0], tmax[..., 1]), 1.0)
    crosses = t_in <= t_out
    d = np.minimum(point_rect_distance(a, rects), point_rect_distance(b, rects))
    seg = b - a
    ll = np.maximum((seg * seg).sum(-1), 1e-30)[:, None]
    for cx, cz in ((0, 1), (2, 1), (2, 3), (0, 3)):
        qx = rects[None, :, cx] - a[:, None, 0]
        qz = rects[None, :, cz] - a[:, None, 1]
        t = np.clip((qx * seg[:, None, 0] + qz * seg[:, None, 1]) / ll, 0.0, 1.0)
        d = np.minimum(d, np.hypot(qx - t * seg[:, None, 0], qz - t * seg[:, None, 1]))
    return np.where(crosses, 0.0, d)


def _segment_rect_distance_1(ax, az, bx, bz, rect) -> float:
    """:func:`segment_rect_distance` for one segment and one rectangle, in plain Python (no array overhead)."""
    x0, z0, x1, z1 = rect
    t0, t1 = 0.0, 1.0
    for p, d, lo, hi in ((ax, bx - ax, x0, x1), (az, bz - az, z0, z1)):
        if abs(d) < 1e-15:
            if p < lo or p > hi:
                t0, t1 = 1.0, 0.0
        else:
            ta, tb = (lo - p) / d, (hi - p) / d
            if ta > tb:
                ta, tb = tb, ta
            t0, t1 = max(t0, ta), min(t1, tb)
    if t0 <= t1:
        return 0.0
    best = min(
        math.hypot(max(x0 - ax, 0.0, ax - x1), max(z0 - az, 0.0, az - z1)),
        math.hypot(max(x0 - bx, 0.0, bx - x1), max(z0 - bz, 0.0, bz - z1)),
    )
    sx, sz = bx - ax, bz - az
    ll = max(sx * sx + sz * sz, 1e-30)
    for cx, cz in ((x0, z0), (x1, z0), (x1, z1), (x0, z1)):
        t = min(max(((cx - ax) * sx + (cz - az) * sz) / ll, 0.0), 1.0)
        best = min(best, math.hypot(cx - ax - t * sx, cz - az - t * sz))
    return best


class ExactGeodesic:
    """Exact shortest paths among axis-aligned footprints grown by ``radius`` (see the module docstring)."""

    def __init__(self, rects, rooms, radius: float, cache: int = 32):
        self.rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        self.rooms = np.asarray(rooms, dtype=np.float64).reshape(-1, 4)
        self.r = float(radius)
        self._cache_size = cache
        self._goals: OrderedDict = OrderedDict()
        self._rect_list = [tuple(map(float, q)) for q in self.rects]
        self._room_list = [tuple(map(float, q)) for q in self.rooms]
        self._build_disks()
        self._build_static_edges()

    @classmethod
    def from_scene(cls, scene: dict, radius: float) -> "ExactGeodesic":
        rects = [list(w) for w in scene["walls"]]
        rects += [
            [o["position"][0] - o["half_extents"][0], o["position"][2] - o["half_extents"][1],
             o["position"][0] + o["half_extents"][0], o["position"][2] + o["half_extents"][1]]
            for o in scene["objects"]
        ]
        return cls(rects, [room["rect"] for room in scene["rooms"]], radius)

    # --- free space ------------------------------------------------------------
    def free_mask(self, pts: np.ndarray) -> np.ndarray:
        """Which points ``[N, 2]`` (x, z) are navigable: inside a room and ``>= r`` (less TOL) from every footprint."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        rm = self.rooms
        inside = ((pts[:, None, 0] >= rm[None, :, 0]) & (pts[:, None, 0] <= rm[None, :, 2])
                  & (pts[:, None, 1] >= rm[None, :, 1]) & (pts[:, None, 1] <= rm[None, :, 3])).any(1)
        if len(self.rects) == 0:
            return inside
        return inside & (point_rect_distance(pts, self.rects).min(1) >= self.r - TOL)

    def segments_free(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which segments ``a[i] -> b[i]`` keep ``>= r`` (less TOL) from every footprint (end points assumed in rooms)."""
        a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
        b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
        if len(self.rects) == 0 or len(a) == 0:
            return np.ones(len(a), dtype=bool)
        out = np.empty(len(a), dtype=bool)
        step = max(1, 200_000 // max(len(self.rects), 1))
        for k in range(0, len(a), step):
            out[k : k + step] = segment_rect_distance(a[k : k + step], b[k : k + step], self.rects).min(1) >= self.r - TOL
        return out

    # one point or segment at a time (every simulator step): plain Python over the few footprints nearby
    def _in_room(self, x: float, z: float) -> bool:
        return any(x0 <= x <= x1 and z0 <= z <= z1 for x0, z0, x1, z1 in self._room_list)

    def _clear(self, ax: float, az: float, bx: float, bz: float) -> bool:
        """Whether segment a -> b (a point when a == b) keeps >= r - TOL from every footprint."""
        r = self.r - TOL
        lox, hix, loz, hiz = min(ax, bx) - r, max(ax, bx) + r, min(az, bz) - r, max(az, bz) + r
        return all(
            _segment_rect_distance_1(ax, az, bx, bz, q) >= r
            for q in self._rect_list
            if q[0] < hix and q[2] > lox and q[1] < hiz and q[3] > loz
        )

    def is_free(self, p) -> bool:
        x, z = float(p[0]), float(p[2])
        return self._in_room(x, z) and self._clear(x, z, x, z)

    def segment_free(self, a, b) -> bool:
        """True when the straight move a -> b stays on navigable floor (end points in rooms, clearance >= r).

        The move must end on free floor (the agent's disc never enters a grown footprint); a start that
        is not free but :meth:`navigable` is taken at its snapped point, so the agent can always leave a
        point that the geodesic, :meth:`snap` and the simulator's ``snap_to_floor`` accept.
        """
        ax, az, bx, bz = float(a[0]), float(a[2]), float(b[0]), float(b[2])
        if not (self._in_room(bx, bz) and self._in_room(ax, az) and self._clear(ax, az, bx, bz)):
            if self.is_free(a):
                return False  # the start is free: the move itself is blocked
            s = self.snap(a)
            return s is not None and self._in_room(bx, bz) and self._clear(float(s[0]), float(s[1]), bx, bz)
        return True

    def snap(self, p) -> np.ndarray | None:
        """The free point ``(x, z)`` nearest the floor point ``p`` (x, y, z) when it lies within
        :data:`SNAP_TOL` of the free space (``p`` itself when free); None otherwise.

        The free space is bounded by the grown footprints' straight edges and corner circles and by the
        room edges, so its nearest point to ``p`` is the foot of ``p`` on one of those curves or a point
        where two of them cross: every such candidate within the tolerance is tried and the nearest free
        one kept (exact, as the geodesic is).
        """
        x, z = float(p[0]), float(p[2])
        if self._in_room(x, z) and self._clear(x, z, x, z):
            return np.array([x, z])
        q, s, r = np.array([x, z]), SNAP_TOL, self.r
        lines: list[tuple[int, float]] = []  # (axis: 0 for x = v, 1 for z = v; v)
        circles: list[tuple[float, float]] = []
        if len(self.rects):
            near = self.rects[point_rect_distance(q[None], self.rects)[0] <= r + s]
            for x0, z0, x1, z1 in near:
                lines += [(0, x0 - r), (0, x1 + r), (1, z0 - r), (1, z1 + r)]
                circles += [(x0, z0), (x1, z0), (x1, z1), (x0, z1)]
        for x0, z0, x1, z1 in self._room_list:
            lines += [(0, x0), (0, x1), (1, z0), (1, z1)]
        lines = [(k, v) for k, v in lines if abs(q[k] - v) <= s]
        circles = [c for c in circles if abs(math.hypot(x - c[0], z - c[1]) - r) <= s]
        cand = []
        for k, v in lines:  # feet on a line
            f = q.copy()
            f[k] = v
            cand.append(f)
        for cx, cz in circles:  # feet on a circle (radial projection)
            d = math.hypot(x - cx, z - cz)
            if d > 0:
                cand.append(np.array([cx + (x - cx) * r / d, cz + (z - cz) * r / d]))
        for i, (k1, v1) in enumerate(lines):  # crossings of two lines
            for k2, v2 in lines[i + 1 :]:
                if k1 != k2:
                    cand.append(np.array([v1, v2]) if k1 == 0 else np.array([v2, v1]))
        for k, v in lines:  # crossings of a line and a circle
            for c in circles:
                h = r * r - (v - c[k]) ** 2
                if h >= 0:
                    for sgn in (1.0, -1.0):
                        f = np.empty(2)
                        f[k], f[1 - k] = v, c[1 - k] + sgn * math.sqrt(h)
                        cand.append(f)
        for i, c1 in enumerate(circles):  # crossings of two circles (the same radius)
            for c2 in circles[i + 1 :]:
                dx, dz = c2[0] - c1[0], c2[1] - c1[1]
                d = math.hypot(dx, dz)
                if 0 < d <= 2 * r:
                    h = math.sqrt(max(r * r - d * d / 4, 0.0))
                    mx, mz = c1[0] + dx / 2, c1[1] + dz / 2
                    cand += [np.array([mx - h * dz / d, mz + h * dx / d]), np.array([mx + h * dz / d, mz - h * dx / d])]
        if not cand:
            return None
        cand = np.asarray(cand)
        dist = np.hypot(cand[:, 0] - x, cand[:, 1] - z)
        ok = (dist <= s + 1e-12) & self.free_mask(cand)
        if not ok.any():
            return None
        return cand[int(np.argmin(np.where(ok, dist, np.inf)))]

    def navigable(self, p) -> bool:
        """Whether ``p`` is free or within :data:`SNAP_TOL` of the free space (what the geodesic, the
        shortest path and the simulator's ``snap_to_floor`` accept)."""
        return self.snap(p) is not None

    # --- the static tangent graph ---------------------------------------------------
    def _build_disks(self):
        centres, starts = [], []
        seen = set()
        for x0, z0, x1, z1 in self.rects:
            # corner, start angle of its outward quarter circle (counter-clockwise)
            for cx, cz, a0 in ((x1, z1, 0.0), (x0, z1, _HALF_PI), (x0, z0, math.pi), (x1, z0, 3 * _HALF_PI)):
                key = (round(cx, 9), round(cz, 9), a0)
                if key not in seen:
                    seen.add(key)
                    centres.append((cx, cz))
                    starts.append(a0)
        c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        a0 = np.asarray(starts, dtype=np.float64)
        # free-ness of each quarter circle, sampled once per degree (a hair outside r)
        psi = np.linspace(0.0, _HALF_PI, _ARC_SAMPLES)
        ang = a0[:, None] + psi[None, :]
        pts = c[:, None, :] + (self.r + 1e-9) * np.stack([np.cos(ang), np.sin(ang)], -1)
        free = self.free_mask(pts.reshape(-1, 2)).reshape(len(c), _ARC_SAMPLES) if len(c) else np.zeros((0, _ARC_SAMPLES), bool)
        keep = free.any(1)
        self.centres, self.a0, self._arc_free = c[keep], a0[keep], free[keep]
        # blocked-sample prefix sums: an arc [psi0, psi1] is free iff no blocked sample lies inside
        blocked = (~self._arc_free).astype(np.int64)
        self._arc_blocked_cum = np.concatenate([np.zeros((len(blocked), 1), np.int64), np.cumsum(blocked, 1)], 1)

    def _psi(self, disk: np.ndarray, side: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Position of tangent points along their disk's quarter circle, in the winding direction, in [0, pi/2]."""
        v = pts - self.centres[disk]
        theta = np.arctan2(v[:, 1], v[:, 0])
        rel = np.remainder(theta - self.a0[disk] + 0.25 * math.pi, 2 * math.pi) - 0.25 * math.pi  # ccw offset
        rel = np.clip(rel, 0.0, _HALF_PI)
        return np.where(side > 0, rel, _HALF_PI - rel)

    def _arcs_free(self, disk, side, psi_from, psi_to) -> np.ndarray:
        """Whether the arcs psi_from -> psi_to (winding coordinates, psi_to >= psi_from) are free."""
        rel0 = np.where(side > 0, psi_from, _HALF_PI - psi_to)
        rel1 = np.where(side > 0, psi_to, _HALF_PI - psi_from)
        i0 = np.clip(np.ceil(rel0 / _HALF_PI * (_ARC_SAMPLES - 1) - 1e-9).astype(np.int64), 0, _ARC_SAMPLES)
        i1 = np.clip(np.floor(rel1 / _HALF_PI * (_ARC_SAMPLES - 1) + 1e-9).astype(np.int64) + 1, 0, _ARC_SAMPLES)
        cum = self._arc_blocked_cum
        return (i1 <= i0) | (cum[disk, np.maximum(i1, i0)] - cum[disk, i0] == 0)

    def _tangent_points_to_disks(self, p: np.ndarray, toward: bool):
        """Tangents between point ``p`` and every disk, both windings.

        ``toward=True``: segments p -> disk (arrivals); ``False``: disk -> p (departures).
        Returns disk ids, sides, tangent points, lengths. A ``p`` on a disk's circle (``|p c| <= r``, by
        at most ``TOL`` for a free point) is its own tangent point on that disk, length 0, both windings:
        a path from (or to) a point of an arc goes on along the arc.
        """
        n = len(self.centres)
        disk = np.repeat(np.arange(n), 2)
        side = np.tile(np.array([1.0, -1.0]), n)
        delta = (self.centres[disk] - p) if toward else (p - self.centres[disk])
        length = np.hypot(delta[:, 0], delta[:, 1])
        on = (length <= self.r * (1 + 1e-9)) & (length > 0.5 * self.r)
        ok = length > self.r * (1 + 1e-9)
        disk_on, side_on = disk[on], side[on]
        radial = (p - self.centres[disk_on]) / length[on][:, None]
        t_on = self.centres[disk_on] + self.r * radial
        disk, side, delta, length = disk[ok], side[ok], delta[ok], length[ok]
        d = delta / length[:, None]
        alpha = (-side if toward else side) * np.arcsin(self.r / length)
        u = _rotate(d, alpha)
        t = self.centres[disk] - side[:, None] * self.r * _left(u)
        tlen = np.sqrt(np.maximum(length**2 - self.r**2, 0.0))
        return (np.concatenate([disk, disk_on]), np.concatenate([side, side_on]),
                np.concatenate([t, t_on]).reshape(-1, 2), np.concatenate([tlen, np.hypot(*(t_on - p).T)]))

    def _build_static_edges(self):
        n = len(self.centres)
        i, j = np.triu_indices(n, k=1)
        ci, cj = self.centres[i], self.centres[j]
        delta = cj - ci
        L = np.hypot(delta[:, 0], delta[:, 1])
        d = delta / np.maximum(L, 1e-30)[:, None]
        out_disk, out_side, out_pt, in_disk, in_side, in_pt, lens = [], [], [], [], [], [], []
        for si in (1.0, -1.0):
            for sj in (1.0, -1.0):
                if si == sj:
                    ok = L > 1e-12
                    u = d
                    length = L
                else:
                    ok = L > 2 * self.r * (1 + 1e-9)
                    u = _rotate(d, si * np.arcsin(np.clip(2 * self.r / np.maximum(L, 1e-30), -1, 1)))
                    length = np.sqrt(np.maximum(L**2 - 4 * self.r**2, 0.0))
                ti = ci - si * self.r * _left(u)
                tj = cj - sj * self.r * _left(u)
                ok = ok & self.free_mask(ti) & self.free_mask(tj)
                idx = np.flatnonzero(ok)
                idx = idx[self.segments_free(ti[idx], tj[idx])]
                # i -> j with windings (si, sj), and j -> i with the windings flipped
                out_disk += [i[idx], j[idx]]
                out_side += [np.full(len(idx), si), np.full(len(idx), -sj)]
                out_pt += [ti[idx], tj[idx]]
                in_disk += [j[idx], i[idx]]
                in_side += [np.full(len(idx), sj), np.full(len(idx), -si)]
                in_pt += [tj[idx], ti[idx]]
                lens += [length[idx], length[idx]]
        cat = lambda xs, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
        self._e_out = (cat(out_disk).astype(np.int64), cat(out_side), cat(out_pt, (0, 2)).reshape(-1, 2))
        self._e_in = (cat(in_disk).astype(np.int64), cat(in_side), cat(in_pt, (0, 2)).reshape(-1, 2))
        self._e_len = cat(lens)

    # --- per-goal distance field -------------------------------------------------------
    def _goal_field(self, b: tuple[float, float]):
        key = (round(b[0], 9), round(b[1], 9))
        if key in self._goals:
            self._goals.move_to_end(key)
            return self._goals[key]
        field = self._build_goal_field(np.array(key, dtype=np.float64))
        self._goals[key] = field
        if len(self._goals) > self._cache_size:
            self._goals.popitem(last=False)
        return field

    def _build_goal_field(self, b: np.ndarray) -> dict:
        od, os_, op = self._e_out
        id_, is_, ip = self._e_in
        m = len(self._e_len)
        # departures toward the goal
        gd, gs, gp, glen = self._tangent_points_to_disks(b, toward=False)
        ok = self.free_mask(gp)
        gd, gs, gp, glen = gd[ok], gs[ok], gp[ok], glen[ok]
        ok = self.segments_free(gp, np.broadcast_to(b, gp.shape))
        gd, gs, gp, glen = gd[ok], gs[ok], gp[ok], glen[ok]
        g = len(gd)
        # nodes: [0, m) edge tails (out), [m, 2m) edge heads (in), [2m, 2m + g) goal departures, 2m + g the goal
        disk = np.concatenate([od, id_, gd])
        side = np.concatenate([os_, is_, gs])
        pts = np.concatenate([op, ip, gp]).reshape(-1, 2)
        kind = np.concatenate([np.ones(m), np.zeros(m), np.ones(g)])  # arrivals (0) sort before departures (1) at a tie
        psi = self._psi(disk, side, pts) if len(disk) else np.zeros(0)
        chain = disk * 2 + (side < 0)
        order = np.lexsort((kind, psi, chain))
        goal = 2 * m + g
        n_nodes = goal + 1
        rows = [np.arange(m), np.arange(2 * m, 2 * m + g)]
        cols = [np.arange(m, 2 * m), np.full(g, goal)]
        vals = [self._e_len, glen]
        a, c = order[:-1], order[1:]
        same = chain[a] == chain[c]
        a, c = a[same], c[same]
        free = self._arcs_free(disk[a], side[a], psi[a], psi[c])
        a, c = a[free], c[free]
        rows.append(a)
        cols.append(c)
        vals.append(self.r * (psi[c] - psi[a]))
        vals = np.maximum(np.concatenate(vals), _EPS_EDGE)
        graph = csr_matrix((vals, (np.concatenate(rows), np.concatenate(cols))), shape=(n_nodes, n_nodes))
        dist, pred = dijkstra(graph.T.tocsr(), directed=True, indices=goal, return_predecessors=True)
        # sorted (chain, psi) keys of every node for the arrivals' "next node along the chain" look-up
        key_sorted = chain[order] * 4.0 + psi[order]
        return {
            "b": b, "dist": dist, "pred": pred, "disk": disk, "side": side, "psi": psi, "pts": pts,
            "order": order, "key_sorted": key_sorted, "chain_sorted": chain[order], "goal": goal, "m": m,
        }

    # --- queries ----------------------------------------------------------------------
    def _best_arrival(self, a: np.ndarray, f: dict):
        """Best (length, node, arrival point, disk, side, psi) over the free tangents from ``a``; length inf if none."""
        td, ts, tp, tlen = self._tangent_points_to_disks(a, toward=True)
        ok = self.free_mask(tp)
        td, ts, tp, tlen = td[ok], ts[ok], tp[ok], tlen[ok]
        ok = self.segments_free(np.broadcast_to(a, tp.shape), tp)
        td, ts, tp, tlen = td[ok], ts[ok], tp[ok], tlen[ok]
        if len(td) == 0 or len(f["order"]) == 0:
            return math.inf, None
        psi = self._psi(td, ts, tp)
        chain = td * 2 + (ts < 0)
        pos = np.searchsorted(f["key_sorted"], chain * 4.0 + psi - 1e-12, side="left")
        valid = pos < len(f["order"])
        pos = np.minimum(pos, len(f["order"]) - 1)
        nxt = f["order"][pos]
        valid &= f["chain_sorted"][pos] == chain
        valid &= self._arcs_free(td, ts, psi, np.maximum(f["psi"][nxt], psi))
        cost = tlen + self.r * np.maximum(f["psi"][nxt] - psi, 0.0) + f["dist"][nxt]
        cost = np.where(valid, cost, np.inf)
        k = int(np.argmin(cost))
        if not math.isfinite(cost[k]):
            return math.inf, None
        return float(cost[k]), (int(nxt[k]), tp[k], int(td[k]), float(ts[k]), float(psi[k]))

    def _endpoint(self, p) -> np.ndarray | None:
        return self.snap(p)

    def distance(self, a, b) -> float:
        """Geodesic distance between floor points ``a`` and ``b`` (x, y, z), each snapped to the free space
        (:meth:`snap`); ``inf`` when either is not navigable or they are not connected."""
        pa, pb = self._endpoint(a), self._endpoint(b)
        if pa is None or pb is None:
            return math.inf
        euclid = math.hypot(pa[0] - pb[0], pa[1] - pb[1])
        if euclid < 1e-12 or self._clear(pa[0], pa[1], pb[0], pb[1]):
            return euclid
        cost, _ = self._best_arrival(pa, self._goal_field((pb[0], pb[1])))
        return max(cost, euclid)

    def path(self, a, b, arc_step: float = math.radians(15)) -> list[tuple[float, float, float]]:
        """A shortest path a -> b as floor points (arcs sampled every ``arc_step``), from ``a`` and to ``b``
        snapped to the free space (:meth:`snap`); ``[]`` when unreachable."""
        pa, pb = self._endpoint(a), self._endpoint(b)
        if pa is None or pb is None:
            return []
        out = [(float(pa[0]), 0.0, float(pa[1]))]
        if self._clear(pa[0], pa[1], pb[0], pb[1]):
            return out + [(float(pb[0]), 0.0, float(pb[1]))]
        f = self._goal_field((pb[0], pb[1]))
        _, best = self._best_arrival(pa, f)
        if best is None:
            return []
        node, tp, disk, side, psi = best
        pts2 = [tp]
        self._arc_points(pts2, disk, side, psi, float(f["psi"][node]), arc_step)
        goal, pred = f["goal"], f["pred"]
        while node != goal:
            nxt = int(pred[node])
            if nxt < 0:
                return []
            if nxt == goal:
                pts2.append(f["b"])
            elif self._is_arc(f, node, nxt):
                self._arc_points(pts2, int(f["disk"][node]), float(f["side"][node]), float(f["psi"][node]), float(f["psi"][nxt]), arc_step)
            else:
                pts2.append(f["pts"][nxt])
            node = nxt
        for q in pts2:
            q = (float(q[0]), 0.0, float(q[1]))
            if math.hypot(q[0] - out[-1][0], q[2] - out[-1][2]) > 1e-9:
                out.append(q)
        return out

    @staticmethod
    def _is_arc(f: dict, node: int, nxt: int) -> bool:
        """An edge node -> nxt (not to the goal) is a segment when it joins a tail to its head, otherwise an arc."""
        return not (node < f["m"] and nxt == node + f["m"])

    def _arc_points(self, out: list, disk: int, side: float, psi0: float, psi1: float, step: float):
        if psi1 <= psi0 + 1e-12:
            return
        k = max(1, int(math.ceil((psi1 - psi0) / step)))
        for t in np.linspace(psi0, psi1, k + 1)[1:]:
            rel = t if side > 0 else _HALF_PI - t
            ang = self.a0[disk] + rel
            out.append(self.centres[disk] + self.r * np.array([math.cos(ang), math.sin(ang)]))

"""Exact geodesic of the embedded world (saca.sim.embedded.geodesic) against hand-computed lengths
and an independent visibility-graph computation."""

import heapq
import math

import numpy as np
import pytest

from saca.sim.embedded.geodesic import ExactGeodesic
from saca.sim.embedded.navgrid import NavGrid
from saca.sim.embedded.world import SceneGenConfig, generate_scene, scene_seed

R = 0.18
T = 0.05  # half wall thickness


def box_walls(x0, z0, x1, z1):
    """The four walls around a room, as the scene generator draws them (centred on the room's edges)."""
    return [[x0 - T, z0 - T, x1 + T, z0 + T], [x0 - T, z1 - T, x1 + T, z1 + T],
            [x0 - T, z0 - T, x0 + T, z1 + T], [x1 - T, z0 - T, x1 + T, z1 + T]]


def tangent(p, c):
    return math.sqrt((p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 - R * R)


def wrap(p, c, toward_deg, clockwise):
    """Arc angle around disk c from the tangent point seen from p to the point at angle ``toward_deg``."""
    d = math.hypot(p[0] - c[0], p[1] - c[1])
    start = math.degrees(math.atan2(p[1] - c[1], p[0] - c[0]))
    turn = (start - toward_deg) % 360 if clockwise else (toward_deg - start) % 360
    return math.radians(turn) - math.acos(R / d)


def test_empty_room_is_euclidean():
    g = ExactGeodesic(box_walls(0, 0, 8, 8), [[0, 0, 8, 8]], R)
    for a, b in [((1, 0, 1), (5, 0, 4)), ((0.3, 0, 0.3), (7.7, 0, 7.7)), ((2, 0, 2), (2.6, 0, 2.8))]:
        assert g.distance(a, b) == pytest.approx(math.hypot(a[0] - b[0], a[2] - b[2]), abs=1e-12)
    assert g.distance((1, 0, 1), (1, 0, 1)) == 0.0
    assert g.path((1, 0, 1), (5, 0, 4)) == [(1.0, 0.0, 1.0), (5.0, 0.0, 4.0)]


def test_wall_with_doorway_wraps_the_door_jamb_at_the_agent_radius():
    # a wall x = 4 across an 8 x 8 room, with a doorway z in [3.5, 4.5]; both points below the doorway
    walls = box_walls(0, 0, 8, 8) + [[4 - T, -T, 4 + T, 3.5], [4 - T, 4.5, 4 + T, 8 + T]]
    g = ExactGeodesic(walls, [[0, 0, 8, 8]], R)
    a, b = (2.0, 1.0), (6.0, 1.0)
    c1, c2 = (4 - T, 3.5), (4 + T, 3.5)  # the jamb's two corners
    # tangent to the left corner, clockwise round it to its top, 0.1 m along the jamb's end, round the right corner
    expected = (tangent(a, c1) + R * wrap(a, c1, 90, clockwise=True) + 2 * T
                + R * wrap(b, c2, 90, clockwise=False) + tangent(b, c2))
    assert expected == pytest.approx(6.778370494122555, abs=1e-12)  # the same length, worked out once by hand
    assert g.distance((a[0], 0, a[1]), (b[0], 0, b[1])) == pytest.approx(expected, abs=1e-9)
    assert g.distance((b[0], 0, b[1]), (a[0], 0, a[1])) == pytest.approx(expected, abs=1e-9)
    path = g.path((a[0], 0, a[1]), (b[0], 0, b[1]))
    length = sum(math.hypot(p[0] - q[0], p[2] - q[2]) for p, q in zip(path, path[1:]))
    assert length == pytest.approx(expected, rel=2e-3)  # arcs sampled every 15 degrees: chords
    assert max(p[2] for p in path) == pytest.approx(3.5 + R)  # it passes the jamb exactly at the radius
    # through the doorway in a straight line: Euclidean
    assert g.distance((2, 0, 4), (6, 0, 4.2)) == pytest.approx(math.hypot(4, 0.2), abs=1e-12)


def test_l_shaped_corridor():
    # corridor along x (z in [0, 1.2]) joined to one along z (x in [2.8, 4]): an L
    walls = [[-T, -T, 4 + T, T], [-T, 1.2 - T, 2.8 + T, 1.2 + T], [-T, -T, T, 1.2 + T],
             [4 - T, -T, 4 + T, 5 + T], [2.8 - T, 1.2 - T, 2.8 + T, 5 + T], [2.8 - T, 5 - T, 4 + T, 5 + T]]
    g = ExactGeodesic(walls, [[0, 0, 4, 1.2], [2.8, 0, 4, 5]], R)
    a, b, c = (0.5, 0.6), (3.4, 4.5), (2.8 + T, 1.2 - T)  # c: the inner corner
    expected = tangent(a, c) + R * wrap(a, c, math.degrees(math.atan2(b[1] - c[1], b[0] - c[0])), clockwise=False) + tangent(b, c)
    # wrap() measured to b's direction: subtract b's own tangent offset
    expected -= R * math.acos(R / math.hypot(b[0] - c[0], b[1] - c[1]))
    assert g.distance((a[0], 0, a[1]), (b[0], 0, b[1])) == pytest.approx(expected, abs=1e-9)
    assert expected > math.hypot(a[0] - b[0], a[1] - b[1]) + 0.1


def test_unreachable_and_off_floor_points_are_inf():
    # two rooms with a wall between them and no door
    walls = box_walls(0, 0, 4, 4) + box_walls(4, 0, 8, 4)
    g = ExactGeodesic(walls, [[0, 0, 4, 4], [4, 0, 8, 4]], R)
    assert g.distance((1, 0, 1), (6, 0, 1)) == math.inf
    assert g.path((1, 0, 1), (6, 0, 1)) == []
    assert g.distance((1, 0, 1), (3.9, 0, 1)) == math.inf  # inside the grown wall
    assert g.distance((1, 0, 1), (9, 0, 1)) == math.inf  # outside every room


def door_jamb_world():
    """An 8 x 8 room split by a wall x = 4 with a doorway z in [3.5, 4.5] (the door jamb test's geometry)."""
    walls = box_walls(0, 0, 8, 8) + [[4 - T, -T, 4 + T, 3.5], [4 - T, 4.5, 4 + T, 8 + T]]
    return ExactGeodesic(walls, [[0, 0, 8, 8]], R)


def test_points_on_the_boundary_of_the_free_space_have_exact_geodesics():
    # a shortest path hugs the grown footprints: its points lie on their arcs and edges (issue 30: these were inf)
    g = door_jamb_world()
    b, c1, c2 = (6.0, 1.0), (4 - T, 3.5), (4 + T, 3.5)
    beyond = 2 * T + R * wrap(b, c2, 90, clockwise=False) + tangent(b, c2)  # from the top of c1's disk to b
    on_arc = (c1[0] + R * math.cos(math.radians(135)), 0.0, c1[1] + R * math.sin(math.radians(135)))
    on_edge = (4 - T - R, 0.0, 1.0)  # the grown jamb's flat face
    assert g.is_free(on_arc) and g.is_free(on_edge)
    expected = {on_arc: R * math.pi / 4 + beyond, on_edge: 2.5 + R * math.pi / 2 + beyond}
    for p, e in expected.items():
        assert g.distance(p, (b[0], 0, b[1])) == pytest.approx(e, abs=1e-9)
        assert g.distance((b[0], 0, b[1]), p) == pytest.approx(e, abs=1e-9)  # as a goal, too
        path = g.path(p, (b[0], 0, b[1]))
        assert path[0] == (p[0], 0.0, p[2]) and path[-1] == (b[0], 0.0, b[1])
        length = sum(math.hypot(u[0] - v[0], u[2] - v[2]) for u, v in zip(path, path[1:]))
        assert length == pytest.approx(e, rel=2e-3) and length <= e + 1e-9
    # two points of the same arc: along the arc
    top = (c1[0], 0.0, c1[1] + R)
    assert g.distance(on_arc, top) == pytest.approx(R * math.pi / 4, abs=1e-9)
    assert g.distance(top, on_arc) == pytest.approx(R * math.pi / 4, abs=1e-9)


def test_a_point_just_inside_a_grown_footprint_snaps_and_one_inside_the_wall_does_not():
    from saca.sim.embedded.geodesic import SNAP_TOL

    g = door_jamb_world()
    b = (6.0, 0.0, 1.0)
    face = (4 - T - R, 0.0, 1.0)
    inside = (face[0] + 0.01, 0.0, 1.0)  # 1 cm inside the jamb's grown footprint
    assert not g.is_free(inside) and g.navigable(inside)
    assert tuple(g.snap(inside)) == (face[0], face[2])  # the foot on the grown face
    assert g.distance(inside, b) == g.distance(face, b) and math.isfinite(g.distance(inside, b))
    assert g.distance(b, inside) == pytest.approx(g.distance(b, face), abs=1e-12)
    assert g.path(inside, b) == g.path(face, b)
    # 1 cm inside the grown corner: onto the corner's circle, radially
    c1 = (4 - T, 3.5)
    u = (math.cos(math.radians(135)), math.sin(math.radians(135)))
    arc_in = (c1[0] + (R - 0.01) * u[0], 0.0, c1[1] + (R - 0.01) * u[1])
    assert g.snap(arc_in) == pytest.approx([c1[0] + R * u[0], c1[1] + R * u[1]], abs=1e-12)
    # the room's concave corner (two grown walls): onto their crossing
    assert g.snap((T + R - 0.01, 0.0, T + R - 0.005)) == pytest.approx([T + R, T + R], abs=1e-12)
    # just beyond the tolerance, the middle of the wall, outside every room: not navigable
    for p in [(face[0] + SNAP_TOL + 0.005, 0.0, 1.0), (4.0, 0.0, 1.0), (9.0, 0.0, 1.0), (-T - R - 0.005, 0.0, 1.0)]:
        assert g.snap(p) is None and not g.navigable(p)
        assert g.distance(p, b) == math.inf and g.distance(b, p) == math.inf and g.path(p, b) == []
    # a move may start 1 cm inside (from its snapped point) but never ends inside a grown footprint
    assert g.segment_free(inside, (3.5, 0.0, 1.0)) and not g.segment_free(face, inside)
    assert not g.segment_free((4.0, 0.0, 1.0), (3.5, 0.0, 1.0))


def test_snapping_onto_crossings_of_a_circle_with_an_edge_and_of_two_circles():
    # an object whose corner circle cuts the bottom wall's grown edge; two objects whose corner circles cross
    objs = [[2.0, T + 0.3, 2.5, T + 0.6], [5.0, 5.0, 5.5, 5.5], [5.6, 5.0, 6.0, 5.5]]
    g = ExactGeodesic(box_walls(0, 0, 8, 8) + objs, [[0, 0, 8, 8]], R)
    cross = (2.0 - math.sqrt(R * R - (T + 0.3 - (T + R)) ** 2), T + R)  # circle at (2.0, T + 0.3) and z = T + R
    p = (cross[0] + 0.008, 0.0, cross[1] + 0.002)
    assert not g.is_free(p)
    assert g.snap(p) == pytest.approx(cross, abs=1e-12)
    cross2 = (5.55, 5.0 - math.sqrt(R * R - 0.05**2))  # circles at (5.5, 5.0) and (5.6, 5.0)
    p2 = (5.55, 0.0, cross2[1] + 0.005)  # nearer the crossing (5 mm) than the grown bottom edges (12 mm)
    assert not g.is_free(p2)
    assert g.snap(p2) == pytest.approx(cross2, abs=1e-12)


def test_the_simulator_agrees_with_the_geodesic_on_what_is_free(scene_builder, tmp_path):
    """snap_to_floor, move_to, geodesic_distance and shortest_path snap with the same tolerance."""
    from saca import SacaError
    from saca.sim import make_simulator
    from saca.sim.base import SimConfig

    index = scene_builder(tmp_path)
    sim = make_simulator("embedded", SimConfig(width=64, height=64), 15, tmp_path)
    sim.load_scene(index["train"][0])
    nav = sim.nav
    # a point on a room's west wall, where the grown wall's face is free floor
    face = None
    for room in sim.scene["rooms"]:
        x0, z0, x1, z1 = room["rect"]
        for z in np.linspace(z0 + 0.5, z1 - 0.5, 21):
            f = (x0 + T + R, 0.0, float(z))
            if all(nav.is_free((f[0] + dx, 0.0, f[2] + dz)) for dx, dz in ((0, 0), (0.3, 0), (0, 0.05), (0, -0.05))):
                face = f
                break
        if face is not None:
            break
    assert face is not None
    goal = tuple(nav.free_points(min_clearance=0.3)[-1])
    inside, wall = (face[0] - 0.01, 0.0, face[2]), (face[0] - R - T, 0.0, face[2])
    assert sim.snap_to_floor(inside) == pytest.approx(face, abs=1e-12) and nav.is_navigable(inside)
    assert sim.geodesic_distance(inside, goal) == sim.geodesic_distance(face, goal) < math.inf
    assert sim.shortest_path(inside, goal)[0] == pytest.approx(face, abs=1e-12)
    step = (face[0] + 0.25, 0.0, face[2])
    assert sim.move_to(inside, step) == step
    assert sim.move_to(face, inside) is None  # a move never ends inside a grown footprint
    with pytest.raises(SacaError, match="not navigable"):
        sim.snap_to_floor(wall)
    assert not nav.is_navigable(wall) and sim.geodesic_distance(wall, goal) == math.inf
    assert sim.shortest_path(wall, goal) == [] and sim.move_to(wall, step) is None
    sim.close()


# --- an independent reference: a visibility graph over shapely's buffered footprints ---------------------------
class ShapelyReference:
    """Free space as a shapely polygon (rooms minus footprints buffered by R, 8 segments per quarter circle);
    shortest paths through the visibility graph of its reflex vertices."""

    def __init__(self, rects, rooms):
        shapely = pytest.importorskip("shapely")
        from shapely.geometry import box

        self.shapely = shapely
        obstacles = shapely.union_all([box(*r).buffer(R, quad_segs=8) for r in rects])
        self.free = shapely.union_all([box(*r) for r in rooms]).difference(obstacles).buffer(1e-7)
        shapely.prepare(self.free)
        verts = []
        for poly in getattr(self.free, "geoms", [self.free]):
            for ring in [poly.exterior, *poly.interiors]:
                c = np.asarray(ring.coords)[:-1]
                verts.append(c)
        self.verts = np.concatenate(verts)
        n = len(self.verts)
        i, j = np.triu_indices(n, 1)
        vis = self._visible(self.verts[i], self.verts[j])
        w = np.hypot(*(self.verts[i] - self.verts[j]).T)
        self.adj = np.full((n, n), np.inf)
        self.adj[i[vis], j[vis]] = w[vis]
        self.adj[j[vis], i[vis]] = w[vis]

    def _visible(self, p, q):
        lines = self.shapely.linestrings(np.stack([p, q], axis=1))
        return self.shapely.covers(self.free, lines) | (np.hypot(*(p - q).T) < 1e-12)

    def distance(self, a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        if self._visible(a[None], b[None])[0]:
            return float(np.hypot(*(a - b)))
        from scipy.sparse.csgraph import dijkstra

        n = len(self.verts)
        adj = np.full((n + 2, n + 2), np.inf)
        adj[:n, :n] = self.adj
        for k, p in ((n, a), (n + 1, b)):
            vis = self._visible(np.broadcast_to(p, self.verts.shape), self.verts)
            w = np.where(vis, np.hypot(*(self.verts - p).T), np.inf)
            adj[k, :n] = adj[:n, k] = w
        adj[np.isinf(adj)] = 0  # dense csgraph input: 0 means no edge
        return float(dijkstra(adj, indices=n)[n + 1])

    def snap(self, p):
        """``p``, or the nearest point of the free polygon when ``p`` is not in it (shapely's own nearest point)."""
        from shapely.geometry import Point
        from shapely.ops import nearest_points

        q = Point(p)
        return np.asarray(p, float) if self.free.covers(q) else np.asarray(nearest_points(self.free, q)[0].coords[0])

    def distances_to(self, goal, points):
        """Distances from many points to one goal (one Dijkstra from the goal over the visibility graph)."""
        from scipy.sparse.csgraph import dijkstra

        b = np.asarray(goal, float)
        n = len(self.verts)
        vis = self._visible(np.broadcast_to(b, self.verts.shape), self.verts)
        adj = np.zeros((n + 1, n + 1))
        adj[:n, :n] = np.where(np.isinf(self.adj), 0, self.adj)
        adj[n, :n] = adj[:n, n] = np.where(vis, np.hypot(*(self.verts - b).T), 0)
        to_goal = dijkstra(adj, indices=n)[:n]
        out = []
        for p in points:
            p = np.asarray(p, float)
            if self._visible(p[None], b[None])[0]:
                out.append(float(np.hypot(*(p - b))))
                continue
            vis = self._visible(np.broadcast_to(p, self.verts.shape), self.verts)
            out.append(float(np.min(np.where(vis, np.hypot(*(self.verts - p).T) + to_goal, np.inf))))
        return out


@pytest.mark.parametrize("house", ["house_000", "house_001", "house_002"])
def test_random_pairs_match_an_independent_visibility_graph(house):
    scene = generate_scene(house, scene_seed(7, house), SceneGenConfig(rooms=[3, 5]))
    nav = NavGrid.from_scene(scene, R)
    ref = ShapelyReference(nav.exact.rects, [r["rect"] for r in scene["rooms"]])
    rng = np.random.default_rng(int(house[-3:]))
    pts = nav.free_points()
    n_free = n_detour = 0
    for _ in range(40):
        a, b = pts[rng.integers(len(pts))], pts[rng.integers(len(pts))]
        d = nav.geodesic_distance(a, b)
        e = math.hypot(a[0] - b[0], a[2] - b[2])
        expected = ref.distance((a[0], a[2]), (b[0], b[2]))
        assert d >= e - 1e-12
        if expected == pytest.approx(e, abs=1e-9):  # the segment is free: exactly Euclidean
            assert d == pytest.approx(e, abs=1e-12)
            n_free += 1
        else:
            assert d == pytest.approx(expected, rel=5e-3)
            n_detour += 1
        # the shortest path: from a to b, every waypoint navigable, as long as the distance (arcs drawn as chords)
        path = nav.shortest_path(a, b)
        assert path[0] == pytest.approx((a[0], 0.0, a[2])) and path[-1] == pytest.approx((b[0], 0.0, b[2]))
        assert all(nav.exact.is_free(p) for p in path)
        length = sum(math.hypot(p[0] - q[0], p[2] - q[2]) for p, q in zip(path, path[1:]))
        assert length == pytest.approx(d, rel=3e-3) and length <= d + 1e-9
    assert n_detour >= 10 and n_free >= 3


def test_scalar_and_vectorised_segment_rect_distance_agree():
    from saca.sim.embedded.geodesic import _segment_rect_distance_1, segment_rect_distance

    rng = np.random.default_rng(0)
    a, b = rng.uniform(-2, 2, (300, 2)), rng.uniform(-2, 2, (300, 2))
    b[:20] = a[:20]  # points
    b[20:40, 0] = a[20:40, 0]  # axis-parallel segments
    rects = np.array([[-0.5, -0.2, 0.5, 0.2], [1.0, 1.0, 1.1, 1.8]])
    vec = segment_rect_distance(a, b, rects)
    for i in range(len(a)):
        for k, q in enumerate(rects):
            assert _segment_rect_distance_1(*a[i], *b[i], tuple(q)) == pytest.approx(vec[i, k], abs=1e-12)
    # hand values: a segment passing 0.3 above the first rectangle, one crossing it, one ending 0.1 left of it
    assert segment_rect_distance(np.array([[-1.0, 0.5], [-1.0, 0.0], [-1.0, 0.0]]), np.array([[1.0, 0.5], [1.0, 0.0], [-0.6, 0.0]]),
                                 rects[:1])[:, 0] == pytest.approx([0.3, 0.0, 0.1])


def test_every_point_of_generated_reference_paths_and_expert_locations_has_an_exact_geodesic(mini_world):
    """Issue 30: most points of a reference path lie on the boundary of the free space (the path hugs the grown
    footprints): every one, every expert location and every start has a finite geodesic to the goal that agrees
    with the visibility graph within 0.5 %."""
    from saca.episodes import load_split
    from saca.io import read_json
    from saca.sim.embedded.geodesic import point_rect_distance

    navs, refs = {}, {}
    n_boundary = 0
    for name in mini_world["datasets"]:
        for split in ("train", "val_seen", "val_unseen"):
            for e in load_split(mini_world["root"] / name / "episodes", split):
                sid = e.scene_id.split("/")[-1]
                if sid not in navs:
                    scene = read_json(mini_world["scenes"] / f"{sid}.json")
                    navs[sid] = NavGrid.from_scene(scene, R)
                    refs[sid] = ShapelyReference(navs[sid].exact.rects, [r["rect"] for r in scene["rooms"]])
                nav, ref = navs[sid], refs[sid]
                goal = e.goal_position
                points = [e.start_position, *e.reference_path, *e.gt_locations]
                expected = ref.distances_to(ref.snap((goal[0], goal[2])), [ref.snap((p[0], p[2])) for p in points])
                for p, want in zip(points, expected):
                    n_boundary += point_rect_distance(np.array([[p[0], p[2]]]), nav.exact.rects).min() < R + 1e-6
                    got = nav.geodesic_distance(p, goal)
                    assert math.isfinite(got), (name, split, e.episode_id, p)
                    assert got == pytest.approx(want, rel=5e-3, abs=1e-9), (name, split, e.episode_id, p)
    assert n_boundary >= 20  # the case the issue is about does occur (155 of the fixture's points)

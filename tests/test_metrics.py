"""VLN-CE metrics on hand-computed trajectories (method-notes §1)."""

import math

import numpy as np
import pytest

from saca import SacaError
from saca.evaluate import metrics as M


def euclid_to(goal):
    g = np.asarray(goal, dtype=float)
    return lambda p: float(np.linalg.norm(np.asarray(p) - g))


# --- TL -------------------------------------------------------------------------------------------


def test_trajectory_length_sums_euclidean_steps():
    # steps: (0,0,0)->(3,0,4) = 5; (3,0,4)->(3,0,4) = 0 (a turn); (3,0,4)->(3,2,4) = 2 (y counts, 3-D)
    assert M.trajectory_length([[0, 0, 0], [3, 0, 4], [3, 0, 4], [3, 2, 4]]) == 7.0


def test_trajectory_length_single_position_is_zero():
    assert M.trajectory_length([[1.0, 0.0, 2.0]]) == 0.0


def test_trajectory_length_rejects_bad_points():
    with pytest.raises(SacaError, match="positions"):
        M.trajectory_length([[0, 0]])


# --- NE, OS, SR: the 3.0 m boundary is strict --------------------------------------------------


def test_navigation_error_is_last_distance():
    assert M.navigation_error([5.0, 4.0, 3.25]) == 3.25


def test_oracle_success_strict_boundary():
    assert M.oracle_success([5.0, 2.999, 4.0]) == 1.0
    assert M.oracle_success([5.0, 3.0, 4.0]) == 0.0  # exactly 3.0 is not < 3.0
    assert M.oracle_success([2.0]) == 1.0  # the start position counts (VLN-CE updates at reset)


def test_success_needs_stop_and_strict_distance():
    assert M.success(True, 2.999) == 1.0
    assert M.success(True, 3.0) == 0.0
    assert M.success(False, 0.0) == 0.0  # STOP never called


# --- SPL ------------------------------------------------------------------------------------------


def test_spl_formula():
    assert M.spl(1.0, 2.0, 4.0) == 0.5  # 1 * 2 / max(2, 4)
    assert M.spl(1.0, 4.0, 3.0) == 1.0  # TL < d0: max(4, 3) = 4 -> 4 / 4
    assert M.spl(0.0, 2.0, 2.0) == 0.0


def test_spl_d0_zero():
    assert M.spl(1.0, 0.0, 0.0) == 1.0  # 0/0: defined as S (optimal zero-length path)
    assert M.spl(0.0, 0.0, 0.0) == 0.0
    assert M.spl(1.0, 0.0, 1.5) == 0.0  # 1 * 0 / max(0, 1.5)


# --- DTW / nDTW / SDTW ------------------------------------------------------------------------------


def test_exact_dtw_hand_computed():
    # P = (0,0,0), (1,0,0), (2,0,0); R = (0,0,0), (2,0,0)
    # costs c(i,j): c00=0 c01=2 / c10=1 c11=1 / c20=2 c21=0
    # D00=0 D01=2 / D10=1 D11=1+min(0,2,1)=1 / D20=3 D21=0+min(D11=1, D10=1, D20=3)=1
    p = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    r = [[0, 0, 0], [2, 0, 0]]
    assert M.dtw_distance(p, r) == 1.0
    assert M.ndtw(p, r) == pytest.approx(math.exp(-1.0 / (2 * 3.0)), abs=1e-15)


def test_exact_dtw_matches_reference_implementation():
    from fastdtw import dtw as ref_dtw  # the exact DTW shipped with fastdtw

    rng = np.random.default_rng(0)
    for n, m in [(1, 1), (1, 5), (7, 1), (13, 29), (40, 17)]:
        p, r = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
        want = ref_dtw(p, r, dist=lambda a, b: float(np.linalg.norm(a - b)))[0]
        assert M.dtw_distance(p, r) == pytest.approx(want, rel=1e-12)
        # fastdtw approximates from above
        assert M.dtw_distance(p, r, "fastdtw") >= M.dtw_distance(p, r) - 1e-9


def test_dtw_unknown_method():
    with pytest.raises(SacaError, match="unknown method 'approx'"):
        M.dtw_distance([[0, 0, 0]], [[0, 0, 0]], "approx")


def test_ndtw_positions_appended_only_on_change():
    p = [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]
    # repeats collapse; a return to an earlier, non-adjacent position is kept
    assert M.ndtw_positions(p) == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_ndtw_repeated_positions_do_not_change_value():
    r = [[0, 0, 0], [2, 0, 0]]
    once = M.ndtw([[0, 0, 0], [1, 0, 0], [2, 0, 0]], r)
    repeated = M.ndtw([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [2, 0, 0]], r)
    assert once == repeated == pytest.approx(math.exp(-1.0 / 6.0), abs=1e-15)


def test_sdtw():
    assert M.sdtw(1.0, 0.75) == 0.75
    assert M.sdtw(0.0, 0.75) == 0.0


# --- whole episodes -------------------------------------------------------------------------------------


def test_episode_detour_all_metrics():
    # Goal (2,0,0) in free space (geodesic = Euclidean). The agent detours through z = -1:
    # P = (0,0,0) (0,0,-1) (1,0,-1) (2,0,-1) (2,0,0), then STOP (position repeated).
    positions = [[0, 0, 0], [0, 0, -1], [1, 0, -1], [1, 0, -1], [2, 0, -1], [2, 0, 0], [2, 0, 0]]
    ref = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    m = M.episode_metrics(positions, True, ref, geodesic=euclid_to([2, 0, 0]))
    # TL = 1 + 1 + 0 + 1 + 1 + 0 = 4; d0 = 2; NE = 0; SPL = 1 * 2 / max(2, 4) = 0.5
    # DTW (deduped P, 5 points, vs R): costs
    #   P0: 0 1 2 | P1: 1 r2 r5 | P2: r2 1 r2 | P3: r5 r2 1 | P4: 2 1 0      (r2 = sqrt 2, r5 = sqrt 5)
    #   D row0: 0 1 3;  row1: 1, r2, r5+1;  row2: r2+1, 1+min(1, r2, r2+1)=2, r2+min(r2, r5+1, 2)=2 r2
    #   row3: r5+r2+1, r2+min(r2+1, 2, .)=2+r2, 1+min(2, 2 r2, 2+r2)=3;  row4: ., 1+min(.,2+r2,.)=3+r2, 0+min(2+r2, 3, 3+r2)=3
    # nDTW = exp(-3 / (3 * 3)) = exp(-1/3)
    assert m["TL"] == 4.0
    assert m["NE"] == 0.0
    assert m["OS"] == 1.0
    assert m["SR"] == 1.0
    assert m["SPL"] == 0.5
    assert m["nDTW"] == pytest.approx(math.exp(-1.0 / 3.0), abs=1e-15)
    assert m["SDTW"] == m["nDTW"]
    assert set(m) == set(M.METRIC_KEYS)


def test_episode_stop_never_called():
    # Reaches 1 m of the goal but is cut off by the step limit: SR = SPL = SDTW = 0, OS = 1.
    positions = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    m = M.episode_metrics(positions, False, [[0, 0, 0], [3, 0, 0]], distances=[3.0, 2.0, 1.0])
    assert (m["SR"], m["SPL"], m["SDTW"], m["OS"], m["NE"], m["TL"]) == (0.0, 0.0, 0.0, 1.0, 1.0, 2.0)
    # DTW: P0-R0 0, P1-R0 1, P2-R1 1 -> 2 (= min over warping paths); nDTW = exp(-2 / 6)
    assert m["nDTW"] == pytest.approx(math.exp(-2.0 / 6.0), abs=1e-15)


def test_episode_start_at_goal_d0_zero():
    # Start on the goal, STOP at once: TL = 0, d0 = 0 -> SPL defined as S = 1.
    m = M.episode_metrics([[1, 0, 1], [1, 0, 1]], True, [[1, 0, 1]], distances=[0.0, 0.0])
    assert m == {"TL": 0.0, "NE": 0.0, "OS": 1.0, "SR": 1.0, "SPL": 1.0, "nDTW": 1.0, "SDTW": 1.0}


def test_episode_d0_zero_but_wanders():
    # d0 = 0, walks 1 m out and back, STOP on the goal: SPL = 1 * 0 / max(0, 2) = 0.
    pos = [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]
    m = M.episode_metrics(pos, True, [[0, 0, 0]], distances=[0.0, 1.0, 0.0, 0.0])
    assert (m["SR"], m["SPL"], m["TL"]) == (1.0, 0.0, 2.0)
    # DTW against a single reference point: 0 + 1 + 0 = 1; nDTW = exp(-1 / (1 * 3))
    assert m["nDTW"] == pytest.approx(math.exp(-1.0 / 3.0), abs=1e-15)


def test_episode_never_moves():
    # Turns in place for the whole episode and never stops.
    positions = [[0, 0, 0]] * 6
    ref = [[0, 0, 0], [0, 0, -1], [0, 0, -2]]
    m = M.episode_metrics(positions, False, ref, distances=[5.0] * 6)
    # P collapses to one point; DTW = 0 + 1 + 2 = 3; nDTW = exp(-3 / (3 * 3))
    assert m["TL"] == 0.0 and m["NE"] == 5.0 and m["OS"] == 0.0 and m["SR"] == 0.0 and m["SPL"] == 0.0
    assert m["nDTW"] == pytest.approx(math.exp(-1.0 / 3.0), abs=1e-15)


def test_episode_success_boundary_is_strict():
    pos = [[0, 0, 0], [0, 0, 0]]
    at = M.episode_metrics(pos, True, [[0, 0, 0]], distances=[3.0, 3.0])
    inside = M.episode_metrics(pos, True, [[0, 0, 0]], distances=[3.0, math.nextafter(3.0, 0.0)])
    assert (at["SR"], at["OS"], at["SPL"]) == (0.0, 0.0, 0.0)
    assert (inside["SR"], inside["OS"], inside["SPL"]) == (1.0, 1.0, 1.0)  # TL = 0 < d0 = 3


def test_episode_geodesic_called_once_per_distinct_position():
    calls = []

    def geo(p):
        calls.append(p)
        return 1.0

    M.episode_metrics([[0, 0, 0]] * 4 + [[1, 0, 0]] * 3, True, [[0, 0, 0]], geodesic=geo)
    assert len(calls) == 2


def test_episode_rejects_unreachable_and_mismatch():
    with pytest.raises(SacaError, match="non-finite"):
        M.episode_metrics([[0, 0, 0]], True, [[0, 0, 0]], distances=[math.inf])
    with pytest.raises(SacaError, match="2 distances for 1 positions"):
        M.episode_metrics([[0, 0, 0]], True, [[0, 0, 0]], distances=[1.0, 1.0])


def test_episode_explicit_d0_overrides_start_distance():
    m = M.episode_metrics([[0, 0, 0], [1, 0, 0]], True, [[0, 0, 0]], distances=[2.0, 1.0], d0=0.5)
    assert m["SPL"] == 0.5  # 0.5 / max(0.5, 1)


# --- aggregate -------------------------------------------------------------------------------------------


def test_aggregate_means_and_count():
    a = {"TL": 4.0, "NE": 0.0, "OS": 1.0, "SR": 1.0, "SPL": 0.5, "nDTW": 0.5, "SDTW": 0.5}
    b = {"TL": 2.0, "NE": 6.0, "OS": 0.0, "SR": 0.0, "SPL": 0.0, "nDTW": 0.25, "SDTW": 0.0}
    agg = M.aggregate([a, b])
    assert agg == {"TL": 3.0, "NE": 3.0, "OS": 0.5, "SR": 0.5, "SPL": 0.25, "nDTW": 0.375, "SDTW": 0.25,
                   "episodes": 2}
    assert list(agg) == ["TL", "NE", "OS", "SR", "SPL", "nDTW", "SDTW", "episodes"]


def test_aggregate_is_order_independent():
    rng = np.random.default_rng(1)
    rows = [{k: float(v) for k, v in zip(M.METRIC_KEYS, rng.random(7))} for _ in range(50)]
    assert M.aggregate(rows) == M.aggregate(rows[::-1]) == M.aggregate(sorted(rows, key=lambda r: r["TL"]))


def test_aggregate_errors():
    with pytest.raises(SacaError, match="no episodes"):
        M.aggregate([])
    with pytest.raises(SacaError, match="'SDTW'"):
        M.aggregate([{"TL": 1, "NE": 1, "OS": 1, "SR": 1, "SPL": 1, "nDTW": 1}])


def test_geodesic_distances_with_goal_queries_only_what_a_metric_reads():
    # goal at the origin; a wall makes the geodesic 2 m longer than the Euclidean distance everywhere
    goal = [0.0, 0.0, 0.0]
    positions = [[6, 0, 0], [5, 0, 0], [4, 0, 0], [2.9, 0, 0], [5, 0, 0], [3.5, 0, 0]]
    calls = []

    def geo(p):
        calls.append(p)
        return math.hypot(p[0], p[2]) + 2.0

    full = [math.hypot(p[0], p[2]) + 2.0 for p in positions]
    fast = M.geodesic_distances(positions, geo, goal=goal)
    # first and last (d0, NE) and the one position within 3 m Euclidean (OS); elsewhere the Euclidean lower bound
    assert calls == [(6.0, 0.0, 0.0), (3.5, 0.0, 0.0), (2.9, 0.0, 0.0)]
    assert fast == [8.0, 5.0, 4.0, 4.9, 5.0, 5.5]
    for stop in (True, False):
        assert M.episode_metrics(positions, stop, [goal], distances=fast) == M.episode_metrics(positions, stop, [goal], distances=full)
    # a trajectory that passes within 3 m geodesic: OS is read from the exact value
    geo_near = lambda p: math.hypot(p[0], p[2]) * 1.01  # noqa: E731
    fast = M.geodesic_distances(positions, geo_near, goal=goal)
    assert M.oracle_success(fast) == 1.0 and fast[3] == pytest.approx(2.929)


def test_geodesic_distances_stop_querying_once_oracle_success_is_settled():
    goal = [0.0, 0.0, 0.0]
    positions = [[6, 0, 0], [2.5, 0, 0], [2.0, 0, 0], [1.0, 0, 0], [2.2, 0, 0]]
    calls = []

    def geo(p):
        calls.append(p[0])
        return {6.0: 6.5, 2.5: 3.4, 2.0: 3.2, 1.0: 2.4, 2.2: 3.3}[p[0]]

    out = M.geodesic_distances(positions, geo, goal=goal)
    # the last position is 3.3 m away: nearest middle positions first, and none after 1.0 m (2.4 < 3) settles OS
    assert calls == [6.0, 2.2, 1.0]
    assert out == [6.5, 2.5, 2.0, 2.4, 3.3]
    full = [geo(p) for p in positions]
    for stop in (True, False):
        assert M.episode_metrics(positions, stop, [goal], distances=out) == M.episode_metrics(positions, stop, [goal], distances=full)

"""VLN-CE evaluation metrics: TL, NE, OS, SR, SPL, nDTW, SDTW (method-notes §1).

Each metric is one pure function whose docstring names the VLN-CE measure it
reproduces (``habitat_extensions/measures.py`` of VLN-CE and Habitat's
``SPL``). :func:`episode_metrics` computes all of them for one finished
episode and :func:`aggregate` averages them over a split.

Inputs of one episode:

* ``positions``: the agent's position after ``reset`` and after every
  environment step (``steps + 1`` points ``[x, y, z]``, ``y`` up);
* ``distances``: the geodesic distance to the goal at each of those positions
  (or a ``geodesic(position) -> float`` callable that :func:`episode_metrics`
  evaluates once per distinct position);
* ``stop_called``: whether the agent issued STOP (an episode cut off at the
  step limit has ``False``);
* ``reference``: the ground-truth locations nDTW compares against.

Distances are in metres, Euclidean in 3-D unless stated, exactly as VLN-CE.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from saca import SacaError

SUCCESS_DISTANCE = 3.0
METRIC_KEYS = ("TL", "NE", "OS", "SR", "SPL", "nDTW", "SDTW")
DTW_METHODS = ("exact", "fastdtw")

Position = Sequence[float]


def _as_points(points: Iterable[Position], name: str) -> np.ndarray:
    arr = np.asarray([[float(v) for v in p] for p in points], dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 3:
        raise SacaError(f"{name}: expected a non-empty list of [x, y, z] points, got shape {arr.shape}")
    return arr


def trajectory_length(positions: Sequence[Position]) -> float:
    """TL (VLN-CE ``PathLength``): summed Euclidean length of every step.

    ``sum_t ||p_{t+1} - p_t||_2`` over consecutive recorded positions; turns,
    STOP and blocked forward moves add 0.
    """
    p = _as_points(positions, "positions")
    if len(p) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


def navigation_error(distances: Sequence[float]) -> float:
    """NE (VLN-CE ``DistanceToGoal`` at episode end): geodesic distance from the final position to the goal."""
    if len(distances) == 0:
        raise SacaError("navigation_error: no distances (the trajectory has no positions)")
    return float(distances[-1])


def oracle_success(distances: Sequence[float], success_distance: float = SUCCESS_DISTANCE) -> float:
    """OS (VLN-CE ``OracleSuccess``): 1 if the geodesic distance to the goal was ever ``< 3.0`` m.

    VLN-CE updates it at reset and after every step, so the start position counts.
    """
    return float(any(d < success_distance for d in distances))


def success(stop_called: bool, final_distance: float, success_distance: float = SUCCESS_DISTANCE) -> float:
    """SR (VLN-CE ``Success``): 1 iff STOP was called and the final geodesic distance is ``< 3.0`` m (strict)."""
    return float(bool(stop_called) and final_distance < success_distance)


def spl(success_value: float, d0: float, tl: float) -> float:
    """SPL (Habitat ``SPL``, Anderson et al. 2018): ``S * d0 / max(d0, TL)``.

    ``d0`` is the geodesic start-goal distance, ``TL`` the trajectory length.
    The formula is undefined only when ``d0 = 0`` and ``TL = 0`` (start on the
    goal, agent never moved; Habitat would produce NaN): the agent walked the
    optimal path of length 0, so SPL = S there. With ``d0 = 0`` and
    ``TL > 0`` the formula gives 0 and is kept.
    """
    if d0 < 0 or tl < 0:
        raise SacaError(f"spl: d0 ({d0}) and TL ({tl}) must be non-negative")
    denom = max(d0, tl)
    if denom == 0.0:
        return float(success_value)
    return float(success_value) * d0 / denom


def ndtw_positions(positions: Sequence[Position]) -> list[list[float]]:
    """The agent positions nDTW sees (VLN-CE ``NDTW.update_metric``).

    The first position is always kept; a later one is appended only when it
    differs from the last appended one (turns, STOP and blocked moves add
    nothing). Returning to an earlier, non-adjacent position does append it.
    """
    out: list[list[float]] = []
    for p in positions:
        q = [float(v) for v in p]
        if not out or q != out[-1]:
            out.append(q)
    return out


def dtw_distance(query: Sequence[Position], reference: Sequence[Position], method: str = "exact") -> float:
    """Dynamic-time-warping distance with Euclidean point cost (Magalhaes et al. 2019).

    ``exact``: the full dynamic programme
    ``D[i, j] = c(i, j) + min(D[i-1, j-1], D[i-1, j], D[i, j-1])``, ``D[0, 0] = c(0, 0)``,
    result ``D[n-1, m-1]``. ``fastdtw``: the ``fastdtw`` package with its
    default radius 1, as VLN-CE computes it (an upper bound of the exact value).
    """
    q = _as_points(query, "dtw query")
    r = _as_points(reference, "dtw reference")
    if method == "fastdtw":
        from fastdtw import fastdtw

        return float(fastdtw(q, r, dist=lambda a, b: float(np.linalg.norm(b - a, ord=2)))[0])
    if method != "exact":
        raise SacaError(f"dtw: unknown method '{method}'; choose one of {', '.join(DTW_METHODS)}")
    n, m = len(q), len(r)
    cost = np.linalg.norm(q[:, None, :] - r[None, :, :], axis=2)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    # Cells with the same i + j only depend on the two previous anti-diagonals: one vector op each.
    for s in range(2, n + m + 1):
        i = np.arange(max(1, s - m), min(n, s - 1) + 1)
        j = s - i
        best = np.minimum(np.minimum(acc[i - 1, j - 1], acc[i - 1, j]), acc[i, j - 1])
        acc[i, j] = cost[i - 1, j - 1] + best
    return float(acc[n, m])


def ndtw(
    positions: Sequence[Position],
    reference: Sequence[Position],
    success_distance: float = SUCCESS_DISTANCE,
    method: str = "exact",
) -> float:
    """nDTW (VLN-CE ``NDTW``): ``exp(-DTW(P, R) / (|R| * 3.0))``.

    ``P`` = :func:`ndtw_positions` of the agent's positions, ``R`` the
    reference locations (VLN-CE: the ``locations`` of ``{split}_gt.json.gz``).
    """
    ref = _as_points(reference, "nDTW reference")
    d = dtw_distance(ndtw_positions(positions), ref, method)
    return float(math.exp(-d / (len(ref) * success_distance)))


def sdtw(success_value: float, ndtw_value: float) -> float:
    """SDTW (VLN-CE ``SDTW``): success-weighted nDTW, ``S * nDTW``."""
    return float(success_value) * float(ndtw_value)


def geodesic_distances(
    positions: Sequence[Position],
    geodesic: Callable[[Position], float],
    goal: Position | None = None,
    success_distance: float = SUCCESS_DISTANCE,
) -> list[float]:
    """``geodesic(p)`` for every position, evaluated once per distinct position.

    With ``goal``, only what :func:`episode_metrics` reads is the geodesic
    distance: the first entry (SPL's ``d0``), the last (NE, SR) and whether any
    entry is below ``success_distance`` (OS). Those two are exact; a middle
    position is queried only while OS is unsettled and its Euclidean distance
    to the goal is below ``success_distance`` (nearest first), and every other
    middle entry is its Euclidean distance, a lower bound of the geodesic one.
    Every metric is then the same as with all geodesic distances, for a
    fraction of the queries (an evaluation queries about 2 per episode).
    """
    cache: dict[tuple, float] = {}

    def query(key):
        if key not in cache:
            cache[key] = float(geodesic(key))
        return cache[key]

    keys = [tuple(float(v) for v in p) for p in positions]
    if goal is None or len(keys) <= 2:
        return [query(k) for k in keys]
    g = np.asarray([float(v) for v in goal], dtype=np.float64)
    euclid = np.linalg.norm(np.asarray(keys, dtype=np.float64) - g, axis=1)
    out = [float(e) for e in euclid]
    out[0], out[-1] = query(keys[0]), query(keys[-1])
    settled = min(out[0], out[-1]) < success_distance
    for i in np.argsort(euclid[1:-1], kind="stable") + 1:
        if settled or euclid[i] >= success_distance:
            break
        out[i] = query(keys[i])
        settled = out[i] < success_distance
    return out


def episode_metrics(
    positions: Sequence[Position],
    stop_called: bool,
    reference: Sequence[Position],
    distances: Sequence[float] | None = None,
    geodesic: Callable[[Position], float] | None = None,
    d0: float | None = None,
    success_distance: float = SUCCESS_DISTANCE,
    dtw: str = "exact",
) -> dict[str, float]:
    """All VLN-CE metrics of one episode (keys :data:`METRIC_KEYS`).

    Give either ``distances`` (geodesic distance to the goal at every
    position) or ``geodesic`` (position -> distance to the goal). ``d0``
    defaults to the distance at the start position, ``distances[0]``.
    Non-finite distances (a position from which the goal is unreachable) raise
    SacaError: NE and SPL would be meaningless.
    """
    if len(positions) == 0:
        raise SacaError("episode_metrics: the trajectory has no positions")
    if distances is None:
        if geodesic is None:
            raise SacaError("episode_metrics: give distances or a geodesic callable")
        distances = geodesic_distances(positions, geodesic)
    if len(distances) != len(positions):
        raise SacaError(
            f"episode_metrics: {len(distances)} distances for {len(positions)} positions"
        )
    if d0 is None:
        d0 = distances[0]
    bad = [d for d in [d0, *distances] if not math.isfinite(d)]
    if bad:
        raise SacaError("episode_metrics: non-finite geodesic distance (goal unreachable from the trajectory)")
    tl = trajectory_length(positions)
    ne = navigation_error(distances)
    s = success(stop_called, ne, success_distance)
    n = ndtw(positions, reference, success_distance, dtw)
    return {
        "TL": tl,
        "NE": ne,
        "OS": oracle_success(distances, success_distance),
        "SR": s,
        "SPL": spl(s, float(d0), tl),
        "nDTW": n,
        "SDTW": sdtw(s, n),
    }


def aggregate(per_episode: Iterable[Mapping[str, float]]) -> dict[str, float | int]:
    """Mean of every metric over episodes (VLN-CE reports the plain mean), plus ``episodes``.

    Sums use ``math.fsum`` so the result does not depend on episode order
    (a merged sharded run gives the same bytes as an unsharded one).
    """
    rows = list(per_episode)
    if not rows:
        raise SacaError("aggregate: no episodes to average")
    out: dict[str, float | int] = {}
    for key in METRIC_KEYS:
        try:
            vals = [float(r[key]) for r in rows]
        except KeyError:
            raise SacaError(f"aggregate: an episode has no '{key}' metric") from None
        out[key] = math.fsum(vals) / len(vals)
    out["episodes"] = len(rows)
    return out

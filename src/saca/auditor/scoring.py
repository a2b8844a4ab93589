"""PGSA auditor scoring: pure functions, one per equation (method-notes §3.2).

Nothing here touches images or models: the perception backends produce the
per-(frame, landmark) components ``S_g, c, S_b, u, S_m`` and these functions
turn them into the step soft score, the process score, the landmark track, the
hard mask and the divergence point. Every threshold and weight is an argument
carrying the paper's name; :class:`saca.auditor.config.AuditorConfig` holds the
defaults (SACA Table S2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from saca import SacaError

MODULES = ("global", "box", "mask")


def check_modules(modules: Iterable[str], where: str = "auditor.modules") -> tuple[str, ...]:
    """Validate a module switch list (SACA Table 5); returns it as a tuple in canonical order."""
    mods = list(modules)
    bad = [m for m in mods if m not in MODULES]
    if bad:
        raise SacaError(f"{where}: unknown module '{bad[0]}'; choose from {', '.join(MODULES)}")
    if not mods:
        raise SacaError(f"{where}: at least one module must be enabled")
    if len(set(mods)) != len(mods):
        raise SacaError(f"{where}: duplicate module in {mods}")
    return tuple(m for m in MODULES if m in mods)


def soft_score(
    S_g: float,
    c: float,
    S_b: float,
    u: float,
    S_m: float,
    *,
    w_g: float = 0.3,
    w_b: float = 0.3,
    w_m: float = 0.4,
    tau_det: float = 0.3,
    modules: Sequence[str] = MODULES,
) -> float:
    """Step soft score ``s_t`` (SACA Eq. 1, method-notes §3.2).

    ``s_t = (w_g*S_g + w_b*c*S_b + w_m*u*S_m) / (sum of w over enabled modules)``

    * ``S_g``: cosine of the whole frame with the prompt (global term);
    * ``c``: confidence of the highest-confidence detection box; when
      ``c <= tau_det`` the local terms (box and mask) are 0;
    * ``S_b``: cosine of the box crop with the prompt;
    * ``u``: the segmenter's predicted IoU for the box-prompted mask;
    * ``S_m``: cosine of the masked crop (background zeroed) with the prompt.

    Disabled modules (Table 5: ``{global}``, ``{global, box}``,
    ``{global, box, mask}``) contribute neither their term nor their weight
    (reconstruction: confidence factors and renormalisation).
    """
    mods = check_modules(modules)
    weights = {"global": w_g, "box": w_b, "mask": w_m}
    if any(weights[m] < 0 for m in mods):
        raise SacaError(f"auditor weights must be non-negative, got w_g={w_g}, w_b={w_b}, w_m={w_m}")
    denom = sum(weights[m] for m in mods)
    if denom <= 0:
        raise SacaError(f"auditor: the weights of the enabled modules {list(mods)} sum to 0")
    local = c > tau_det
    num = 0.0
    if "global" in mods:
        num += w_g * S_g
    if "box" in mods and local:
        num += w_b * c * S_b
    if "mask" in mods and local:
        num += w_m * u * S_m
    return num / denom


def process_score(scores: Sequence[float], tau_soft: float = 0.2) -> float:
    """Process score ``P(tau) = (1/T) * sum_t relu(s_t - tau_soft)`` (SACA Eq. 2).

    A trajectory with no steps has ``P = 0``.
    """
    T = len(scores)
    if T == 0:
        return 0.0
    return sum(max(0.0, float(s) - tau_soft) for s in scores) / T


@dataclass
class LandmarkTrack:
    """The auditor's walk through the landmark list along one trajectory.

    ``active[t]`` is the index of the landmark ``s[t]`` was scored against,
    ``hard[t]`` whether step t is a hard match (``s[t] >= tau_hard``),
    ``transitions`` the steps after which the active landmark advanced, and
    ``reached`` how many landmarks were grounded ``k_consec`` times in a row
    (the last one included; it stays active once reached).
    """

    s: list[float] = field(default_factory=list)
    active: list[int] = field(default_factory=list)
    hard: list[bool] = field(default_factory=list)
    transitions: list[int] = field(default_factory=list)
    reached: int = 0


def track_landmarks(
    score: Callable[[int, int], float],
    T: int,
    M: int,
    *,
    tau_hard: float = 0.25,
    k_consec: int = 2,
    lookahead: int = 0,
) -> LandmarkTrack:
    """Landmark transition (SACA §3.1 "Structural Hard Masking", Appendix B.1 item 3).

    ``lookahead = 0`` (the literal reading): step ``t`` is scored against the
    active landmark ``j``: ``s_t = score(t, j)``. It is a *hard match* when
    ``s_t >= tau_hard``. After ``k_consec`` consecutive hard matches the active
    landmark advances to ``j + 1`` (from step ``t + 1`` on) and the run count
    restarts; the last landmark stays active once reached.

    ``lookahead = n > 0`` (reconstruction, issue 29): step ``t`` is scored
    against the landmarks within ``n`` places of the active one in the
    instruction's order, ``s_t = max_i score(t, i)`` for ``i`` in
    ``j-n..j+n``, and is a hard match when ``s_t >= tau_hard``. The transition
    from ``l_j`` to ``l_{j+1}`` happens once ``l_j`` has been grounded
    (``k_consec`` hard matches in a row) and ``l_{j+1}`` has then been
    hard-matched ``k_consec`` steps in a row (``l_{j+1}`` active from step
    ``t + 1``). The active landmark thus stays active along its leg, while the
    agent walks toward it, and hands over when the next one comes into view;
    a landmark left early (the next one glimpsed on the way) still grounds the
    steps that see it. Landmarks are taken in order: only ``j + 1`` triggers
    a transition, whatever ``n``.

    ``reached`` is one more than the highest landmark index grounded
    ``k_consec`` times in a row. ``score`` is called only for the pairs the
    walk needs, so a caller can compute scores lazily. With no landmarks
    (``M == 0``) every step scores 0 and nothing is ever a hard match.
    """
    if k_consec < 1:
        raise SacaError(f"auditor.k_consec must be >= 1, got {k_consec}")
    if lookahead < 0:
        raise SacaError(f"auditor.lookahead must be >= 0, got {lookahead}")
    tr = LandmarkTrack()
    j = 0
    runs: dict[int, int] = {}
    for t in range(T):
        window = range(max(0, j - lookahead), min(j + lookahead, M - 1) + 1) if M > 0 else range(0)
        scores = {}
        for i in window:
            v = float(score(t, i))
            if math.isnan(v):
                raise SacaError(f"auditor: soft score of step {t} (landmark {i}) is NaN")
            scores[i] = v
        s = max(scores.values()) if scores else 0.0
        hard = M > 0 and s >= tau_hard
        tr.s.append(s)
        tr.active.append(j)
        tr.hard.append(hard)
        runs = {i: (runs.get(i, 0) + 1 if v >= tau_hard else 0) for i, v in scores.items()}
        if runs.get(j, 0) >= k_consec:  # the active landmark grounded
            tr.reached = max(tr.reached, j + 1)
            if lookahead == 0:
                if j < M - 1:
                    j += 1
                    tr.transitions.append(t)
                runs = {}
        if lookahead > 0 and j < M - 1 and tr.reached > j and runs.get(j + 1, 0) >= k_consec:
            j += 1  # l_j was grounded; l_{j+1} now has been, k_consec steps in a row
            tr.reached = max(tr.reached, j + 1)
            tr.transitions.append(t)
            runs = {}
    return tr


def first_grounding(hard: Sequence[bool], k: int = 1) -> int | None:
    """First step of the first run of ``k`` hard matches in a row (``None`` if there is none)."""
    run = 0
    for t, h in enumerate(hard):
        run = run + 1 if h else 0
        if run >= k:
            return t - k + 1
    return None


def divergence_point(hard: Sequence[bool], patience: int = 8, success: bool = False,
                     count_initial_gap: bool = True, initial_patience: int | None = None,
                     initial_k_consec: int = 1) -> int:
    """Divergence point ``t*`` (SACA Eq. 3, method-notes §3.2; reconstruction).

    A *gap* is a maximal run of steps without a hard match. The first gap
    longer than ``patience`` steps starts right after the last hard match
    preceding it, and ``t*`` is that step: the first step of the gap. Special
    cases:

    * the trajectory never grounds anything (no hard match at all): ``t* = 0``;
    * no gap exceeds ``patience`` ("never loses grounding"): ``t* = T - 1`` for
      a failed trajectory (its final STOP decision diverged), ``t* = T`` for a
      successful one (the whole trajectory is valid).

    The gap before the first hard match counts like any other
    (``count_initial_gap=True``, the literal reading of method-notes §3.2: a
    long search for the first landmark gives ``t* = 0``). With
    ``count_initial_gap=False`` (a config option, reconstruction) the agent has
    to ground something before it can lose grounding: gaps are counted from
    the first hard match on. ``initial_patience`` (reconstruction, issue 29;
    ``None``: ``patience``) is the longest search for the first landmark that
    does not count as losing grounding when ``count_initial_gap`` is True: an
    initial gap longer than it gives ``t* = 0``. The initial search ends at the
    first run of ``initial_k_consec`` hard matches in a row (reconstruction,
    issue 29; 1: the first hard match, so a one-frame glimpse of a distant
    landmark ends it; ``k_consec``: the first grounding, as for a transition);
    gaps before it are not counted (``count_initial_gap=False``) or bounded by
    ``initial_patience``. A trajectory with no such run gets ``t* = 0``.
    """
    if patience < 0:
        raise SacaError(f"auditor.patience must be >= 0, got {patience}")
    if initial_patience is not None and initial_patience < 0:
        raise SacaError(f"auditor.initial_patience must be >= 0, got {initial_patience}")
    if initial_k_consec < 1:
        raise SacaError(f"auditor.initial_k_consec must be >= 1, got {initial_k_consec}")
    T = len(hard)
    first = first_grounding(hard, initial_k_consec)
    if first is None:
        return 0
    gap_start, gap = 0, 0
    if count_initial_gap and first > (patience if initial_patience is None else initial_patience):
        return 0
    for t in range(first, T):
        h = hard[t]
        if h:
            gap = 0
            continue
        if gap == 0:
            gap_start = t
        gap += 1
        if gap > patience:
            return gap_start
    return T if success else max(T - 1, 0)


def hard_mask(T: int, t_star: int) -> list[int]:
    """Step mask ``m_t = 1`` on the valid prefix ``[0, t*)`` and 0 from ``t*`` on (SACA Eq. 3)."""
    if not 0 <= t_star <= T:
        raise SacaError(f"divergence point {t_star} outside [0, {T}]")
    return [1] * t_star + [0] * (T - t_star)


def prefix_ratio(t_star: int, T: int) -> float:
    """Valid-prefix ratio ``rho = t* / T`` (SACA Eq. 4); 0 for an empty trajectory."""
    if T <= 0:
        return 0.0
    return t_star / T


def longest_gap(hard: Sequence[bool], count_initial_gap: bool = True) -> int:
    """Length of the longest run without a hard match (from the first hard match on when
    ``count_initial_gap`` is False; 0 for a trajectory that never grounds then).

    A trajectory never loses grounding under Eq. 3 iff ``longest_gap <= patience``,
    so the quantiles of this length over expert trajectories calibrate ``patience``.
    """
    if not count_initial_gap:
        if not any(hard):
            return 0
        hard = hard[next(t for t, h in enumerate(hard) if h):]
    best = gap = 0
    for h in hard:
        gap = 0 if h else gap + 1
        best = max(best, gap)
    return best

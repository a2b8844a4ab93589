"""The PGSA auditor: frames + landmarks -> step scores, landmark track, mask, divergence point, P.

Cost (issue 5): within one :meth:`Auditor.audit_group` call every distinct
(frame, landmark) pair is scored at most once, and the frames of the whole
group go into each backend call.

* Frames are keyed by content (:attr:`Frame.key`), so the start frame the G
  rollouts of a group share, or a pose revisited after turning back and forth,
  is scored once.
* ``schedule: lazy`` (default). The active landmark of step t depends on the
  scores of earlier steps, so the pairs needed are not known in advance.
  The auditor walks every trajectory with the scores it has; where a walk
  needs a missing pair (step t, landmark j) it stops and asks for landmark j
  on steps ``t..T-1`` (speculating that j stays active to the end). All
  trajectories' requests form one backend call; then the walks restart. A
  walk advances by at least one landmark per round, so a group needs at most
  ``max M + 1`` calls, and landmark j is scored only from the step it became
  active: ``sum_j (T - t_j) <= M*T`` pairs per trajectory. Speculation wastes
  the pairs of j after it was left, a few steps each time.
* ``schedule: all`` scores every landmark on every frame in a single call
  (``M*T`` pairs): fewer calls, more pairs; better on a GPU with few
  landmarks, worse on a CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from saca import SacaError
from saca.auditor.base import Frame, PairScore, PerceptionBackend, as_frame, make_backend
from saca.auditor.config import AuditorConfig
from saca.auditor.scoring import (
    divergence_point,
    hard_mask,
    longest_gap,
    prefix_ratio,
    process_score,
    soft_score,
    track_landmarks,
)

log = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """What the auditor needs of one rollout: its frames ``o_0..o_{T-1}`` (the frame
    before each action), the instruction's landmarks and whether it succeeded."""

    frames: Sequence[Any]
    landmarks: Sequence[str]
    success: bool = False
    labels: Optional[Mapping[int, str]] = None  # instance id -> name, for frames given as Observations


@dataclass
class AuditResult:
    """Everything the auditor says about one trajectory (SACA Eq. 1-4)."""

    T: int
    landmarks: list[str]
    s: list[float]  # s_t against the active landmark (Eq. 1)
    active: list[int]  # index of the active landmark at step t
    hard: list[bool]  # s_t >= tau_hard
    mask: list[int]  # m_t (Eq. 3)
    t_star: int  # divergence point (Eq. 3)
    rho: float  # prefix ratio t*/T (Eq. 4)
    P: float  # process score (Eq. 2)
    reached: int  # landmarks grounded k_consec times in a row
    max_gap: int  # longest run without a hard match (as Eq. 3 counts gaps)
    transitions: list[int]  # steps after which the active landmark advanced
    success: bool
    components: list[dict] = field(default_factory=list)  # per step: S_g, c, S_b, u, S_m, box
    masks: list = field(default_factory=list)  # per step: (H, W) bool or None (keep_masks)
    reason: str = ""

    def to_json(self, with_components: bool = True) -> dict:
        d = {
            "T": self.T, "landmarks": self.landmarks, "s": [round(x, 6) for x in self.s],
            "active": self.active, "hard": [int(h) for h in self.hard], "mask": self.mask,
            "t_star": self.t_star, "rho": self.rho, "P": self.P, "reached": self.reached, "max_gap": self.max_gap,
            "transitions": self.transitions, "success": self.success, "reason": self.reason,
        }
        if with_components:
            d["components"] = [
                {k: (round(v, 6) if isinstance(v, float) else v) for k, v in c.items()} for c in self.components
            ]
        return d


class _Missing(Exception):
    def __init__(self, t: int, j: int):
        self.t, self.j = t, j


class Auditor:
    """PGSA auditor over one perception backend (method-notes §3.2)."""

    def __init__(self, config: AuditorConfig | None = None, backend: PerceptionBackend | None = None):
        self.config = config or AuditorConfig()
        self.backend = backend if backend is not None else make_backend(self.config)
        self.stats = {"calls": 0, "pairs": 0, "frames": 0, "seconds": 0.0}

    def step_score(self, ps: PairScore) -> float:
        """Eq. 1 with this auditor's weights, ``tau_det`` and modules."""
        c = self.config
        return soft_score(ps.S_g, ps.c, ps.S_b, ps.u, ps.S_m, w_g=c.w_g, w_b=c.w_b, w_m=c.w_m,
                          tau_det=c.tau_det, modules=c.modules)

    def audit(self, frames: Sequence[Any], landmarks: Sequence[str], success: bool = False,
              labels: Optional[Mapping[int, str]] = None) -> AuditResult:
        return self.audit_group([Trajectory(frames, landmarks, success, labels)])[0]

    def audit_group(self, trajectories: Sequence[Trajectory]) -> list[AuditResult]:
        """Audit a rollout group; each distinct (frame, landmark) pair is scored once."""
        cfg = self.config
        trajs = []
        for n, tr in enumerate(trajectories):
            frames = [as_frame(f, i, tr.labels) for i, f in enumerate(tr.frames)]
            lms = [str(x).strip() for x in tr.landmarks]
            if any(not x for x in lms):
                raise SacaError(f"trajectory {n}: empty landmark string in {list(tr.landmarks)}")
            trajs.append((frames, lms, bool(tr.success)))

        cache: dict[tuple[str, str], PairScore] = {}
        t0 = time.perf_counter()

        def request_all():
            req: dict[tuple[str, str], Frame] = {}
            for frames, lms, _ in trajs:
                for f in frames:
                    for l in lms:
                        if (f.key, l) not in cache:
                            req.setdefault((f.key, l), f)
            return req

        def walk(frames, lms):
            def score(t, j):
                ps = cache.get((frames[t].key, lms[j]))
                if ps is None:
                    raise _Missing(t, j)
                return self.step_score(ps)

            return track_landmarks(score, len(frames), len(lms), tau_hard=cfg.tau_hard, k_consec=cfg.k_consec,
                                   lookahead=cfg.lookahead)

        rounds = 0
        while True:
            if cfg.schedule == "all":
                req = request_all() if rounds == 0 else {}
            else:
                req = {}
                for frames, lms, _ in trajs:
                    try:
                        walk(frames, lms)
                    except _Missing as miss:
                        for f in frames[miss.t:]:
                            if (f.key, lms[miss.j]) not in cache:
                                req.setdefault((f.key, lms[miss.j]), f)
            if not req:
                break
            rounds += 1
            self._score_into(cache, req)
            if rounds > 1000:  # cannot happen: every round advances each unfinished walk
                raise SacaError("auditor: the lazy schedule did not converge")

        results = [self._result(frames, lms, success, walk(frames, lms), cache)
                   for frames, lms, success in trajs]
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["frames"] += sum(r.T for r in results)
        return results

    def _score_into(self, cache: dict, req: dict) -> None:
        uniq: dict[str, int] = {}
        frames: list[Frame] = []
        pairs: list[tuple[int, str]] = []
        for (key, l), f in req.items():
            if key not in uniq:
                uniq[key] = len(frames)
                frames.append(f)
            pairs.append((uniq[key], l))
        scores = self.backend.score(frames, pairs)
        if len(scores) != len(pairs):
            raise SacaError(f"auditor backend '{self.backend.name}' returned {len(scores)} scores for {len(pairs)} pairs")
        for (key_l, _), ps in zip(req.items(), scores):
            if not self.config.keep_masks:
                ps.mask = None
            cache[key_l] = ps
        self.stats["calls"] += 1
        self.stats["pairs"] += len(pairs)

    def _result(self, frames, lms, success, track, cache) -> AuditResult:
        cfg = self.config
        T = len(frames)
        t_star = divergence_point(track.hard, cfg.patience, success, cfg.count_initial_gap, cfg.initial_patience,
                                  cfg.initial_k_consec)
        comps, masks = [], []
        for t, j in enumerate(track.active):
            ps = cache.get((frames[t].key, lms[j])) if lms else None
            comps.append(ps.components() if ps is not None else PairScore().components())
            masks.append(ps.mask if ps is not None else None)
        reason = ""
        if not lms:
            reason = "no landmarks: every step scores 0"
        elif T == 0:
            reason = "empty trajectory"
        return AuditResult(
            T=T, landmarks=list(lms), s=track.s, active=track.active, hard=track.hard,
            mask=hard_mask(T, t_star), t_star=t_star, rho=prefix_ratio(t_star, T),
            P=process_score(track.s, cfg.tau_soft), reached=track.reached,
            max_gap=longest_gap(track.hard, cfg.count_initial_gap), transitions=track.transitions,
            success=bool(success), components=comps, masks=masks if cfg.keep_masks else [], reason=reason,
        )

    def close(self) -> None:
        self.backend.close()

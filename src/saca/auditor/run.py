"""Auditing an evaluation run: replay each episode's actions, audit, summarise (SACA Appendix A).

The evaluation runner writes one record per episode to ``episodes.jsonl``
(``episode_id``, ``actions``, ``positions``, ``metrics`` with ``SR``). The
frames are not stored, so they are rendered again: the simulator is reset to
the episode start and the actions replayed; frame ``o_t`` is the observation
before action ``t``, so a trajectory of T actions has T frames. The replayed
positions must match the recorded ones (else the scenes changed since the
run, and the audit would describe another trajectory: an error).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Iterable, Mapping, Sequence

from saca import SacaError
from saca.auditor.auditor import AuditResult, Auditor, Trajectory
from saca.auditor.base import Frame

log = logging.getLogger(__name__)


def record_success(rec: Mapping, where: str = "episodes.jsonl") -> bool:
    """Success of an evaluation record: ``metrics.SR`` (or a top-level ``success``)."""
    if "success" in rec:
        return bool(rec["success"])
    m = rec.get("metrics")
    if isinstance(m, Mapping) and "SR" in m:
        return float(m["SR"]) >= 0.5
    raise SacaError(f"{where}: episode {rec.get('episode_id')!r} has no 'metrics.SR' (or 'success') field")


def replay(sim, episode, actions: Sequence[int], positions: Sequence[Sequence[float]] | None = None,
           where: str = "episodes.jsonl") -> tuple[list[Frame], list[tuple]]:
    """Frames ``o_0..o_{T-1}`` (with instance maps and labels) and positions ``p_0..p_T`` of a replay."""
    sim.reset(episode)
    labels = sim.instance_labels
    frames: list[Frame] = []
    pos = [sim.state.position]
    for t, a in enumerate(actions):
        if positions is not None and t < len(positions):
            ref = positions[t]
            cur = sim.state.position
            if math.hypot(cur[0] - ref[0], cur[2] - ref[2]) > 1e-3:
                raise SacaError(
                    f"{where}: episode {episode.episode_id!r}: replay diverged at step {t} (at "
                    f"{[round(v, 3) for v in cur]}, the record says {[round(v, 3) for v in ref]}); "
                    "were the scenes regenerated after the run?"
                )
        if sim.episode_over:
            raise SacaError(f"{where}: episode {episode.episode_id!r}: action {t} comes after the episode ended")
        ob = sim.observe()
        frames.append(Frame(rgb=ob.rgb, instance=ob.instance, labels=labels))
        pos.append(sim.step(int(a)).position)
    return frames, pos


def audit_records(
    records: Sequence[Mapping],
    episodes: Mapping,
    landmarks: Mapping,
    sim,
    auditor: Auditor,
    group_size: int = 8,
    where: str = "episodes.jsonl",
) -> Iterable[tuple[Mapping, AuditResult]]:
    """Audit evaluation records in groups of ``group_size`` (one batched audit per group)."""
    for k in range(0, len(records), group_size):
        chunk = records[k:k + group_size]
        trajs = []
        for rec in chunk:
            eid = rec.get("episode_id")
            ep = episodes.get(eid, episodes.get(str(eid)))
            if ep is None:
                raise SacaError(f"{where}: episode {eid!r} is not in the split's episode file")
            lms = landmarks.get(eid, landmarks.get(str(eid)))
            if lms is None:
                raise SacaError(f"landmarks file: no row for episode {eid!r}")
            actions = rec.get("actions")
            if not isinstance(actions, list):
                raise SacaError(f"{where}: episode {eid!r} has no 'actions' list")
            frames, _ = replay(sim, ep, actions, rec.get("positions"), where)
            trajs.append(Trajectory(frames, lms, record_success(rec, where)))
        for rec, res in zip(chunk, auditor.audit_group(trajs)):
            yield rec, res


def expert_records(episodes: Sequence) -> list[dict]:
    """Evaluation-style records of the episodes' expert trajectories (``gt_actions``), marked as failed.

    Audited like a policy's failures, they give the auditor's *expert ceiling*: the prefix ratio a
    rollout that follows the expert all the way would get (issue 29). An episode without expert
    actions is an error naming it.
    """
    recs = []
    for ep in episodes:
        if not ep.gt_actions:
            raise SacaError(f"episode {ep.episode_id!r} has no expert actions (the split's _gt.json.gz file)")
        recs.append({"episode_id": ep.episode_id, "scene_id": ep.scene_id, "actions": list(ep.gt_actions),
                     "success": False})
    return recs


def ceiling_summary(rows: Sequence[Mapping], thresholds: Sequence[float] = (0.5, 0.9)) -> dict:
    """Shares of audited trajectories with prefix ratio above each threshold, and where the rest diverge."""
    n = len(rows)
    rhos = sorted(float(r["rho"]) for r in rows)
    out = {"episodes": n}
    for th in thresholds:
        out[f"rho_above_{th:g}"] = (sum(1 for x in rhos if x > th) / n) if n else None
    out["rho_quartiles"] = [rhos[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in (0.25, 0.5, 0.75)] if n else None
    out["never_grounded"] = sum(1 for r in rows if not any(r["hard"]))
    out["mean_reached_fraction"] = (
        math.fsum(r["reached"] / len(r["landmarks"]) for r in rows if r["landmarks"])
        / max(1, sum(1 for r in rows if r["landmarks"])))
    out["max_gap_quantiles"] = _quantiles([r["max_gap"] for r in rows])
    out["mean_T"] = math.fsum(r["T"] for r in rows) / n if n else None
    return out


def audit_row(rec: Mapping, res: AuditResult, with_components: bool = False) -> dict:
    return {"episode_id": rec.get("episode_id"), "scene_id": rec.get("scene_id"), **res.to_json(with_components)}


def summarize(rows: Sequence[Mapping], rho_threshold: float = 0.5) -> dict:
    """Counts, means and the Appendix-A statistic: the share of failed episodes with ``rho > 0.5``."""
    failed = [r for r in rows if not r["success"]]
    succ = [r for r in rows if r["success"]]

    def mean(xs):
        xs = list(xs)
        return math.fsum(xs) / len(xs) if xs else None

    hist = [0] * 10
    for r in failed:
        hist[min(int(r["rho"] * 10), 9)] += 1
    near = [r for r in failed if r["rho"] > rho_threshold]
    return {
        "episodes": len(rows),
        "success": len(succ),
        "failed": len(failed),
        "appendix_a": {
            "statistic": f"share of failed episodes with prefix ratio rho > {rho_threshold}",
            "rho_threshold": rho_threshold,
            "near_miss": len(near),
            "failed": len(failed),
            "share": (len(near) / len(failed)) if failed else None,
            "paper": 0.73,
        },
        "rho_histogram_failed": {"bins": [round(i / 10, 1) for i in range(11)], "counts": hist},
        "mean_rho_failed": mean(r["rho"] for r in failed),
        "mean_P_success": mean(r["P"] for r in succ),
        "mean_P_failed": mean(r["P"] for r in failed),
        "mean_T": mean(r["T"] for r in rows),
        "mean_landmarks": mean(len(r["landmarks"]) for r in rows),
        "mean_reached_fraction": mean(r["reached"] / len(r["landmarks"]) for r in rows if r["landmarks"]),
        "never_grounded": sum(1 for r in rows if not any(r["hard"])),
        # calibration of `patience`: successful trajectories never losing grounding, and their longest gaps
        "success_fully_valid": (sum(1 for r in succ if r["t_star"] == r["T"]) / len(succ)) if succ else None,
        "max_gap_quantiles_success": _quantiles([r["max_gap"] for r in succ]),
        "max_gap_quantiles_failed": _quantiles([r["max_gap"] for r in failed]),
        "no_landmarks": sum(1 for r in rows if not r["landmarks"]),
    }


def _quantiles(xs) -> dict | None:
    """50/75/90/95 % quantiles (nearest rank) of a list of integers."""
    xs = sorted(xs)
    if not xs:
        return None
    return {f"q{q}": xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))] for q in (50, 75, 90, 95)}


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

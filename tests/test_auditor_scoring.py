"""PGSA auditor equations on hand-built score sequences (method-notes §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from saca import SacaError
from saca.auditor import Auditor, AuditorConfig, PairScore, Trajectory
from saca.auditor.base import PerceptionBackend
from saca.auditor.scoring import (
    divergence_point,
    hard_mask,
    longest_gap,
    prefix_ratio,
    process_score,
    soft_score,
    track_landmarks,
)
from saca.config import from_dict

EPS = 1e-12


# --- Eq. 1 -------------------------------------------------------------------------

def test_soft_score_full_pipeline():
    # 0.3*0.5 + 0.3*0.8*0.6 + 0.4*0.9*0.7 = 0.15 + 0.144 + 0.252, over w-sum 1.0
    assert soft_score(0.5, 0.8, 0.6, 0.9, 0.7) == pytest.approx(0.546, abs=EPS)


def test_soft_score_detection_gate_is_strict():
    # c == tau_det: local terms vanish, only the global term remains (denominator unchanged)
    assert soft_score(0.5, 0.3, 0.6, 0.9, 0.7) == pytest.approx(0.15, abs=EPS)
    assert soft_score(0.5, 0.3000001, 0.6, 0.9, 0.7) > 0.15


def test_soft_score_module_switches_renormalise():
    # Table 5 rows: {global}, {global, box}, {global, box, mask}
    assert soft_score(0.5, 0.8, 0.6, 0.9, 0.7, modules=["global"]) == pytest.approx(0.5, abs=EPS)
    assert soft_score(0.5, 0.8, 0.6, 0.9, 0.7, modules=["global", "box"]) == pytest.approx(0.294 / 0.6, abs=EPS)
    assert soft_score(0.5, 0.8, 0.6, 0.9, 0.7, w_g=1, w_b=1, w_m=2) == pytest.approx(2.24 / 4, abs=EPS)


def test_soft_score_bad_modules():
    with pytest.raises(SacaError, match="unknown module 'boxes'"):
        soft_score(0.5, 0.8, 0.6, 0.9, 0.7, modules=["global", "boxes"])
    with pytest.raises(SacaError, match="at least one"):
        soft_score(0.5, 0.8, 0.6, 0.9, 0.7, modules=[])


# --- Eq. 2 -------------------------------------------------------------------------

def test_process_score():
    # relu(s - 0.2): 0, 0, 0.1, 0.3 -> mean 0.1
    assert process_score([0.1, 0.2, 0.3, 0.5], 0.2) == pytest.approx(0.1, abs=EPS)
    assert process_score([0.2, 0.2], 0.2) == 0.0  # equal to tau_soft: gated out
    assert process_score([], 0.2) == 0.0
    assert process_score([0.7], 0.2) == pytest.approx(0.5, abs=EPS)  # single step


# --- landmark transitions ---------------------------------------------------------------

def _table(rows):
    calls = []

    def score(t, j):
        calls.append((t, j))
        return rows[j][t]

    return score, calls


def test_transition_after_k_consecutive_hard_matches():
    rows = [
        [0.3, 0.1, 0.3, 0.3, 0.9, 0.9, 0.9, 0.9],  # landmark 0: hard at 0, 2, 3 -> advance after step 3
        [0.0, 0.0, 0.0, 0.0, 0.1, 0.25, 0.4, 0.1],  # landmark 1: hard at 5, 6 -> reached after 6
    ]
    score, calls = _table(rows)
    tr = track_landmarks(score, 8, 2, tau_hard=0.25, k_consec=2)
    assert tr.active == [0, 0, 0, 0, 1, 1, 1, 1]
    assert tr.s == [0.3, 0.1, 0.3, 0.3, 0.1, 0.25, 0.4, 0.1]
    assert tr.hard == [True, False, True, True, False, True, True, False]
    assert tr.transitions == [3]
    assert tr.reached == 2
    # lazy: each step asks for its active landmark only
    assert calls == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 1)]


def test_transition_k1_and_last_landmark_stays_active():
    rows = [[0.5, 0.5, 0.5], [0.0, 0.5, 0.5]]
    tr = track_landmarks(_table(rows)[0], 3, 2, tau_hard=0.25, k_consec=1)
    assert tr.active == [0, 1, 1]
    assert tr.transitions == [0]
    assert tr.reached == 2


def test_no_landmarks_scores_zero():
    tr = track_landmarks(lambda t, j: 1 / 0, 4, 0)
    assert tr.s == [0.0] * 4 and tr.hard == [False] * 4 and tr.reached == 0


# --- Eq. 3: mask and divergence point --------------------------------------------------

def test_divergence_at_first_gap_longer_than_patience():
    hard = [1, 1, 0, 0, 0, 1]
    assert divergence_point(hard, patience=2) == 2
    assert hard_mask(6, 2) == [1, 1, 0, 0, 0, 0]
    assert prefix_ratio(2, 6) == pytest.approx(1 / 3, abs=EPS)


def test_gap_of_exactly_patience_is_tolerated():
    hard = [1, 0, 0, 1, 0, 0]
    assert divergence_point(hard, patience=2, success=False) == 5  # never loses grounding, failed: T-1
    assert divergence_point(hard, patience=2, success=True) == 6  # successful: all valid
    assert hard_mask(6, 6) == [1] * 6


def test_never_grounds():
    assert divergence_point([0, 0, 0, 0], patience=2) == 0
    assert divergence_point([0, 0, 0, 0], patience=2, success=True) == 0
    assert hard_mask(4, 0) == [0, 0, 0, 0]
    assert prefix_ratio(0, 4) == 0.0


def test_long_initial_gap_diverges_at_zero_short_one_does_not():
    assert divergence_point([0, 0, 0, 1, 1], patience=2) == 0
    assert divergence_point([0, 0, 1, 1, 0, 0, 0], patience=2) == 4


def test_never_loses_grounding_but_fails():
    hard = [1] * 10
    assert divergence_point(hard, patience=8) == 9
    assert prefix_ratio(9, 10) == pytest.approx(0.9, abs=EPS)


def test_single_step_trajectory():
    assert divergence_point([1], patience=8) == 0
    assert divergence_point([1], patience=8, success=True) == 1
    assert divergence_point([0], patience=8) == 0
    assert divergence_point([], patience=8) == 0
    assert prefix_ratio(0, 0) == 0.0


def test_initial_gap_option():
    hard = [0, 0, 0, 1, 1, 0, 0, 0, 1]
    assert divergence_point(hard, patience=2) == 0  # literal: the initial search is a gap of 3
    assert divergence_point(hard, patience=2, count_initial_gap=False) == 5
    assert divergence_point([0, 0, 0, 1, 0, 1], patience=2, count_initial_gap=False) == 5  # failed: T-1
    assert divergence_point([0, 0, 0], patience=2, count_initial_gap=False) == 0  # never grounds
    assert longest_gap(hard) == 3 and longest_gap(hard, count_initial_gap=False) == 3
    assert longest_gap([0, 0, 0, 0, 1, 0, 1]) == 4 and longest_gap([0, 0, 0, 0, 1, 0, 1], False) == 1
    assert longest_gap([0, 0], False) == 0 and longest_gap([]) == 0


def test_patience_zero():
    assert divergence_point([1, 1, 0, 1], patience=0) == 2


def test_hard_mask_bounds():
    with pytest.raises(SacaError):
        hard_mask(3, 4)


# --- the auditor over a scripted backend ---------------------------------------------------

class ScriptedBackend(PerceptionBackend):
    """Frame t is an image filled with value t; S_g comes from a table keyed by (t, landmark)."""

    name = "scripted"

    def __init__(self, table, **kw):
        super().__init__(**kw)
        self.table = table
        self.seen = []

    def _score(self, frames, pairs):
        out = []
        for i, l in pairs:
            t = int(frames[i].rgb[0, 0, 0])
            self.seen.append((t, l))
            out.append(PairScore(S_g=self.table.get((t, l), 0.0)))
        return out


def _frames(values):
    return [np.full((4, 4, 3), v, dtype=np.uint8) for v in values]


def _auditor(table, **cfg):
    config = from_dict(AuditorConfig, {"modules": ["global"], "patience": 2, **cfg}, "auditor")
    return Auditor(config, ScriptedBackend(table, modules=config.modules))


def test_auditor_end_to_end_exact():
    table = {(0, "sofa"): 0.3, (1, "sofa"): 0.3, (2, "door"): 0.5, (3, "door"): 0.1, (4, "door"): 0.1,
             (5, "door"): 0.1, (6, "door"): 0.9}
    aud = _auditor(table)
    r = aud.audit(_frames(range(7)), ["sofa", "door"], success=False)
    assert r.s == pytest.approx([0.3, 0.3, 0.5, 0.1, 0.1, 0.1, 0.9], abs=EPS)
    assert r.active == [0, 0, 1, 1, 1, 1, 1]
    assert r.t_star == 3 and r.mask == [1, 1, 1, 0, 0, 0, 0]
    assert r.rho == pytest.approx(3 / 7, abs=EPS)
    assert r.P == pytest.approx((0.1 + 0.1 + 0.3 + 0.7) / 7, abs=EPS)
    assert r.reached == 1 and r.transitions == [1]


def test_audit_group_scores_each_pair_once_and_batches():
    table = {(0, "sofa"): 0.9, (1, "sofa"): 0.9, (2, "door"): 0.9}
    aud = _auditor(table)
    # two rollouts share the start frames 0, 1; the second revisits frame 1
    g = [Trajectory(_frames([0, 1, 2, 3]), ["sofa", "door"]), Trajectory(_frames([0, 1, 4, 1]), ["sofa", "door"])]
    res = aud.audit_group(g)
    seen = aud.backend.seen
    assert len(seen) == len(set(seen)), "a (frame, landmark) pair was scored twice"
    # round 1: sofa on all 5 distinct frames; round 2: door on the frames after the transition
    assert set(seen) == {(v, "sofa") for v in (0, 1, 2, 3, 4)} | {(2, "door"), (3, "door"), (4, "door"), (1, "door")}
    assert aud.stats["calls"] == 2 == aud.backend.calls
    assert res[0].active == [0, 0, 1, 1] and res[1].active == [0, 0, 1, 1]
    assert res[0].s == pytest.approx([0.9, 0.9, 0.9, 0.0], abs=EPS)
    assert res[1].s == pytest.approx([0.9, 0.9, 0.0, 0.0], abs=EPS)


def test_schedule_all_is_one_call_with_the_same_result():
    table = {(0, "sofa"): 0.9, (1, "sofa"): 0.9, (2, "door"): 0.9}
    lazy = _auditor(table).audit(_frames([0, 1, 2, 3]), ["sofa", "door"])
    aud = _auditor(table, schedule="all")
    full = aud.audit(_frames([0, 1, 2, 3]), ["sofa", "door"])
    assert aud.backend.calls == 1 and len(aud.backend.seen) == 8
    assert full.to_json() == lazy.to_json()


def test_auditor_edge_cases():
    aud = _auditor({})
    r = aud.audit(_frames([0, 1, 2]), [])  # no landmarks
    assert r.s == [0.0] * 3 and r.t_star == 0 and r.P == 0.0 and "no landmarks" in r.reason
    r = aud.audit([], ["sofa"])  # no frames
    assert r.T == 0 and r.t_star == 0 and r.rho == 0.0
    r = aud.audit(_frames([7, 8, 9]), ["never seen"])  # landmark never visible: low, no crash
    assert r.s == [0.0] * 3 and r.t_star == 0
    with pytest.raises(SacaError, match=r"frame 1: rgb must have shape \(H, W, 3\)"):
        aud.audit([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)], ["sofa"])
    with pytest.raises(SacaError, match="frame 0: rgb must be uint8"):
        aud.audit([np.zeros((4, 4, 3), np.float32)], ["sofa"])
    with pytest.raises(SacaError, match="empty landmark"):
        aud.audit(_frames([0]), ["sofa", " "])


def test_config_errors_name_the_key():
    with pytest.raises(SacaError, match="did you mean 'tau_hard'"):
        from_dict(AuditorConfig, {"tau_hardd": 0.3}, "auditor")
    with pytest.raises(SacaError, match="auditor.modules: unknown module"):
        from_dict(AuditorConfig, {"modules": ["global", "segment"]}, "auditor")
    with pytest.raises(SacaError, match="auditor.oracle.f0"):
        from_dict(AuditorConfig, {"oracle": {"f0": 0}}, "auditor")
    with pytest.raises(SacaError, match="auditor.prompt"):
        from_dict(AuditorConfig, {"prompt": "A photo."}, "auditor")
    cfg = from_dict(AuditorConfig, {"foundation": {"batch_size": 4}}, "auditor")
    assert cfg.foundation.batch_size == 4 and cfg.tau_det == 0.3


def test_config_yaml_sections_load():
    from pathlib import Path

    import jsonschema
    import yaml

    from saca.landmarks import LandmarkConfig

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    schema = yaml.safe_load((root / "src" / "saca" / "resources" / "config.schema.yaml").read_text())
    jsonschema.validate(cfg, schema)
    aud = from_dict(AuditorConfig, cfg["auditor"], "auditor")
    assert (aud.tau_soft, aud.tau_hard, aud.tau_det, aud.w_g, aud.w_b, aud.w_m) == (0.2, 0.25, 0.3, 0.3, 0.3, 0.4)
    assert aud.modules == ["global", "box", "mask"] and aud.k_consec == 2 and aud.patience == 8
    assert from_dict(LandmarkConfig, cfg["landmarks"], "landmarks").extractor in ("lexicon", "llm")
    bad = {**cfg, "auditor": {**cfg["auditor"], "tau_hardd": 0.3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_summarize_appendix_a_exact():
    from saca.auditor.run import summarize

    def row(rho, success, T=10, P=0.1, reached=1, max_gap=3):
        t = round(rho * T)
        return {"rho": rho, "success": success, "T": T, "P": P, "landmarks": ["a", "b"], "reached": reached,
                "hard": [1] * t + [0] * (T - t), "t_star": t, "max_gap": max_gap}

    rows = [row(0.6, False), row(0.5, False), row(0.2, False), row(0.9, False, P=0.3), row(1.0, True, P=0.5)]
    s = summarize(rows, 0.5)
    a = s["appendix_a"]
    assert (a["near_miss"], a["failed"], a["share"]) == (2, 4, 0.5)  # rho = 0.5 is not a near miss (strict)
    assert s["rho_histogram_failed"]["counts"] == [0, 0, 1, 0, 0, 1, 1, 0, 0, 1]
    assert s["mean_rho_failed"] == pytest.approx(0.55, abs=EPS)
    assert s["mean_P_failed"] == pytest.approx(0.15, abs=EPS) and s["mean_P_success"] == 0.5
    assert s["success_fully_valid"] == 1.0 and s["max_gap_quantiles_success"]["q50"] == 3
    assert summarize([row(1.0, True)])["appendix_a"]["share"] is None  # no failures: undefined, not 0


# --- issue 29: landmark look-ahead, the initial search --------------------------------------------

# scores of landmarks 0, 1, 2 per step (hard: >= 0.25)
_WALK = [
    [0.9, 0.9, 0.9, 0.0, 0.0, 0.9],
    [0.0, 0.0, 0.9, 0.9, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
]


def test_literal_transition_leaves_the_landmark_on_its_first_grounding():
    tr = track_landmarks(_table(_WALK)[0], 6, 3, tau_hard=0.25, k_consec=2, lookahead=0)
    # landmark 0 grounded at steps 0-1 -> landmark 1 active from step 2; grounded at 2-3 -> landmark 2 from 4
    assert tr.active == [0, 0, 1, 1, 2, 2]
    assert tr.hard == [True, True, True, True, False, False]
    assert tr.transitions == [1, 3] and tr.reached == 2


def test_lookahead_keeps_the_landmark_until_the_next_is_grounded():
    score, calls = _table(_WALK)
    tr = track_landmarks(score, 6, 3, tau_hard=0.25, k_consec=2, lookahead=1)
    # landmark 0 is reached at step 1 but stays active; landmark 1 hard at 2, 3 -> active from step 4;
    # step 5 sees landmark 0 again, which is within one place of the active landmark: a hard match
    assert tr.active == [0, 0, 0, 0, 1, 1]
    assert tr.s == [0.9, 0.9, 0.9, 0.9, 0.0, 0.9]
    assert tr.hard == [True, True, True, True, False, True]
    assert tr.transitions == [3] and tr.reached == 2
    # window j-1..j+1: steps 0-3 ask for landmarks 0 and 1, steps 4-5 for 0, 1 and 2
    assert calls == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1),
                     (4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2)]


def test_lookahead_takes_landmarks_in_order():
    rows = [[0.0, 0.0, 0.9, 0.9, 0.0, 0.0], [0.9, 0.9, 0.0, 0.0, 0.9, 0.9]]
    tr = track_landmarks(_table(rows)[0], 6, 2, tau_hard=0.25, k_consec=2, lookahead=1)
    # landmark 1 seen first (steps 0-1): hard matches, but no transition before landmark 0 is grounded (2-3)
    assert tr.hard == [True] * 6
    assert tr.active == [0] * 6 and tr.transitions == [5] and tr.reached == 2
    with pytest.raises(SacaError, match="lookahead"):
        track_landmarks(_table(rows)[0], 6, 2, lookahead=-1)


def test_initial_search_patience_and_first_grounding():
    hard = [0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1]  # a glimpse at 3, grounded from 8 on; T = 12, failed
    assert divergence_point(hard, patience=2) == 0  # literal: the search (3 steps) exceeds patience
    assert divergence_point(hard, patience=2, initial_patience=5) == 4  # search allowed; gap 4-7 > 2
    assert divergence_point(hard, patience=2, count_initial_gap=False) == 4
    # the search ends at the first 2 hard matches in a row (step 8), not at the glimpse
    assert divergence_point(hard, patience=2, count_initial_gap=False, initial_k_consec=2) == 11
    assert divergence_point(hard, patience=2, initial_patience=8, initial_k_consec=2) == 11
    assert divergence_point(hard, patience=2, initial_patience=7, initial_k_consec=2) == 0
    assert divergence_point([0, 1, 0, 1, 0], patience=2, count_initial_gap=False, initial_k_consec=2) == 0
    with pytest.raises(SacaError, match="initial_k_consec"):
        divergence_point(hard, initial_k_consec=0)
    with pytest.raises(SacaError, match="initial_patience"):
        divergence_point(hard, initial_patience=-1)


def test_auditor_lookahead_lazy_equals_all_and_credits_the_leg():
    # an expert-like walk: the sofa in view on its leg (0-3), the door glimpsed early (1), then on its leg (5-8)
    table = {(0, "sofa"): 0.9, (1, "sofa"): 0.9, (2, "sofa"): 0.9, (3, "sofa"): 0.9, (1, "door"): 0.9,
             (5, "door"): 0.9, (6, "door"): 0.9, (7, "door"): 0.9, (8, "door"): 0.9}
    frames = _frames(range(9))
    literal = _auditor(table, patience=2).audit(frames, ["sofa", "door"])
    # literal: the door becomes active after step 1; steps 2-4 have no door: a gap of 3 > patience -> t* = 2
    assert literal.transitions == [1] and literal.t_star == 2
    lazy = _auditor(table, patience=2, lookahead=1).audit(frames, ["sofa", "door"])
    full = _auditor(table, patience=2, lookahead=1, schedule="all").audit(frames, ["sofa", "door"])
    assert lazy.to_json() == full.to_json()
    assert lazy.active == [0, 0, 0, 0, 0, 0, 0, 1, 1] and lazy.transitions == [6]  # door grounded at 5-6
    assert lazy.t_star == 8 and lazy.rho == pytest.approx(8 / 9, abs=EPS)  # gap of 1 at step 4: never lost
    with pytest.raises(SacaError, match="auditor.lookahead"):
        from_dict(AuditorConfig, {"lookahead": -1}, "auditor")
    with pytest.raises(SacaError, match="auditor.initial_k_consec"):
        from_dict(AuditorConfig, {"initial_k_consec": 0}, "auditor")

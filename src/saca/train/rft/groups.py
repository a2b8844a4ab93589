"""SACA's group construction on an update's rollouts (SACA §3.2-3.3, Eq. 4-13), stage by stage.

:func:`construct_groups` runs the stages in the paper's order:

1. :func:`audit`: the PGSA auditor's process score ``P``, divergence step ``t*`` and prefix ratio ``rho`` of
   every rollout (Eq. 1-3, :mod:`saca.auditor`);
2. routing (:func:`saca.train.saca.plan_group`): a group with a success is *mixed* (shaped rewards, near-misses
   of Eq. 4), one without is *all-failure* (the rescue of Eq. 6-11, :func:`saca.train.saca.rescue`);
3. :func:`repair_resample` (Eq. 5): near-misses re-rolled from their divergence step; the successes give
   ``D_rep``, cloned by ``L_rep`` (:func:`repair_samples`);
4. the rescue's anchor terms: :func:`alignment_samples` (``L_align``, Eq. 12) and :func:`contrastive_pair`
   (``L_con``, Eq. 13).

The result, a :class:`SacaBatch`, says what every rollout contributes to the objective
(:mod:`saca.train.rft.objective`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from saca.train.rft.samples import ConSample, Sample

SACA_COUNTS = (
    "role_successful", "role_near_miss", "role_repaired", "role_failed", "role_anchor", "role_hard_negative",
    "role_discarded", "groups_mixed", "groups_all_failure", "afr_groups", "afr_margin_rescued", "afr_zero_spread",
    "repair_attempts", "repair_successes", "rep_samples", "align_samples", "con_pairs", "con_skipped_same",
    "con_skipped_end", "con_skipped_token", "audit_calls", "audit_pairs",
)


@dataclass
class SacaBatch:
    """What group construction adds to an update's rollouts (:func:`construct_groups`).

    ``rewards``: per trajectory, the rewards GRPO normalises; ``override``: trajectory -> fixed advantage (the
    rescue's process advantages); ``excluded``: trajectories outside ``L_GRPO`` (discarded members); ``rep``,
    ``align``: behaviour-cloning samples of ``L_rep`` and ``L_align``; ``con``: the pairs of ``L_con``;
    ``subgroups``: the rescue's reflection sub-groups as ``(members, P)`` (anchor first; ``kl_mode: reward``
    lowers their process scores); ``log``: the counts and times of the update's log row."""

    rewards: list = field(default_factory=list)
    override: dict = field(default_factory=dict)
    subgroups: list = field(default_factory=list)
    excluded: set = field(default_factory=set)
    rep: list = field(default_factory=list)
    align: list = field(default_factory=list)
    con: list = field(default_factory=list)
    log: dict = field(default_factory=dict)


def _mean(xs):
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def _count(log: dict, key: str, n: int = 1) -> None:
    log[key] = log.get(key, 0) + n


# --- audit and routing ----------------------------------------------------------------------------

def audit(auditor, trajs, landmarks_of: Callable, rho_thr: float) -> tuple[list, dict]:
    """The auditor's result (``P``, ``t*``, ``rho``; SACA Eq. 1-3) of every rollout, in one batched call, and the
    log's audit counts: calls, pairs, time, the prefix-ratio histogram of the failed rollouts and the
    Appendix-A numbers (failed rollouts with ``rho > rho_thr``)."""
    from saca.auditor.auditor import Trajectory as AuditTrajectory

    t0 = time.perf_counter()
    calls, pairs = auditor.stats["calls"], auditor.stats["pairs"]
    res = auditor.audit_group([AuditTrajectory(tr.audit[: tr.steps], landmarks_of(tr), tr.success) for tr in trajs])
    log = {"time_audit": time.perf_counter() - t0, "audit_calls": auditor.stats["calls"] - calls,
           "audit_pairs": auditor.stats["pairs"] - pairs}
    failed = [r.rho for r in res if not r.success]
    log["failed_audited"], log["failed_rho_above"] = len(failed), sum(r > rho_thr for r in failed)
    log["rho_hist_failed"] = np.histogram(failed, bins=10, range=(0.0, 1.0))[0].tolist()
    log["P_mean_success"] = _mean([r.P for r in res if r.success])
    log["P_mean_failed"] = _mean([r.P for r in res if not r.success])
    return res, log


def route(trajs, R: Sequence[float], res, sw, out: SacaBatch) -> tuple[list, list[str]]:
    """Route every group and plan it (SACA §3.2-3.3, :func:`saca.train.saca.plan_group`): the rewards GRPO
    normalises, the rescue's fixed advantages and exclusions go into ``out``. Returns ``(plans, roles)``:
    ``(GroupPlan, member indices)`` per group and every rollout's role."""
    from saca.train.saca import plan_group

    members: dict = {}
    for i, tr in enumerate(trajs):
        members.setdefault(tr.group, []).append(i)
    roles = [""] * len(trajs)
    plans = []
    log = out.log
    for g, idx in members.items():
        plan = plan_group([R[i] for i in idx], [res[i].P for i in idx] if res else None,
                          [res[i].rho for i in idx] if res else None, [trajs[i].actions for i in idx], sw)
        plans.append((plan, idx))
        _count(log, f"groups_{plan.scenario}")
        for k, i in enumerate(idx):
            out.rewards[i] = plan.rewards[k]
            roles[i] = plan.roles[k]
            if k not in plan.grpo:
                out.excluded.add(i)
        for k, a in plan.advantages.items():
            out.override[idx[k]] = a
        if plan.scenario == "all_failure" and plan.anchor is not None:
            S = [plan.anchor] + plan.negatives
            out.subgroups.append(([idx[k] for k in S], [float(res[idx[k]].P) for k in S]))
            _count(log, "afr_groups")
            _count(log, "afr_margin_rescued", int(plan.rescued))
            if all(plan.advantages[k] == 0.0 for k in plan.grpo):
                _count(log, "afr_zero_spread")
    return plans, roles


# --- Repair Resampling (Eq. 5) ---------------------------------------------------------------------

def repair_resample(engine, trajs, near_miss: Sequence[int], t_star: Sequence[int], K: int) -> tuple[dict, int]:
    """Repair Resampling (SACA Eq. 5): every near-miss ``i`` (Eq. 4) is branched at its divergence step
    ``t_star[i]`` (the simulator restored there, the prefix kept) and its suffix re-sampled from the current
    policy, up to ``K`` attempts, all pending near-misses of an attempt in one batched rollout; the first
    success is kept (no recursive repair). Returns ``({i: repaired trajectory}, attempts)``."""
    pending, attempts, repaired = list(near_miss), 0, {}
    for _ in range(K):
        if not pending:
            break
        branches = [engine.branch(trajs[i], t_star[i]) for i in pending]
        engine.run(branches)
        attempts += len(branches)
        for i, br in zip(pending, branches):
            if br.success:
                repaired[i] = br
        pending = [i for i in pending if i not in repaired]
    return repaired, attempts


# --- behaviour cloning: L_rep and L_align (Eq. 12) --------------------------------------------------

def clone_samples(tokenizer, tr, t: int) -> list[Sample]:
    """Behaviour-cloning samples of ``tr``'s steps ``[0, t)``: the actions the trajectory executed before ``t``,
    as the tokens of their options. A decision that started before ``t`` keeps the tokens of its options that
    were executed before ``t``: all of them (end of text included) when every option of its chunk was, else the
    executed ones only: options never executed (``execute_actions > 0`` re-planned before them, STOP or the
    episode's end came first, a branch cut the decision) or executed at or after ``t`` are not cloned.

    Only ``valid`` decisions (the canonical option text) are cloned: an ``invalid`` one executed the agent's
    fallback action, not the policy's, and a ``partial`` one's text is non-canonical (cloning it would train the
    format errors the SFT format removes, and its option letters cannot be located reliably)."""
    from saca.train.saca import kept_tokens

    out = []
    for d in tr.decisions:
        if d.step >= t:
            break
        if d.status != "valid":
            continue
        n = min(len(d.executed), t - d.step)  # this decision's actions executed before t
        ntok = len(d.token_ids) if n == len(d.actions) else kept_tokens(tokenizer, d.token_ids, n)
        if ntok > 0:
            out.append(Sample(d.encoded, list(d.token_ids[:ntok]), 0.0, tr.group))
    return out


def repair_samples(tokenizer, repaired) -> list[Sample]:
    """``D_rep``'s samples for ``L_rep`` (SACA Eq. 5): the repaired trajectory (prefix + new suffix) cloned whole."""
    return clone_samples(tokenizer, repaired, repaired.steps)


def alignment_samples(tokenizer, anchor, t_star: int) -> list[Sample]:
    """Consistency alignment's samples (SACA Eq. 12): the pseudo-anchor's valid prefix ``[0, t*)`` cloned;
    ``L_align`` is their token-mean NLL."""
    return clone_samples(tokenizer, anchor, t_star)


# --- contrastive correction (Eq. 13) ----------------------------------------------------------------

def contrastive_pair(tokenizer, engine, tr, t_star: int) -> tuple[ConSample | None, str]:
    """The pair of ``L_con`` (SACA Eq. 13) at the anchor's divergence step ``t*``: the taken action's option token
    and the shortest-path teacher's in the decision that produced step ``t*``. ``(None, reason)`` when there is
    none: ``same`` when the taken action is the teacher's, ``end`` when ``t*`` is past the last action, ``token``
    when the decision's option token cannot be located (its text did not parse)."""
    from saca.action_text import LETTERS
    from saca.sim.base import Action
    from saca.train.saca import letter_token_variant, option_letter_positions

    if t_star >= tr.steps:
        return None, "end"
    d = tr.decisions[tr.decision_at(t_star)]
    k = t_star - d.step
    taken = d.executed[k]
    teacher = engine.teacher_action_at(tr, t_star)
    if teacher == taken:
        return None, "same"
    if d.status != "valid":
        return None, "token"
    pos = option_letter_positions(tokenizer, d.token_ids)
    if len(pos) <= k or tokenizer.decode([d.token_ids[pos[k]]]).strip() != LETTERS[Action(taken)]:
        return None, "token"
    teacher_id = letter_token_variant(tokenizer, d.token_ids[pos[k]], LETTERS[Action(teacher)])
    if teacher_id is None:
        return None, "token"
    return ConSample(d.encoded, list(d.token_ids), pos[k], int(d.token_ids[pos[k]]), teacher_id, tr.group), ""


# --- all stages -----------------------------------------------------------------------------------

def construct_groups(engine, trajs, R: Sequence[float], cfg, tokenizer, auditor=None,
                     landmarks_of: Callable | None = None) -> SacaBatch:
    """SACA's group construction (§3.2-3.3) on one update's rollouts with outcome rewards ``R``: audit, route,
    repair near-misses, and the rescue's anchor terms. ``cfg``: the run's :class:`~saca.train.rft.RftConfig`;
    without an ``auditor`` (plain GRPO) only routing runs."""
    sw = cfg.switches()
    out = SacaBatch(rewards=[float(r) for r in R])
    log = out.log
    res = None
    if auditor is not None:
        res, audit_log = audit(auditor, trajs, landmarks_of, cfg.auditor.rho)
        log.update(audit_log)
    plans, roles = route(trajs, R, res, sw, out)
    if cfg.rr:
        t0 = time.perf_counter()
        near = [idx[k] for plan, idx in plans if plan.scenario == "mixed" for k in plan.near_miss]
        repaired, attempts = repair_resample(engine, trajs, near, {i: res[i].t_star for i in near}, cfg.K)
        for i, br in repaired.items():
            roles[i] = "repaired"
            out.rep += repair_samples(tokenizer, br)
        log["repair_attempts"] = attempts
        log["repair_successes"] = len(repaired)
        log["time_repair"] = time.perf_counter() - t0
    for plan, idx in plans:  # the rescue's anchor terms: L_align on [0, t*) (Eq. 12), L_con at step t* (Eq. 13)
        if plan.anchor is None:
            continue
        tr = trajs[idx[plan.anchor]]
        t_star = res[idx[plan.anchor]].t_star
        if cfg.lambda_align > 0:
            out.align += alignment_samples(tokenizer, tr, t_star)
        if cfg.lambda_con > 0:
            con, why = contrastive_pair(tokenizer, engine, tr, t_star)
            if con is not None:
                out.con.append(con)
            else:
                _count(log, f"con_skipped_{why}")
    for r in roles:
        _count(log, f"role_{r}")
    log["rep_samples"], log["align_samples"], log["con_pairs"] = len(out.rep), len(out.align), len(out.con)
    return out

"""SACA's scenario-conditioned group construction (SACA §3.2-3.3, Eq. 4-13; method-notes §3.3).

Pure functions, one per equation, plus :func:`plan_group`, which applies them to
one rollout group and says what every member contributes to the update. The
trainer (:mod:`saca.train.rft`) runs the auditor, the repair rollouts and the
losses around them.

Routing (§3.2): a group with at least one success is *mixed* (this includes the
all-success group, whose soft-score rewards may still differ), a group without
any is *all-failure*.

* Mixed group: reward ``r_i = R_i + lambda_ss * P_i`` with the soft score on
  (else ``R_i``), GRPO advantages over the whole group (:func:`shaped_rewards`);
  near-misses ``{i : R_i = 0, rho_i > rho}`` (Eq. 4, :func:`near_misses`) are
  repaired by the trainer (Eq. 5) and cloned by ``L_rep``.
* All-failure group without AFR: no gradient, counted as collapsed.
* All-failure group with AFR: pseudo-anchor (Eq. 6, :func:`pseudo_anchor`), LCS
  hard negatives (Eq. 7, :func:`hard_negative_scores`,
  :func:`select_hard_negatives`), the reflection sub-group ``S`` and its process
  advantages with margin rescue and negative-only scaling (Eq. 8-11,
  :func:`reflection_advantages`); ``L_align`` on the anchor's valid prefix
  (Eq. 12) and ``L_con`` at its divergence decision (Eq. 13,
  :func:`contrastive_correction`).

Member roles (logged per update): ``successful``, ``near_miss`` (a near-miss
whose repair failed or was not tried), ``repaired``, ``failed`` (a mixed
group's other failures), ``anchor``, ``hard_negative``, ``discarded`` (an
all-failure member outside ``S``, or any member of a collapsed all-failure
group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from saca import SacaError

ROLES = ("successful", "near_miss", "repaired", "failed", "anchor", "hard_negative", "discarded")
SCENARIOS = ("mixed", "all_failure")


# --- routing and the mixed group -------------------------------------------------------------

def route_group(success: Sequence[bool]) -> str:
    """Scenario routing (SACA §3.2): ``mixed`` when any member succeeded, else ``all_failure``."""
    if len(success) == 0:
        raise SacaError("route_group: empty group")
    return "mixed" if any(bool(s) for s in success) else "all_failure"


def shaped_rewards(R: Sequence[float], P: Sequence[float], lambda_ss: float, soft_score: bool) -> np.ndarray:
    """Mixed-group reward (SACA §3.3): ``r_i = R_i + lambda_ss * P_i`` with the soft score on, else ``R_i``."""
    r = np.asarray(R, dtype=np.float64)
    if not soft_score:
        return r.copy()
    p = np.asarray(P, dtype=np.float64)
    if p.shape != r.shape:
        raise SacaError(f"shaped_rewards: {p.size} process scores for {r.size} rewards")
    return r + float(lambda_ss) * p


def near_misses(success: Sequence[bool], rho: Sequence[float], rho_thr: float = 0.5) -> list[int]:
    """Near-miss set (SACA Eq. 4): ``{i : R_i = 0 and rho_i > rho_thr}`` (strictly greater), in member order."""
    if len(success) != len(rho):
        raise SacaError(f"near_misses: {len(rho)} prefix ratios for {len(success)} members")
    return [i for i, (s, r) in enumerate(zip(success, rho)) if not s and float(r) > rho_thr]


# --- all-failure rescue ----------------------------------------------------------------------

def pseudo_anchor(P: Sequence[float], lengths: Sequence[int]) -> int:
    """Pseudo-anchor (SACA Eq. 6): ``argmax_i P_i``; a tie goes to the longer trajectory, then the lower index."""
    if len(P) == 0 or len(P) != len(lengths):
        raise SacaError(f"pseudo_anchor: {len(P)} process scores for {len(lengths)} lengths (need >= 1, equal)")
    return max(range(len(P)), key=lambda i: (float(P[i]), int(lengths[i]), -i))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two action sequences (dynamic programming, O(len a * len b))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def hard_negative_scores(actions: Sequence[Sequence[int]], anchor: int, P: Sequence[float],
                         lambda_hn: float = 0.5) -> list[float]:
    """Hard-negative score (SACA Eq. 7, reconstruction) of every member against the anchor:

    ``H_j = LCS(actions_j, actions_anchor) / max(len_j, len_anchor) + lambda_hn * P_j``.

    The anchor's own entry is NaN (it is never its own negative); two empty sequences give an LCS term of 0.
    """
    if len(actions) != len(P):
        raise SacaError(f"hard_negative_scores: {len(P)} process scores for {len(actions)} members")
    ref = list(actions[anchor])
    out = []
    for j, (acts, p) in enumerate(zip(actions, P)):
        if j == anchor:
            out.append(float("nan"))
            continue
        denom = max(len(acts), len(ref))
        out.append((lcs_length(list(acts), ref) / denom if denom else 0.0) + float(lambda_hn) * float(p))
    return out


def select_hard_negatives(scores: Sequence[float], anchor: int, k: int) -> list[int]:
    """The ``k`` members with the highest ``H_j`` (SACA Eq. 7), the anchor excluded; ties -> lower index.

    ``k`` is capped at ``G - 1``; the result is ordered by rank."""
    if k < 0:
        raise SacaError(f"select_hard_negatives: k must be >= 0, got {k}")
    cand = [j for j in range(len(scores)) if j != anchor]
    cand.sort(key=lambda j: (-float(scores[j]), j))
    return cand[: min(k, len(cand))]


def process_advantages(P_S: Sequence[float], eps: float = 1e-4) -> np.ndarray:
    """Process advantage over the reflection sub-group (SACA Eq. 8): ``A_j = (P_j - mean_S P) / (std_S P + eps)``.

    Population std (ddof 0), as :func:`saca.train.grpo.group_advantages`; zero spread (max - min <= 1e-12) gives
    exactly 0 for every member.
    """
    p = np.asarray(P_S, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise SacaError(f"process_advantages: expected a non-empty 1-D sequence, got shape {p.shape}")
    if p.max() - p.min() <= 1e-12:
        return np.zeros_like(p)
    return (p - p.mean()) / (p.std() + eps)


def margin_rescue(adv: np.ndarray, P_anchor: float, P_negatives: Sequence[float], delta: float = 0.1,
                  kappa: float = 0.5) -> tuple[np.ndarray, float, bool]:
    """Margin-based rescue (SACA Eq. 9-10): ``Delta = P_anchor - max_j P_j`` over the negatives; when
    ``Delta < delta`` every advantage of the sub-group is multiplied by ``kappa``.

    Returns (advantages, Delta, rescued). With no negatives Delta is +inf (no rescue)."""
    margin = float(P_anchor) - max((float(x) for x in P_negatives), default=-math.inf)
    if margin < delta:
        return np.asarray(adv, dtype=np.float64) * float(kappa), margin, True
    return np.asarray(adv, dtype=np.float64).copy(), margin, False


def negative_only_scaling(adv: np.ndarray, eta: float = 0.5) -> np.ndarray:
    """Negative-only scaling (SACA Eq. 11): ``A_j <- eta * A_j`` where ``A_j < 0``; non-negative ones unchanged."""
    a = np.asarray(adv, dtype=np.float64)
    return np.where(a < 0, float(eta) * a, a)


def reflection_advantages(P_S: Sequence[float], delta: float = 0.1, kappa: float = 0.5, eta: float = 0.5,
                          eps: float = 1e-4) -> tuple[np.ndarray, dict]:
    """Eq. 8-11 on a reflection sub-group ``S = [anchor, negative_1, ...]`` (the anchor first).

    Eq. 8 process advantages, then Eq. 9-10 margin rescue, then Eq. 11 negative-only scaling.
    Returns (advantages aligned with ``P_S``, {'margin', 'rescued'})."""
    P_S = [float(x) for x in P_S]
    adv = process_advantages(P_S, eps)
    adv, margin, rescued = margin_rescue(adv, P_S[0], P_S[1:], delta, kappa)
    adv = negative_only_scaling(adv, eta)
    return adv, {"margin": margin, "rescued": rescued}


def contrastive_correction(logp_teacher, logp_taken):
    """Contrastive correction (SACA Eq. 13, reconstruction: pairwise logistic form), per pair:

    ``L_con = -log sigmoid(logp(a*) - logp(a_hat))``, the log-probabilities of the teacher's and the taken
    action's option token in the decision that produced the divergence step. Works on torch tensors
    (returns a tensor with the graph) and on floats."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and (isinstance(logp_teacher, torch.Tensor) or isinstance(logp_taken, torch.Tensor)):
        return -torch.nn.functional.logsigmoid(logp_teacher - logp_taken)
    d = float(logp_teacher) - float(logp_taken)
    return math.log1p(math.exp(-d)) if d > -30 else -d  # -log sigmoid(d), stable


# --- one group -------------------------------------------------------------------------------

@dataclass
class SacaSwitches:
    """The switches and weights of group construction (a view of :class:`saca.train.rft.RftConfig`)."""

    soft_score: bool = False
    lambda_ss: float = 1.0
    afr: bool = False
    rr: bool = False
    rho: float = 0.5
    lambda_hn: float = 0.5
    n_hard_negatives: int = 3
    delta: float = 0.1
    kappa: float = 0.5
    eta: float = 0.5
    adv_eps: float = 1e-4


@dataclass
class GroupPlan:
    """What one group contributes to the update (SACA §3.3).

    ``rewards`` are the rewards GRPO normalises (mixed group: shaped; all-failure: R = 0); ``advantages`` maps a
    member to a fixed advantage (the reflection sub-group's process advantages) that replaces the GRPO one;
    ``grpo`` lists the members that enter ``L_GRPO`` (all of them, except an all-failure group with AFR: S); an
    all-failure group without AFR enters with rewards all 0, so it collapses (no gradient, counted)."""

    scenario: str
    rewards: list[float]
    roles: list[str]
    grpo: list[int]
    advantages: dict[int, float] = field(default_factory=dict)
    near_miss: list[int] = field(default_factory=list)
    anchor: int | None = None
    negatives: list[int] = field(default_factory=list)
    hn_scores: list[float] = field(default_factory=list)
    margin: float | None = None
    rescued: bool = False


def plan_group(R: Sequence[float], P: Sequence[float] | None, rho: Sequence[float] | None,
               actions: Sequence[Sequence[int]], sw: SacaSwitches) -> GroupPlan:
    """Route one group and build its plan (SACA §3.2-3.3). ``R``: the members' outcome rewards (1 success,
    0 failure; booleans work); ``P`` and ``rho`` (the auditor's process scores and prefix ratios) may be None when
    no switch needs them (plain GRPO). A mixed group keeps every member in ``L_GRPO``; an all-failure group
    goes to :func:`rescue` (AFR on) or collapses (AFR off)."""
    G = len(R)
    if len(actions) != G:
        raise SacaError(f"plan_group: {len(actions)} action sequences for {G} members")
    R = [float(r) for r in R]
    scenario = route_group(R)
    needs_audit = sw.soft_score or sw.afr or sw.rr
    if needs_audit and (P is None or rho is None):
        raise SacaError("plan_group: the soft score, AFR and RR need the auditor's P and rho")
    if scenario == "mixed":
        rewards = shaped_rewards(R, P if P is not None else [0.0] * G, sw.lambda_ss, sw.soft_score).tolist()
        nm = near_misses(R, rho, sw.rho) if rho is not None else []
        roles = ["successful" if s else ("near_miss" if i in nm else "failed") for i, s in enumerate(R)]
        return GroupPlan("mixed", rewards, roles, grpo=list(range(G)), near_miss=nm)
    if not sw.afr:  # every reward is 0: GRPO's advantages are all 0, the group collapses
        return GroupPlan("all_failure", R, ["discarded"] * G, grpo=list(range(G)))
    return rescue(P, actions, sw)


def rescue(P: Sequence[float], actions: Sequence[Sequence[int]], sw: SacaSwitches) -> GroupPlan:
    """All-Failure Rescue of one all-failure group (SACA Eq. 6-11): the pseudo-anchor (Eq. 6), its LCS hard
    negatives (Eq. 7), and the reflection sub-group ``S = [anchor, negatives...]`` with its process advantages,
    margin rescue and negative-only scaling (Eq. 8-11, :func:`reflection_advantages`). Only ``S`` enters
    ``L_GRPO``; the anchor's terms (Eq. 12-13) are built by the trainer (:mod:`saca.train.rft.groups`)."""
    G = len(actions)
    lengths = [len(a) for a in actions]
    anchor = pseudo_anchor(P, lengths)
    scores = hard_negative_scores(actions, anchor, P, sw.lambda_hn)
    negs = select_hard_negatives(scores, anchor, sw.n_hard_negatives)
    S = [anchor] + negs
    adv, info = reflection_advantages([P[j] for j in S], sw.delta, sw.kappa, sw.eta, sw.adv_eps)
    roles = ["discarded"] * G
    roles[anchor] = "anchor"
    for j in negs:
        roles[j] = "hard_negative"
    return GroupPlan("all_failure", [0.0] * G, roles, grpo=S, advantages={j: float(a) for j, a in zip(S, adv)},
                     anchor=anchor, negatives=negs, hn_scores=scores, margin=info["margin"], rescued=info["rescued"])


# --- decision tokens -------------------------------------------------------------------------

def option_letter_positions(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """Indices of the generated tokens that spell an option letter (``A``-``D``, optionally with a leading
    space) at the start of an option: the first token, or a token after a ``,`` separator. The k-th entry is
    the letter of the k-th action of the chunk (action text: :mod:`saca.action_text`)."""
    out = []
    prev = None
    for k, tid in enumerate(token_ids):
        text = tokenizer.decode([int(tid)])
        if text.strip() in ("A", "B", "C", "D") and (prev is None or prev.rstrip().endswith(",")):
            out.append(k)
        if text.strip():
            prev = text
    return out


def letter_token_variant(tokenizer, token_id: int, letter: str) -> int | None:
    """The token spelling ``letter`` in the same form as ``token_id`` (same leading-space marker): the teacher's
    option token at the place of the taken one. None when the vocabulary has no such token."""
    tok = tokenizer.convert_ids_to_tokens(int(token_id))
    stripped = tokenizer.decode([int(token_id)]).strip()
    if not tok or stripped not in ("A", "B", "C", "D"):
        return None
    i = tok.rfind(stripped)
    if i < 0:
        return None
    cand = tok[:i] + letter + tok[i + 1:]
    tid = tokenizer.convert_tokens_to_ids(cand)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return int(tid)


def kept_tokens(tokenizer, token_ids: Sequence[int], n_actions: int) -> int:
    """How many leading generated tokens spell the chunk's first ``n_actions`` options: the tokens before the
    letter of option ``n_actions + 1`` without the separator in front of it (all tokens when the chunk has no
    further option). 0 when the letters cannot be found (an unparseable decision)."""
    if n_actions <= 0:
        return 0
    pos = option_letter_positions(tokenizer, token_ids)
    if len(pos) < n_actions:
        return 0
    if len(pos) == n_actions:
        return len(token_ids)
    end = pos[n_actions]
    while end > 0 and tokenizer.decode([int(token_ids[end - 1])]).strip() in (",", ""):
        end -= 1
    return end

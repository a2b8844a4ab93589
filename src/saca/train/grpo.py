"""The GRPO formulas (both papers) and VLN-R1's Time-Decayed Reward (Eq. 9), as small pure functions.

Reward and advantage code works on numpy arrays (one value per trajectory); the
token-level loss code works on torch tensors of shape ``(B, T)`` (one row per
generated sequence, one column per generated token, ``mask`` marking the real
tokens). ``torch`` is imported inside the token-level functions so that the
reward side can be used without loading it.

* :func:`group_advantages`: ``A_i = (r_i - mean(r)) / (std(r) + eps)`` per group;
* :func:`time_decayed_reward`: VLN-R1 Eq. 9 and its Table 3d variants;
* :func:`policy_ratio`, :func:`clipped_surrogate`, :func:`k3_kl`, :func:`aggregate`
  and :func:`grpo_loss`: the clipped surrogate plus ``beta`` times the k3 KL;
* :func:`kl_reward_penalty`: the KL folded into the rewards instead (``kl_mode: reward``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

from saca import SacaError

if TYPE_CHECKING:  # pragma: no cover
    import torch

TDR_VARIANTS = ("hard", "uniform", "linear", "time_decayed")
KL_MODES = ("loss", "reward")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean")

ZERO_SPREAD = 1e-12  # a group whose max - min reward is at most this has no learning signal


# ---------------------------------------------------------------------------------------------------------------------
# rewards and advantages (numpy)


def group_advantages(rewards, group_ids, eps: float = 1e-4) -> tuple[np.ndarray, list]:
    """GRPO group-normalised advantage (both papers, method-notes "GRPO"): ``A_i = (r_i - mean(r)) / (std(r) + eps)``.

    The mean and std are taken over the group of trajectories sampled for the same prompt. Groups are keyed by id and
    may differ in size within one batch (order of samples arbitrary). std is the population std (ddof=0). A group whose
    rewards have zero spread (max - min <= 1e-12, including a one-member group) gives exactly 0 advantages and its id is
    returned in the collapsed list (in order of first appearance). Returns (advantages float64 array aligned with
    rewards, collapsed group ids).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise SacaError(f"rewards: expected a 1-D sequence of numbers, got shape {r.shape}")
    ids = list(group_ids)
    if len(ids) != r.shape[0]:
        raise SacaError(f"group_ids: {len(ids)} ids for {r.shape[0]} rewards (must be one id per reward)")
    if not np.all(np.isfinite(r)):
        raise SacaError("rewards: contains NaN or infinity")
    if not (math.isfinite(eps) and eps >= 0):
        raise SacaError(f"eps: must be a finite number >= 0, got {eps!r}")
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(ids):
        try:
            members.setdefault(gid, []).append(i)
        except TypeError as err:
            raise SacaError(f"group_ids[{i}]: not hashable ({type(gid).__name__})") from err
    adv = np.zeros_like(r)
    collapsed: list = []
    for gid, idx in members.items():  # dicts keep insertion order: first appearance
        g = r[idx]
        if g.max() - g.min() <= ZERO_SPREAD:
            collapsed.append(gid)
            continue
        adv[idx] = (g - g.mean()) / (g.std() + eps)
    return adv, collapsed


def time_decayed_reward(pred, truth, variant: str = "time_decayed", gamma: float = 0.9) -> float:
    """VLN-R1 Eq. 9 Time-Decayed Reward ``R_nav = sum_{k=0}^{n-1} gamma^k * 1[a_k == a*_k]`` and its Table 3d variants.

    ``n = len(truth)`` (the number of ground-truth future actions); ``pred`` is the parsed list of predicted actions,
    or None when the output could not be parsed (reward 0.0). A prediction shorter than n counts its missing positions
    as mismatches; a longer one is scored on its first n actions only. Variants:

    * ``hard``: 1.0 if all n actions match, else 0.0;
    * ``uniform``: gamma = 1, the number of matching positions;
    * ``linear``: weight ``w_k = (n - k) / n`` (linear distance weighting);
    * ``time_decayed``: weight ``gamma^k`` (Eq. 9; default gamma 0.9 is a reconstruction).

    Unknown variant -> SacaError listing TDR_VARIANTS.
    """
    if variant not in TDR_VARIANTS:
        raise SacaError(f"variant: unknown reward variant {variant!r} (expected one of {', '.join(TDR_VARIANTS)})")
    if variant == "time_decayed" and not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise SacaError(f"gamma: must be a finite number > 0, got {gamma!r}")
    if truth is None:
        raise SacaError("truth: missing ground-truth actions")
    truth = list(truth)
    n = len(truth)
    if n == 0:
        raise SacaError("truth: empty ground-truth action list (n must be >= 1)")
    if pred is None:
        return 0.0
    pred = list(pred)[:n]
    hits = [k < len(pred) and pred[k] == truth[k] for k in range(n)]
    if variant == "hard":
        return 1.0 if all(hits) else 0.0
    if variant == "uniform":
        return float(sum(hits))
    if variant == "linear":
        return float(sum((n - k) / n for k in range(n) if hits[k]))
    return float(sum(gamma**k for k in range(n) if hits[k]))


def kl_reward_penalty(
    logps: Sequence[Sequence[float]], ref_logps: Sequence[Sequence[float]], beta: float
) -> np.ndarray:
    """kl_mode: reward (SACA appendix 'implicit' KL, reconstruction): ``beta * mean_t(logp_jt - ref_logp_jt)``.

    Each trajectory's reward is reduced by beta times the token-mean of (logp - ref_logp) (the k1 estimator of
    KL(pi_theta || pi_ref)) over all its generated tokens; returns the penalty per trajectory as a float64 array
    (>= or < 0 possible: k1 is unbiased but not non-negative per sample), 0 for a trajectory with no tokens. The caller
    subtracts it: ``r_j - penalty_j``.
    """
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise SacaError(f"beta: must be a finite number >= 0, got {beta!r}")
    logps, ref_logps = list(logps), list(ref_logps)
    if len(logps) != len(ref_logps):
        raise SacaError(f"ref_logps: {len(ref_logps)} trajectories for {len(logps)} in logps")
    out = np.zeros(len(logps), dtype=np.float64)
    for j, (lp, rp) in enumerate(zip(logps, ref_logps)):
        a, b = np.asarray(lp, dtype=np.float64).reshape(-1), np.asarray(rp, dtype=np.float64).reshape(-1)
        if a.shape != b.shape:
            raise SacaError(f"ref_logps[{j}]: {b.size} tokens for {a.size} in logps[{j}]")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise SacaError(f"logps[{j}] / ref_logps[{j}]: contains NaN or infinity")
        if a.size:
            out[j] = beta * float(np.mean(a - b))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# token-level loss (torch)


def _check_same_shape(name: str, t, ref_name: str, ref) -> None:
    if tuple(t.shape) != tuple(ref.shape):
        raise SacaError(f"{name}: shape {tuple(t.shape)} differs from {ref_name} shape {tuple(ref.shape)}")


def policy_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Importance ratio ``rho = pi_theta / pi_theta_old = exp(logp - old_logp)`` per token (GRPO, both papers).

    ``old_logp`` is treated as a constant (detached).
    """
    import torch

    _check_same_shape("old_logp", old_logp, "logp", logp)
    return torch.exp(logp - old_logp.detach())


def _as_token_advantages(advantages, logp: torch.Tensor) -> torch.Tensor:
    import torch

    a = torch.as_tensor(advantages, dtype=logp.dtype, device=logp.device).detach()
    if a.dim() == 1 and logp.dim() == 2 and a.shape[0] == logp.shape[0]:
        a = a.unsqueeze(-1)  # one advantage per sequence
    try:
        torch.broadcast_shapes(a.shape, logp.shape)
    except RuntimeError as err:
        raise SacaError(
            f"advantages: shape {tuple(a.shape)} does not broadcast to logp shape {tuple(logp.shape)}"
        ) from err
    return a


def clipped_surrogate(logp, old_logp, advantages, eps_clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO / PPO per-token clipped surrogate loss ``-min(rho*A, clip(rho, 1-eps, 1+eps)*A)`` (GRPO, both papers).

    ``rho = exp(logp - old_logp)``. advantages broadcast per token (shape like logp, or (B, 1); a 1-D (B,) tensor is
    taken as (B, 1)); they are treated as constants. Returns (loss_per_token tensor, clipped bool tensor: True where the
    clipped branch is the active (smaller) one and differs from the unclipped value, i.e. the gradient is zero there).
    """
    import torch

    if not (isinstance(eps_clip, (int, float)) and math.isfinite(eps_clip) and 0 < eps_clip < 1):
        raise SacaError(f"eps_clip: must be a number in (0, 1), got {eps_clip!r}")
    rho = policy_ratio(logp, old_logp)
    a = _as_token_advantages(advantages, logp)
    unclipped = rho * a
    clipped_val = torch.clamp(rho, 1.0 - eps_clip, 1.0 + eps_clip) * a
    loss = -torch.minimum(unclipped, clipped_val)
    return loss, (clipped_val < unclipped).detach()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_ref) per token (GRPO, both papers): ``exp(ref - logp) - (ref - logp) - 1``.

    >= 0, = 0 when equal. Computed as ``expm1(d) - d`` with ``d = ref - logp`` (same value, no cancellation near 0);
    ``ref_logp`` is treated as a constant.
    """
    import torch

    _check_same_shape("ref_logp", ref_logp, "logp", logp)
    d = ref_logp.detach() - logp
    return torch.expm1(d) - d


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean") -> torch.Tensor:
    """Reduce a (B, T) per-token quantity to a scalar over the masked (generated) tokens.

    token_mean: sum(per_token*mask)/sum(mask) over the whole batch; sequence_mean: mean over rows with at least one
    masked token of each row's token mean (GRPO's ``1/G sum_i 1/|o_i| sum_t``). mask is 0/1 (B, T), bool or numeric.
    Zero masked tokens -> 0 * per_token.sum() (keeps graph). Positions outside the mask are never read, so padding
    holding NaN or inf does not leak in. Unknown mode -> SacaError.
    """
    import torch

    if mode not in LOSS_AGGREGATIONS:
        raise SacaError(f"aggregation: unknown mode {mode!r} (expected one of {', '.join(LOSS_AGGREGATIONS)})")
    if per_token.dim() != 2:
        raise SacaError(f"per_token: expected shape (B, T), got {tuple(per_token.shape)}")
    mask = torch.as_tensor(mask, device=per_token.device)
    _check_same_shape("mask", mask, "per_token", per_token)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise SacaError("mask: values must be 0 or 1")
        mask = mask != 0
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))
    counts = mask.sum(dim=1).to(per_token.dtype)
    if mode == "token_mean":
        return masked.sum() / counts.sum().clamp(min=1.0)  # all-zero mask: 0 with the graph kept
    rows = counts > 0
    row_means = masked.sum(dim=1) / counts.clamp(min=1.0)
    return torch.where(rows, row_means, torch.zeros_like(row_means)).sum() / rows.sum().to(per_token.dtype).clamp(
        min=1.0
    )


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: Any,
    mask: torch.Tensor,
    eps_clip: float = 0.2,
    beta: float = 0.04,
    kl_mode: str = "loss",
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict]:
    """GRPO objective (both papers), as a loss to minimise: ``aggregate(surrogate + beta * k3_kl)``.

    With kl_mode 'loss' the per-token loss is clipped_surrogate + beta*k3_kl; with kl_mode 'reward' the KL is not in
    the loss (it was folded into the rewards, see kl_reward_penalty) but still reported. ref_logp may be None when
    beta == 0 or kl_mode == 'reward'; then stats['kl'] is NaN (not computed). Returns (loss, stats) with stats floats:
    'pg_loss' (aggregated surrogate), 'kl' (aggregated k3 KL, detached), 'clip_frac' (aggregated clipped mask,
    token_mean), 'ratio_mean' (token mean of rho over the masked tokens).
    """
    import torch

    if kl_mode not in KL_MODES:
        raise SacaError(f"kl_mode: unknown mode {kl_mode!r} (expected one of {', '.join(KL_MODES)})")
    if aggregation not in LOSS_AGGREGATIONS:
        raise SacaError(f"aggregation: unknown mode {aggregation!r} (expected one of {', '.join(LOSS_AGGREGATIONS)})")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise SacaError(f"beta: must be a finite number >= 0, got {beta!r}")
    if ref_logp is None and kl_mode == "loss" and beta != 0:
        raise SacaError(f"ref_logp: required when beta > 0 and kl_mode is 'loss' (beta = {beta})")
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, eps_clip)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else None
    per_token = surrogate + beta * kl if (kl_mode == "loss" and beta != 0) else surrogate
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {
            "pg_loss": float(aggregate(surrogate.detach(), mask, aggregation)),
            "kl": float(aggregate(kl.detach(), mask, aggregation)) if kl is not None else float("nan"),
            "clip_frac": float(aggregate(clipped.to(logp.dtype), mask, "token_mean")),
            "ratio_mean": float(aggregate(policy_ratio(logp.detach(), old_logp), mask, "token_mean")),
        }
    return loss, stats

"""Advantages and the objective (SACA §3.3, method-notes §2-3.3).

:func:`advantages` turns the batch's rewards into per-trajectory advantages (GRPO's group normalisation, the
rescue's process advantages in place of the all-failure groups'), and says which groups collapsed;
:func:`kl_reward_advantages` is ``kl_mode: reward``'s variant. :func:`objective` is the total loss

    L = L_GRPO + lambda_rep * L_rep + lambda_align * L_align + lambda_con * L_con

and the ``*_term`` functions compute one micro batch's share of each term. Every term is a sum over the micro
batches of every rank, normalised by the update's global counts (tokens, sequences, pairs), so ``L`` is linear
in those shares: back-propagating :func:`objective` of each share accumulates the gradient of ``L``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from saca.train import grpo


def objective(cfg, grpo_loss=0.0, rep=0.0, align=0.0, con=0.0):
    """SACA's total loss (§3.3, method-notes §3.3): ``L = L_GRPO + lambda_rep L_rep + lambda_align L_align +
    lambda_con L_con``; ``L_mixed`` and ``L_AF`` of the paper are its parts on the two scenarios' groups. Floats
    or tensors (a term left out is 0)."""
    return grpo_loss + cfg.lambda_rep * rep + cfg.lambda_align * align + cfg.lambda_con * con


def advantages(rewards: Sequence[float], groups: Sequence, override: dict, excluded: set,
               eps: float = 1e-4) -> tuple[np.ndarray, list[int], set]:
    """Per-trajectory advantages of an update: GRPO's group-normalised ones (:func:`saca.train.grpo.group_advantages`)
    with the rescue's process advantages (``override``, SACA Eq. 8-11) in their place. A group whose members
    outside ``excluded`` all have advantage 0 is *collapsed*: it gives no gradient. Returns ``(advantages, live
    trajectories, collapsed group ids)``."""
    adv, _ = grpo.group_advantages(np.asarray(rewards, dtype=np.float64), groups, eps=eps)
    for i, a in override.items():
        adv[i] = a
    spread = {g: False for g in groups}
    for i, g in enumerate(groups):
        if i not in excluded:
            spread[g] = spread[g] or adv[i] != 0.0
    live = [i for i, g in enumerate(groups) if spread[g] and i not in excluded]
    return adv, live, {g for g, v in spread.items() if not v}


def kl_reward_advantages(rewards: Sequence[float], groups: Sequence, reward_idx: Sequence[int], subgroups: Sequence,
                         samples_of, beta: float, sw) -> dict[int, float]:
    """``kl_mode: reward`` (SACA Appendix C.2's implicit KL, in both scenarios; reconstruction, docs/reconstructions.md):
    each trajectory's reward lowered by ``beta`` x its token-mean ``logp - ref``
    (:func:`saca.train.grpo.kl_reward_penalty`, log-probs under the policy that sampled it), then the advantages
    recomputed from the lowered rewards.

    * trajectories ``reward_idx`` (GRPO's advantages: mixed groups, plain GRPO): ``r_i - penalty_i``, group-normalised;
    * the rescue's reflection sub-groups ``subgroups`` (``(members, P)``, anchor first): the process scores
      ``P_j - penalty_j`` through Eq. 8-11 again (:func:`saca.train.saca.reflection_advantages`, switches ``sw``).

    Returns ``{trajectory: advantage}``."""
    from saca.train.saca import reflection_advantages

    def penalty(idx):
        lps = [[float(v) for s in samples_of[i] for v in s.behav_logp] for i in idx]
        refs = [[float(v) for s in samples_of[i] for v in s.ref_logp] for i in idx]
        return grpo.kl_reward_penalty(lps, refs, beta)

    out = {}
    if reward_idx:
        r_pen = np.asarray(rewards, dtype=np.float64)[list(reward_idx)] - penalty(reward_idx)
        a_pen, _ = grpo.group_advantages(r_pen, [groups[i] for i in reward_idx], eps=sw.adv_eps)
        out.update(zip(reward_idx, (float(a) for a in a_pen)))
    for members, P in subgroups:
        adv, _ = reflection_advantages(np.asarray(P, dtype=np.float64) - penalty(members), sw.delta, sw.kappa, sw.eta,
                                       sw.adv_eps)
        out.update(zip(members, (float(a) for a in adv)))
    return out


# --- one micro batch's share of each term ---------------------------------------------------------

def grpo_term(logp, mask, samples, cfg, ref_on: bool, n_tokens: float, n_seqs: float):
    """One micro batch's share of ``L_GRPO`` (:func:`saca.train.grpo.grpo_loss`: clipped surrogate + ``beta`` x
    k3 KL), weighted so that the shares of every micro batch and rank add up to the loss aggregated over the
    update's global batch (``token_mean``: by tokens, ``sequence_mean``: by rows). Returns ``(share, stats)``
    (the stats weighted alike)."""
    import torch

    from saca.train.rft.samples import pad_rows

    T = logp.shape[1]
    old = logp.detach() if all(s.old_logp is None for s in samples) else pad_rows(
        [s.old_logp if s.old_logp is not None else torch.zeros(0) for s in samples], T, logp.device)
    ref = pad_rows([s.ref_logp for s in samples], T, logp.device) if ref_on else None
    adv = torch.tensor([[s.advantage] for s in samples], dtype=torch.float32, device=logp.device)
    loss, st = grpo.grpo_loss(logp, old, ref, adv, mask, eps_clip=cfg.eps_clip, beta=cfg.beta if ref is not None else 0.0,
                              kl_mode=cfg.kl_mode, aggregation=cfg.loss_aggregation)
    w = float(mask.sum()) / n_tokens if cfg.loss_aggregation == "token_mean" else len(samples) / n_seqs
    stats = {"loss": float(loss.detach()) * w, **{k: float(st[k]) * w for k in ("pg_loss", "kl", "ratio_mean")}}
    stats["clip_frac"] = float(st["clip_frac"]) * float(mask.sum()) / n_tokens
    return loss * w, stats


def cloning_term(logp, mask, n_tokens: float):
    """One micro batch's share of a behaviour-cloning term (``L_rep``, and ``L_align`` of SACA Eq. 12): the NLL of
    its tokens over the term's token count in the whole update (token mean over every rank)."""
    return -(logp * mask).sum() / max(n_tokens, 1.0)


def contrastive_term(logp_teacher, logp_taken, n_pairs: float):
    """One micro batch's share of ``L_con`` (SACA Eq. 13, :func:`saca.train.saca.contrastive_correction`): the
    mean over the update's pairs on every rank."""
    from saca.train.saca import contrastive_correction

    return contrastive_correction(logp_teacher, logp_taken).sum() / max(n_pairs, 1.0)

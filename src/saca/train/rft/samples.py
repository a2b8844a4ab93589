"""Training samples and their log-probabilities by teacher forcing (the inputs of every loss term)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from saca.policy.generate import sampling_log_softmax


@dataclass
class Sample:
    """One training sample: a decision (encoded prompt + generated tokens) with its advantage."""

    encoded: object  # saca.policy.processor.Encoded of the prompt (no answer)
    token_ids: list[int]
    advantage: float
    group: object = None
    old_logp: object = None  # pi_old per token, (T,) tensor; None: pi_theta detached (num_iterations 1)
    ref_logp: object = None
    behav_logp: object = None  # the policy before the batch's first step (kl_mode reward)


def _generated_log_softmax(model, proc, encoded: Sequence, token_ids: Sequence[Sequence[int]], temperature: float):
    """Teacher-forced log-softmax rows at every generated position: ``(logsm (B, T, V), targets (B, T), mask (B, T))``."""
    import torch

    from saca.policy.processor import Encoded

    items = [Encoded(list(e.input_ids) + list(ids), None, e.vision, e.n_images, len(e.input_ids))
             for e, ids in zip(encoded, token_ids)]
    batch = proc.collate(items)  # right padding
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    B, L = batch["input_ids"].shape
    T = max(1, max(len(ids) for ids in token_ids))
    pos = torch.zeros((B, T), dtype=torch.long)
    tgt = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (e, ids) in enumerate(zip(encoded, token_ids)):
        n = len(ids)
        p0 = len(e.input_ids) - 1  # position whose logits predict the first generated token
        pos[i] = torch.clamp(torch.arange(p0, p0 + T), max=L - 1)
        if n:
            tgt[i, :n] = torch.tensor(ids, dtype=torch.long)
            mask[i, :n] = 1.0
    pos, tgt, mask = pos.to(device), tgt.to(device), mask.to(device)
    backbone = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if backbone is not None and head is not None:
        hidden = backbone(**batch, use_cache=False).last_hidden_state
        h = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        with torch.autocast(device_type=h.device.type, enabled=False):  # logits in the head's own precision
            logits = head(h.to(head.weight.dtype))
    else:  # pragma: no cover - families without the backbone / lm_head split
        full = model(**batch, use_cache=False).logits
        logits = full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    return sampling_log_softmax(logits, proc, temperature), tgt, mask


def token_logprobs(model, proc, encoded: Sequence, token_ids: Sequence[Sequence[int]], temperature: float = 1.0):
    """``log pi(token)`` of each generated token given its prompt, by teacher forcing.

    Returns ``(logp, mask)``: ``(B, T)`` tensors, ``T`` the longest generation, the
    log-probabilities under ``logits / temperature`` with the image placeholder tokens
    suppressed (the distribution the rollout sampled from, before top-p / top-k) and 1 on
    real tokens. Only the generated positions go through the LM head.
    """
    import torch

    logsm, tgt, mask = _generated_log_softmax(model, proc, encoded, token_ids, temperature)
    logp = logsm.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask.bool(), logp, torch.zeros_like(logp)), mask


def option_logprobs(model, proc, samples: Sequence["ConSample"], temperature: float = 1.0):
    """``(logp(a*), logp(a_hat))`` per contrastive pair (SACA Eq. 13): the log-probabilities of the teacher's and
    the taken option token at the taken option's position, given the decision's prompt and its generated
    tokens before that position. Two ``(B,)`` tensors with the graph."""
    import torch

    logsm, _, _ = _generated_log_softmax(model, proc, [c.encoded for c in samples],
                                         [c.token_ids[: c.position + 1] for c in samples], temperature)
    rows = logsm[torch.arange(len(samples)), torch.tensor([c.position for c in samples])]
    teacher = rows.gather(-1, torch.tensor([[c.teacher_id] for c in samples], device=rows.device)).squeeze(-1)
    taken = rows.gather(-1, torch.tensor([[c.taken_id] for c in samples], device=rows.device)).squeeze(-1)
    return teacher, taken


@dataclass
class ConSample:
    """One contrastive-correction pair (SACA Eq. 13): the decision that produced the anchor's divergence step,
    the position of the taken option's letter token among its generated tokens, and the two option tokens."""

    encoded: object
    token_ids: list[int]
    position: int
    taken_id: int
    teacher_id: int
    group: object = None


def pad_rows(rows: Sequence, T: int, device):
    import torch

    out = torch.zeros((len(rows), T), dtype=torch.float32, device=device)
    for i, r in enumerate(rows):
        n = min(len(r), T)
        if n:
            out[i, :n] = r[:n].to(device)
    return out

"""Batched generation: many decisions (agents, RL group members) in one ``model.generate`` call.

Prompts are left-padded so that every row continues right after its own prompt.
Sampling settings come from config (``policy.generation`` for evaluation, the RL
section for rollouts): ``do_sample``, ``temperature``, ``top_p``, ``top_k``,
``max_new_tokens``, ``seed``. Each call seeds torch's generator with
``seed`` (callers pass ``base_seed + call index``), so a run is reproducible.
With ``row_seeds`` (the evaluation's policy agent: one seed per decision, drawn
from its episode's own stream) every row samples from its own generator instead
(:class:`RowSampler`), so what a row draws does not depend on which other rows
share the call, how many there are, or how many calls came before. Such calls
decode with ``model.generate`` and the :class:`RowSampler` logits processor.

``generate_batch`` returns the texts and, when asked, the generated token ids and
their log-probabilities under the distribution they were sampled from before
top-p / top-k truncation (``log_softmax(logits / temperature)`` with the image
placeholder tokens suppressed; temperature 1 for greedy decoding), the same distribution RFT's loss evaluates
(:func:`saca.train.rft.token_logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from saca import SacaError

DECODERS = ("static", "hf")
DEFAULT_DECODER = "static"


@dataclass
class SamplingConfig:
    """Decoding settings (policy.generation in config.yaml)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    seed: int = 0

    def validate(self, where: str) -> None:
        if self.temperature <= 0:
            raise SacaError(f"{where}.temperature: must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SacaError(f"{where}.top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SacaError(f"{where}.top_k: must be >= 0 (0 disables top-k), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise SacaError(f"{where}.max_new_tokens: must be at least 1")


@dataclass
class PolicyInput:
    """One decision: the user prompt (with ``<image>`` placeholders) and its frames in order."""

    prompt: str
    images: Sequence[np.ndarray]


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]] | None = None  # generated ids, up to and including the first end-of-turn token
    logprobs: list[list[float]] | None = None  # log pi(token) per generated id (raw logits, temperature 1)


def generate_batch(
    policy,
    inputs: Sequence[PolicyInput],
    sampling: SamplingConfig,
    seed: int | None = None,
    return_tokens: bool = False,
    return_logprobs: bool = False,
    max_batch: int | None = None,
    decoder: str | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Generation:
    """Generate an answer for every input; rows are processed ``max_batch`` at a time (default: all).

    ``row_seeds`` (one per input): each row samples from its own generator (:class:`RowSampler`)."""
    proc = policy.processor
    encoded = [proc.encode(x.prompt, x.images) for x in inputs]
    gen = generate_encoded(policy, encoded, sampling, seed=seed, return_logprobs=return_logprobs, max_batch=max_batch,
                           decoder=decoder, row_seeds=row_seeds)
    return Generation(
        gen.texts,
        gen.token_ids if (return_tokens or return_logprobs) else None,
        gen.logprobs if return_logprobs else None,
    )


def generate_encoded(
    policy,
    encoded: Sequence,
    sampling: SamplingConfig,
    seed: int | None = None,
    return_logprobs: bool = False,
    max_batch: int | None = None,
    decoder: str | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Generation:
    """:func:`generate_batch` for prompts already encoded by ``policy.processor.encode`` (no answer).

    The rollout engine encodes each decision once (with per-frame pixel caching) and keeps the
    encoding for the training forward pass. Token ids are always returned. ``decoder``: ``static``
    (default; :func:`_decode_static`) or ``hf`` (``model.generate``, the reference it must equal).
    """
    decoder = decoder or DEFAULT_DECODER
    if decoder not in DECODERS:
        raise SacaError(f"decoder '{decoder}': expected one of {', '.join(DECODERS)}")
    if not encoded:
        return Generation([], [], [] if return_logprobs else None)
    if row_seeds is not None and len(row_seeds) != len(encoded):
        raise SacaError(f"generate: {len(row_seeds)} row seeds for {len(encoded)} rows")
    step = max_batch or len(encoded)
    texts: list[str] = []
    tokens: list[list[int]] = []
    logps: list[list[float]] = []
    base = sampling.seed if seed is None else seed
    for k, lo in enumerate(range(0, len(encoded), step)):
        # chunk k of a call seeded `base` never shares a seed with another call's chunk
        seed_k = base if k == 0 else int(np.random.default_rng([base, k]).integers(2**31 - 1))
        chunk = encoded[lo : lo + step]
        if row_seeds is not None and sampling.do_sample:  # per-row streams: generate + RowSampler
            g = _generate_chunk(policy, chunk, sampling, seed_k, return_logprobs, row_seeds[lo : lo + step])
        elif decoder == "static" and static_decoding_supported(policy.model):
            g = _decode_static(policy, chunk, sampling, seed_k, return_logprobs)
        else:
            g = _generate_chunk(policy, chunk, sampling, seed_k, return_logprobs)
        texts += g.texts
        tokens += g.token_ids
        if return_logprobs:
            logps += g.logprobs
    return Generation(texts, tokens, logps if return_logprobs else None)


def logprob_temperature(sampling: SamplingConfig) -> float:
    """The temperature of the distribution tokens are drawn from (1 for greedy decoding)."""
    return float(sampling.temperature) if sampling.do_sample else 1.0


def sampling_log_softmax(logits, proc, temperature: float):
    """Log-probabilities of the distribution tokens are sampled from, before top-p / top-k:
    ``log_softmax(logits / temperature)`` with the image placeholder tokens suppressed
    (an answer never contains one). Generation records these; RFT's loss recomputes them."""
    import torch

    logits = logits.float() / float(temperature)
    logits[..., proc.suppressed_ids] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


class RowSampler:
    """Sampling with one random stream per row: a logits processor for greedy ``generate``.

    It warps the scores as ``generate``'s sampling does (temperature, then top-k, then top-p, keeping at
    least one token) and adds Gumbel noise drawn from row ``i``'s own ``torch.Generator`` (seeded
    ``seeds[i]``; one draw over the vocabulary per generated token); greedy decoding then takes
    ``argmax(scores + Gumbel)``, which is a draw from ``softmax(scores)`` (the Gumbel-max trick): the
    same distribution as ``generate(do_sample=True)``, but the tokens of a row depend only on its own
    seed and logits, not on the other rows of the batch. The noise is drawn on the CPU in float64.
    """

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int]):
        import torch
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(float(sampling.temperature))]
        if int(sampling.top_k) > 0:
            self.warpers.append(TopKLogitsWarper(int(sampling.top_k)))
        if float(sampling.top_p) < 1.0:
            self.warpers.append(TopPLogitsWarper(float(sampling.top_p)))
        self.generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        return (scores.double() + gumbel.to(scores.device)).to(scores.dtype)


def _generate_chunk(policy, encoded, sampling: SamplingConfig, seed: int, return_logprobs: bool,
                    row_seeds: Sequence[int] | None = None) -> Generation:
    import torch

    proc = policy.processor
    batch = proc.collate(list(encoded), padding_side="left")
    device = policy.device
    batch = {k: v.to(device) for k, v in batch.items()}
    kwargs = dict(
        max_new_tokens=int(sampling.max_new_tokens),
        do_sample=bool(sampling.do_sample),
        eos_token_id=proc.eos_token_ids,
        pad_token_id=proc.pad_token_id,
        return_dict_in_generate=True,
        output_logits=return_logprobs,
        suppress_tokens=list(proc.suppressed_ids),  # image placeholders never appear in an answer
    )
    if sampling.do_sample and row_seeds is not None:
        # one random stream per row: greedy decoding over Gumbel-perturbed warped scores (RowSampler)
        from transformers.generation.logits_process import LogitsProcessorList

        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                      logits_processor=LogitsProcessorList([RowSampler(sampling, row_seeds)]))
    elif sampling.do_sample:
        kwargs.update(temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=int(sampling.top_k) or None)
    else:
        # greedy: neutralise sampling defaults a checkpoint's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    torch.manual_seed(int(seed))
    with torch.no_grad():
        out = policy.model.generate(**batch, **kwargs)
    prompt_len = batch["input_ids"].shape[1]
    gen = out.sequences[:, prompt_len:]
    logits = torch.stack(out.logits, dim=1) if return_logprobs and gen.shape[1] else None  # (B, T, V), raw
    return _finish(proc, sampling, gen, logits)


def _finish(proc, sampling: SamplingConfig, gen, logits) -> Generation:
    """Cut each row after its first end-of-turn token; texts, ids and (given raw ``logits``) log-probabilities."""
    seqs = gen.tolist()
    return_logprobs = logits is not None
    if return_logprobs:
        # log pi(token) under the sampling distribution before top-p / top-k truncation (logits / temperature)
        lp = sampling_log_softmax(logits, proc, logprob_temperature(sampling))
        all_lp = lp.gather(-1, gen.unsqueeze(-1)).squeeze(-1).tolist()
    eos = set(proc.eos_token_ids)
    texts, ids, logps = [], [], []
    for row, seq in enumerate(seqs):
        cut = len(seq)
        for j, t in enumerate(seq):
            if t in eos:
                cut = j + 1
                break
        kept = seq[:cut]
        ids.append(kept)
        texts.append(proc.decode([t for t in kept if t not in eos]))
        if return_logprobs:
            logps.append([float(v) for v in all_lp[row][:cut]])
    return Generation(texts, ids, logps if return_logprobs else None)


# generation_config settings that add logits processors the static loop does not implement: with any of them set,
# decoding falls back to model.generate (a checkpoint's sampling defaults are overridden by SamplingConfig either way)
_UNSUPPORTED = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
                "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
                "forced_eos_token_id": None, "sequence_bias": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0, "min_p": None, "exponential_decay_length_penalty": None, "begin_suppress_tokens": None}


def static_decoding_supported(model) -> bool:
    """Whether the checkpoint's generation_config adds no logits processor beyond the ones :func:`_decode_static`
    applies (suppressed tokens, temperature, top-k, top-p)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return True
    return all(getattr(gc, k, neutral) in (neutral, None) or (neutral is None and not getattr(gc, k, None))
               for k, neutral in _UNSUPPORTED.items())


def _warpers(proc, sampling: SamplingConfig):
    """transformers' own logits processors, in generate's order: suppressed tokens, then temperature, top-k, top-p."""
    from transformers.generation.logits_process import (LogitsProcessorList, SuppressTokensLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if proc.suppressed_ids:
        procs.append(SuppressTokensLogitsProcessor(list(proc.suppressed_ids), device="cpu"))
    if sampling.do_sample:
        if float(sampling.temperature) != 1.0:
            procs.append(TemperatureLogitsWarper(float(sampling.temperature)))
        if int(sampling.top_k):
            procs.append(TopKLogitsWarper(int(sampling.top_k)))
        if float(sampling.top_p) < 1.0:
            procs.append(TopPLogitsWarper(float(sampling.top_p)))
    return procs


class _StepFn:
    """One decode step over a static KV cache: ``(ids (B, 1), positions, mask (B, L + T)) -> raw logits (B, V)``,
    compiled with ``torch.compile`` on CUDA (static shapes: the cache and the mask are preallocated)."""

    def __init__(self, model, compile_: bool):
        import torch

        self.model = model
        self.compiled = compile_
        self.fn = torch.compile(self._step, mode="reduce-overhead", fullgraph=False, dynamic=False) if compile_ else self._step

    def _step(self, ids, positions, mask, cache):
        return self.model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1, :].float()

    def __call__(self, ids, positions, mask, cache):
        if not self.compiled:
            return self.fn(ids, positions, mask, cache)
        try:
            return self.fn(ids, positions, mask, cache)
        except Exception as err:  # noqa: BLE001 - a compiler failure must not end a rollout: decode eagerly
            import logging

            logging.getLogger(__name__).warning("torch.compile of the decode step failed (%s); decoding eagerly", err)
            self.compiled, self.fn = False, self._step
            return self.fn(ids, positions, mask, cache)


_COMPILED: dict = {}


def _decode_static(policy, encoded, sampling: SamplingConfig, seed: int, return_logprobs: bool,
                   static_cache: bool | None = None) -> Generation:
    """Our own decode loop over the model's forward: the same tokens as ``model.generate`` (same logits processors,
    the same RNG draws), without generate's per-step host work.

    * the KV cache is a preallocated ``transformers.StaticCache`` of ``prompt + max_new_tokens`` positions and
      the attention mask is allocated once at that length: every decode step has the same shapes;
    * the prompt's position ids (Qwen2-VL's 3-D M-RoPE indices, ``get_rope_index``) are computed once per prompt
      by transformers' own ``_prepare_position_ids_for_generation``; step ``t`` uses the last prompt position
      ``+ 1 + t``, as generate does;
    * on CUDA the decode step is compiled (``torch.compile``, CUDA graphs); end-of-turn is checked on the host
      every step only to stop early, as generate does.

    ``static_cache`` (default: on CUDA) picks the ``StaticCache``; without it (CPU) the loop uses the
    ``DynamicCache`` generate uses, and its log-probs are bitwise generate's: CPU runs (the mini world)
    train the same weights as before. With the static cache, attention runs over all preallocated
    positions (masked) and the logits differ from generate's in the last float bits (1e-7).
    """
    import torch
    from transformers import DynamicCache, StaticCache

    proc = policy.processor
    model = policy.model
    device = policy.device
    batch = proc.collate(list(encoded), padding_side="left")
    batch = {k: v.to(device) for k, v in batch.items()}
    ids = batch.pop("input_ids")
    prompt_mask = batch.pop("attention_mask")
    B, L = ids.shape
    T = int(sampling.max_new_tokens)
    mask = torch.ones((B, L + T), dtype=prompt_mask.dtype, device=device)
    mask[:, :L] = prompt_mask
    positions = model._prepare_position_ids_for_generation(ids, {"attention_mask": prompt_mask, **batch})
    step_pos = positions[..., -1:].clone()
    cuda = device.type == "cuda" if hasattr(device, "type") else str(device).startswith("cuda")
    static_cache = cuda if static_cache is None else static_cache
    cache = StaticCache(config=model.config, max_cache_len=L + T) if static_cache else DynamicCache(config=model.config)
    procs = _warpers(proc, sampling)
    eos = torch.tensor(sorted(set(proc.eos_token_ids)), device=device)
    pad = int(proc.pad_token_id)
    compile_ = cuda and static_cache
    key = (id(model), compile_)
    if key not in _COMPILED:
        _COMPILED.clear()
        _COMPILED[key] = _StepFn(model, compile_)
    step = _COMPILED[key]
    torch.manual_seed(int(seed))
    out_ids = torch.full((B, T), pad, dtype=torch.long, device=device)
    raw = [] if return_logprobs else None
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask[:, :L], position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1, **batch).logits[:, -1, :].to(copy=True, dtype=torch.float32)
        n = 0
        for t in range(T):
            if raw is not None:
                raw.append(logits.clone())
            scores = procs(ids, logits)
            if sampling.do_sample:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = torch.argmax(scores, dim=-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            out_ids[:, t] = nxt
            n = t + 1
            unfinished &= ~torch.isin(nxt, eos)
            if t == T - 1 or not bool(unfinished.any()):
                break
            step_pos = step_pos + 1
            logits = step(nxt[:, None], step_pos, mask[:, : L + t + 1] if not compile_ else mask, cache)
    gen = out_ids[:, :n]
    return _finish(proc, sampling, gen, torch.stack(raw, dim=1) if raw is not None and n else None)

"""History-frame samplers (VLN-R1 Eq. 6 and the alternatives of VLN-R1 Table 3b).

Each sampler maps the current frame index ``t`` to the sorted list of history
frame indices (all ``< t``) shown to the policy before the current frame.
``max_frames`` counts history plus the current frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from saca import SacaError

SAMPLERS = ("long_short", "uniform", "exponential")


@dataclass
class MemoryConfig:
    """Sampler choice and its parameters (VLN-R1 Eq. 6; defaults are a reconstruction)."""

    sampler: str = "long_short"
    M: int = 8
    d1: int = 1
    d2: int = 4
    max_frames: int = 16

    def validate(self, where: str) -> None:
        if self.sampler not in SAMPLERS:
            raise SacaError(f"{where}.sampler: unknown sampler '{self.sampler}'; choose one of {', '.join(SAMPLERS)}")
        if min(self.M, self.d1, self.d2) < 1:
            raise SacaError(f"{where}: M, d1 and d2 must be at least 1")
        if self.max_frames < 2:
            raise SacaError(f"{where}.max_frames: must be at least 2 (one history frame plus the current one)")


def long_short_memory(t: int, M: int = 8, d1: int = 1, d2: int = 4, max_frames: int = 16) -> list[int]:
    """Long-Short Memory Sampling (VLN-R1 Eq. 6).

    Short-term: ``t-1, t-1-d1, ...`` while the index is ``>= t-M``.
    Long-term: ``t-M-d2, t-M-2*d2, ...`` while ``>= 0``; frame 0 is always kept.
    If more than ``max_frames - 1`` history frames result, the long-term part
    (except frame 0) is thinned uniformly: of its ``L`` frames in time order,
    the ``k`` kept ones are at positions ``floor((i + 0.5) * L / k)``, i < k.
    If the short-term part alone is too long, its most recent frames are kept.
    """
    if t <= 0:
        return []
    budget = max_frames - 1
    lo = max(t - M, 0)
    short = list(range(t - 1, lo - 1, -d1))
    long_ = list(range(t - M - d2, -1, -d2))
    short = sorted(short)
    long_ = sorted(i for i in long_ if i not in short and i != 0)
    keep_zero = 0 not in short
    if len(short) + len(long_) + int(keep_zero) <= budget:
        return sorted(set(short + long_ + ([0] if keep_zero else [])))
    room = budget - int(keep_zero)
    if len(short) >= room:
        return sorted(([0] if keep_zero else []) + short[len(short) - room :])
    k = room - len(short)
    L = len(long_)
    thinned = [long_[((2 * i + 1) * L) // (2 * k)] for i in range(k)]
    return sorted(set(short + thinned + ([0] if keep_zero else [])))


def uniform_memory(t: int, max_frames: int = 16) -> list[int]:
    """Uniform sampling (VLN-R1 Table 3b "Average Sampling"): ``max_frames - 1`` frames
    evenly over ``[0, t-1]``, both ends included: ``floor(i * (t-1) / (k-1))``."""
    if t <= 0:
        return []
    k = max_frames - 1
    if t <= k:
        return list(range(t))
    if k == 1:
        return [t - 1]
    return sorted({(i * (t - 1)) // (k - 1) for i in range(k)})


def exponential_memory(t: int, max_frames: int = 16) -> list[int]:
    """Exponential decay (VLN-R1 Table 3b): frames ``t-1, t-2, t-4, t-8, ...`` and frame 0,
    keeping the most recent ``max_frames - 1``."""
    if t <= 0:
        return []
    idx = []
    step = 1
    while t - step >= 0:
        idx.append(t - step)
        step *= 2
    idx = sorted(set(idx) | {0})
    return idx[-(max_frames - 1) :] if len(idx) > max_frames - 1 else idx


def history_indices(t: int, cfg: MemoryConfig) -> list[int]:
    """History frame indices for frame ``t`` under the configured sampler."""
    if cfg.sampler == "long_short":
        return long_short_memory(t, cfg.M, cfg.d1, cfg.d2, cfg.max_frames)
    if cfg.sampler == "uniform":
        return uniform_memory(t, cfg.max_frames)
    if cfg.sampler == "exponential":
        return exponential_memory(t, cfg.max_frames)
    raise SacaError(f"unknown sampler '{cfg.sampler}'")

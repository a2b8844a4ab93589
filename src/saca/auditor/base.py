"""The perception-backend interface of the PGSA auditor.

A backend scores (frame, landmark) pairs. For each pair it returns the Eq. 1
components: the global cosine ``S_g``, the highest-confidence box ``b`` with its
confidence ``c``, the box-crop cosine ``S_b``, the box-prompted mask ``M`` with
its predicted IoU ``u``, and the masked-crop cosine ``S_m``. Combining them
(weights, module switches, ``tau_det``) is the auditor's job
(:func:`saca.auditor.scoring.soft_score`), so that one set of components serves
every Table 5 ablation.

Backends: ``oracle`` (the simulator's instance segmentation) and
``foundation`` (CLIP + GroundingDINO + SAM3/SAM from local directories).
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from saca import SacaError


@dataclass
class Frame:
    """One frame to audit: ``rgb`` (H, W, 3) uint8; for the oracle also ``instance`` (H, W) ids and ``labels``."""

    rgb: np.ndarray
    instance: Optional[np.ndarray] = None
    labels: Optional[Mapping[int, str]] = None
    _key: Optional[str] = None

    @property
    def key(self) -> str:
        """Content hash: identical frames (a revisited pose, a shared start) are scored once."""
        if self._key is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.rgb.shape).encode())
            h.update(np.ascontiguousarray(self.rgb).tobytes())
            if self.instance is not None:
                h.update(np.ascontiguousarray(self.instance).tobytes())
            if self.labels:
                h.update(repr(sorted(self.labels.items())).encode())
            self._key = h.hexdigest()
        return self._key

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def as_frame(obj: Any, index: int = 0, labels: Optional[Mapping[int, str]] = None) -> Frame:
    """A :class:`Frame` from a Frame, a simulator ``Observation`` or an RGB array; bad shapes raise SacaError.

    Accepted: an (H, W, 3) uint8 array (values 0-255). Anything else (a
    grayscale (H, W) array, RGBA, float images, an instance map of another
    size) is an error naming the frame index, not a guess.
    """
    if isinstance(obj, Frame):
        frame = obj
    elif hasattr(obj, "rgb"):
        frame = Frame(rgb=obj.rgb, instance=getattr(obj, "instance", None), labels=labels)
    else:
        frame = Frame(rgb=obj, labels=labels)
    rgb = frame.rgb
    if not isinstance(rgb, np.ndarray):
        raise SacaError(f"frame {index}: rgb must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise SacaError(f"frame {index}: rgb must have shape (H, W, 3), got {tuple(rgb.shape)}")
    if rgb.dtype != np.uint8:
        raise SacaError(f"frame {index}: rgb must be uint8 (0-255), got dtype {rgb.dtype}")
    if frame.instance is not None:
        inst = frame.instance
        if not isinstance(inst, np.ndarray) or inst.shape != rgb.shape[:2]:
            shape = getattr(inst, "shape", None)
            raise SacaError(f"frame {index}: instance map must have shape {rgb.shape[:2]}, got {shape}")
    return frame


@dataclass
class PairScore:
    """Eq. 1 components for one (frame, landmark) pair.

    ``box`` is ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive) or None when
    nothing was detected; ``mask`` an (H, W) bool array or None (computed only
    when ``c > tau_det`` and the mask module is on).
    """

    S_g: float = 0.0
    c: float = 0.0
    S_b: float = 0.0
    u: float = 0.0
    S_m: float = 0.0
    box: Optional[tuple[int, int, int, int]] = None
    mask: Optional[np.ndarray] = None

    def components(self) -> dict:
        return {"S_g": self.S_g, "c": self.c, "S_b": self.S_b, "u": self.u, "S_m": self.S_m,
                "box": list(self.box) if self.box is not None else None}


class PerceptionBackend(abc.ABC):
    """Scores (frame, landmark) pairs. One call may hold the frames of a whole rollout group."""

    name: str = "abstract"

    def __init__(self, prompt: str = "A photo of a {l}.", tau_det: float = 0.3,
                 modules: Sequence[str] = ("global", "box", "mask")):
        self.prompt = prompt
        self.tau_det = float(tau_det)
        self.modules = tuple(modules)
        self.calls = 0  # model calls made (one per score() call; for the cost report)
        self.pairs_scored = 0

    def text(self, landmark: str) -> str:
        return self.prompt.format(l=landmark)

    @property
    def needs_detection(self) -> bool:
        return "box" in self.modules or "mask" in self.modules

    @property
    def needs_mask(self) -> bool:
        return "mask" in self.modules

    def score(self, frames: Sequence[Frame], pairs: Sequence[tuple[int, str]]) -> list[PairScore]:
        """Components for each ``(frame index, landmark)`` pair, in order."""
        for i, l in pairs:
            if not 0 <= i < len(frames):
                raise SacaError(f"pair ({i}, {l!r}): frame index out of range 0..{len(frames) - 1}")
        if not pairs:
            return []
        self.calls += 1
        self.pairs_scored += len(pairs)
        return self._score(frames, pairs)

    @abc.abstractmethod
    def _score(self, frames: Sequence[Frame], pairs: Sequence[tuple[int, str]]) -> list[PairScore]:
        ...

    def close(self) -> None:
        """Release models."""


def make_backend(config, **kwargs) -> PerceptionBackend:
    """The backend named by ``config.backend`` (an :class:`saca.auditor.config.AuditorConfig`)."""
    common = dict(prompt=config.prompt, tau_det=config.tau_det, modules=config.modules)
    if config.backend == "oracle":
        from saca.auditor.oracle import OracleBackend

        return OracleBackend(config.oracle, **common, **kwargs)
    if config.backend == "foundation":
        from saca.auditor.foundation import FoundationBackend

        return FoundationBackend(config.foundation, **common, **kwargs)
    raise SacaError(f"auditor.backend: unknown backend '{config.backend}'; choose oracle or foundation")

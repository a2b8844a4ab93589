"""Oracle perception: the simulator's instance segmentation stands in for GroundingDINO + SAM + CLIP.

Used in the embedded mini world (where no foundation model has seen the
renders) and, in the paper setting, as the upper-bound ablation of perception.
For landmark ``l`` and a frame with instance map ``I`` and labels
``id -> name`` (``Simulator.instance_labels``):

* the instances *of* ``l`` are those whose label matches ``l``
  (:func:`saca.landmarks.phrase_matches`: same phrase up to case, articles and
  plurals, or one phrase's words contained in the other's with the same head
  noun: "cabinet" matches "red cabinet", "blue cabinet" does not);
* ``f_i``: fraction of the frame's pixels showing instance ``i``; ``f_l``: the
  fraction showing any instance of ``l``;
* detection: the box ``b`` is the bounding box of the largest visible instance
  ``i*``, its confidence the calibrated visibility ``c = 1 - exp(-f_i* / f0)``
  (``f0 = 0.01``: 1 % of the frame gives 0.63, 3 % gives 0.95; the detection
  threshold ``tau_det = 0.3`` is crossed at ``f = 0.36 f0``, about 59 pixels of
  a 128x128 frame);
* ``S_g = 1 - exp(-f_l / f0)``: the frame "looks like" ``l`` in proportion to
  how much of it ``l`` fills, saturating;
* ``S_b``: the box crop's purity, ``|M_i*| / |b|``, the share of the box that is
  the object (a crop with background is a worse match, as with CLIP);
* ``M``: the pixels of ``i*``, exact, so ``u`` is the configured ``oracle.u``
  (1.0) and ``S_m = 1`` (the masked crop shows the object alone).

So the step score is 0 when ``l`` is not in view, about 0.03 for a speck
below ``tau_det``, and 0.9-1.0 for a clearly visible landmark under the
paper's weights (see docs/auditor.md for the derivation).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from saca import SacaError
from saca.auditor.base import Frame, PairScore, PerceptionBackend
from saca.auditor.config import OracleConfig


class OracleBackend(PerceptionBackend):
    name = "oracle"

    def __init__(self, config: OracleConfig | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config or OracleConfig()

    def calibrate(self, fraction: float) -> float:
        """Visible-pixel fraction -> confidence in [0, 1): ``1 - exp(-f / f0)``."""
        return 1.0 - math.exp(-max(0.0, fraction) / self.config.f0)

    def _score(self, frames: Sequence[Frame], pairs: Sequence[tuple[int, str]]) -> list[PairScore]:
        from saca.landmarks import phrase_matches

        out = []
        stats_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, landmark in pairs:
            frame = frames[i]
            if frame.instance is None:
                raise SacaError(
                    f"frame {i}: the oracle backend needs the simulator's instance channel "
                    "(sim.instance: true) and its instance labels"
                )
            labels = frame.labels or {}
            if i not in stats_cache:
                ids, counts = np.unique(frame.instance, return_counts=True)
                stats_cache[i] = (ids, counts)
            ids, counts = stats_cache[i]
            H, W = frame.size
            total = float(H * W)
            mine = [(int(n), int(k)) for k, n in zip(ids, counts)
                    if int(k) >= 0 and int(k) in labels and phrase_matches(labels[int(k)], landmark)]
            if not mine:
                out.append(PairScore())
                continue
            f_l = sum(n for n, _ in mine) / total
            n_best, k_best = max(mine)
            pix = frame.instance == k_best
            ys, xs = np.nonzero(pix)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            area = (box[2] - box[0]) * (box[3] - box[1])
            c = self.calibrate(n_best / total)
            ps = PairScore(S_g=self.calibrate(f_l), c=c, S_b=n_best / area, box=box)
            if c > self.tau_det:
                ps.u = float(self.config.u)
                ps.S_m = 1.0
                ps.mask = pix
            out.append(ps)
        return out

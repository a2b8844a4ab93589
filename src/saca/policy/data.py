"""VLN-Ego samples as policy inputs: prompt (saca.prompt), frames (history then current), answer.

Shared by SFT and the offline VLN-R1 RFT stage. Several split directories (a
training *mix*, e.g. mini_r2r + mini_rxr) are concatenated in the given order.
Every sample's answer is checked when the data is opened: it must be exactly
``n_actions`` canonical option strings with the sample's turn angle (else a
SacaError names the sample). A sample whose frame shard is missing or
unreadable fails with an error naming the sample (VlnEgoDataset), never skipped.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from saca import SacaError
from saca.action_text import parse_actions
from saca.policy.generate import PolicyInput
from saca.prompt import build_prompt
from saca.vln_ego.store import VlnEgoDataset


class PolicyData:
    """Concatenation of VLN-Ego split directories, indexed ``0 .. len-1``."""

    def __init__(
        self,
        split_dirs: Sequence[str | os.PathLike],
        n_actions: int = 6,
        check_answers: bool = True,
        frame_cache: int = 0,
        trajectory_cache: int = 64,
    ):
        if not split_dirs:
            raise SacaError("no VLN-Ego split directory given")
        self.split_dirs = [Path(d) for d in split_dirs]
        self.n_actions = int(n_actions)
        self.parts = [VlnEgoDataset(d, cache_trajectories=trajectory_cache) for d in self.split_dirs]
        self.frame_cache = int(frame_cache)
        self._frames: OrderedDict = OrderedDict()
        self._index: list[tuple[int, int]] = [(p, i) for p, ds in enumerate(self.parts) for i in range(len(ds))]
        if not self._index:
            raise SacaError(f"{', '.join(map(str, self.split_dirs))}: no VLN-Ego samples")
        if check_answers:
            for p, ds in enumerate(self.parts):
                for s in ds:
                    self._check(s, self.split_dirs[p])

    def _check(self, s: dict, where: Path) -> None:
        parsed = parse_actions(s["answer"], self.n_actions, float(s["turn_angle"]))
        if parsed.status != "valid":
            raise SacaError(
                f"{where}: VLN-Ego sample {s['sample_id']}: answer {s['answer']!r} is not {self.n_actions} "
                f"option strings for turn angle {s['turn_angle']:g} ({parsed.reason})"
            )
        if int(s["step"]) < 0 or any(int(h) >= int(s["step"]) or int(h) < 0 for h in s["history"]):
            raise SacaError(f"{where}: VLN-Ego sample {s['sample_id']}: history {list(s['history'])} is not before step {s['step']}")

    def __len__(self) -> int:
        return len(self._index)

    def sample(self, i: int) -> dict:
        p, j = self._index[i]
        return self.parts[p][j]

    def source(self, i: int) -> str:
        return str(self.split_dirs[self._index[i][0]])

    def prompt(self, s: dict) -> str:
        return build_prompt(s["instruction"], len(s["history"]), float(s["turn_angle"]), self.n_actions)

    def policy_input(self, i: int) -> PolicyInput:
        p, j = self._index[i]
        s = self.parts[p][j]
        return PolicyInput(self.prompt(s), self.parts[p].images(s))

    def answer(self, i: int) -> str:
        return self.sample(i)["answer"]

    def encode(self, processor, i: int):
        """Tokens, labels and pixels of sample ``i`` for ``processor`` (a PolicyProcessor).

        With ``frame_cache > 0`` and a family whose images are processed one by one
        (Qwen2-VL), each frame's processed pixels are kept in an LRU cache of that many
        frames: a frame is decoded and resized once although ~M samples show it.
        """
        p, j = self._index[i]
        s = self.parts[p][j]
        if self.frame_cache <= 0 or not processor.per_image:
            return processor.encode(self.prompt(s), self.parts[p].images(s), answer=s["answer"])
        idx = [int(h) for h in s["history"]] + [int(s["step"])]
        keys = [(p, s["shard"], int(s["row_group"]), k) for k in idx]
        missing = [k for k, key in zip(idx, keys) if key not in self._frames]
        if missing:
            for k, img in zip(missing, self.parts[p].frames(s, missing)):
                self._frames[(p, s["shard"], int(s["row_group"]), k)] = processor.process_images([img])
        parts = []
        for key in keys:
            self._frames.move_to_end(key)
            parts.append(self._frames[key])
        while len(self._frames) > self.frame_cache:
            self._frames.popitem(last=False)
        return processor.encode(self.prompt(s), None, answer=s["answer"], processed=processor.join_images(parts))


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k <= 0`` or ``k >= n``)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]

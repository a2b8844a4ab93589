"""Episodes in the VLN-CE layout: ``{split}.json.gz`` and ``{split}_gt.json.gz``.

The same reader serves the embedded mini datasets and the real R2R-CE / RxR-CE
files (method-notes §1)::

    {"episodes": [{"episode_id", "trajectory_id", "scene_id", "start_position",
                   "start_rotation": [x, y, z, w], "goals": [{"position", "radius"}],
                   "reference_path", "instruction": {"instruction_text",
                   "instruction_tokens"}, "info": {...}}, ...],
     "instruction_vocab": {...}}
    {"<episode_id>": {"actions": [...], "locations": [...]}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from saca import SacaError
from saca.io import read_json, write_json

SPLITS = ("train", "val_seen", "val_unseen")

_VEC3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
EPISODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "episode_id",
        "trajectory_id",
        "scene_id",
        "start_position",
        "start_rotation",
        "goals",
        "reference_path",
        "instruction",
    ],
    "properties": {
        "episode_id": {"type": ["integer", "string"]},
        "trajectory_id": {"type": ["integer", "string"]},
        "scene_id": {"type": "string", "minLength": 1},
        "start_position": _VEC3,
        "start_rotation": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "goals": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["position"],
                "properties": {"position": _VEC3, "radius": {"type": ["number", "null"]}},
            },
        },
        "reference_path": {"type": "array", "minItems": 1, "items": _VEC3},
        "instruction": {
            "type": "object",
            "required": ["instruction_text"],
            "properties": {
                "instruction_text": {"type": "string", "minLength": 1},
                "instruction_tokens": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "info": {"type": "object"},
    },
}
DATASET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["episodes"],
    "properties": {
        "episodes": {"type": "array", "items": EPISODE_SCHEMA},
        "instruction_vocab": {"type": "object"},
    },
}
GT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["actions"],
        "properties": {
            "actions": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}},
            "locations": {"type": "array", "items": _VEC3},
        },
    },
}


@dataclass
class Episode:
    episode_id: int | str
    trajectory_id: int | str
    scene_id: str
    start_position: list[float]
    start_rotation: list[float]
    goals: list[dict]
    reference_path: list[list[float]]
    instruction_text: str
    instruction_tokens: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    gt_actions: list[int] | None = None
    gt_locations: list[list[float]] | None = None

    @property
    def goal_position(self) -> list[float]:
        return self.goals[0]["position"]

    @property
    def goal_radius(self) -> float:
        r = self.goals[0].get("radius")
        return 3.0 if r is None else float(r)

    @property
    def landmarks(self) -> list[str]:
        """Ground-truth landmark names (embedded datasets record them in ``info``)."""
        return list(self.info.get("landmarks", []))

    def to_json(self) -> dict:
        return {
            "episode_id": self.episode_id,
            "trajectory_id": self.trajectory_id,
            "scene_id": self.scene_id,
            "start_position": list(self.start_position),
            "start_rotation": list(self.start_rotation),
            "goals": self.goals,
            "reference_path": [list(p) for p in self.reference_path],
            "instruction": {
                "instruction_text": self.instruction_text,
                "instruction_tokens": list(self.instruction_tokens),
            },
            "info": self.info,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Episode":
        instr = d["instruction"]
        return cls(
            episode_id=d["episode_id"],
            trajectory_id=d["trajectory_id"],
            scene_id=d["scene_id"],
            start_position=[float(v) for v in d["start_position"]],
            start_rotation=[float(v) for v in d["start_rotation"]],
            goals=d["goals"],
            reference_path=[[float(v) for v in p] for p in d["reference_path"]],
            instruction_text=instr["instruction_text"],
            instruction_tokens=list(instr.get("instruction_tokens", [])),
            info=dict(d.get("info") or {}),
        )


def _validate(data: Any, schema: dict, path: Path) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise SacaError(f"{path}: invalid VLN-CE episode file at '{where}': {err.message}") from None


def episode_paths(episodes_dir: str | Path, split: str) -> tuple[Path, Path]:
    d = Path(episodes_dir)
    return d / f"{split}.json.gz", d / f"{split}_gt.json.gz"


def read_episodes(path: str | Path, gt_path: str | Path | None = None, validate: bool = True) -> list[Episode]:
    """Read a VLN-CE ``{split}.json.gz`` (and optionally its ``_gt`` file).

    Truncated or malformed files and schema violations raise SacaError naming
    the file and the offending field.
    """
    path = Path(path)
    data = read_json(path)
    if validate:
        _validate(data, DATASET_SCHEMA, path)
    episodes = [Episode.from_json(e) for e in data["episodes"]]
    seen = set()
    for e in episodes:
        if e.episode_id in seen:
            raise SacaError(f"{path}: duplicate episode_id {e.episode_id!r}")
        seen.add(e.episode_id)
    if gt_path is not None:
        gt_path = Path(gt_path)
        gt = read_json(gt_path)
        if validate:
            _validate(gt, GT_SCHEMA, gt_path)
        for e in episodes:
            rec = gt.get(str(e.episode_id))
            if rec is None:
                raise SacaError(f"{gt_path}: no ground truth for episode_id {e.episode_id!r}")
            e.gt_actions = [int(a) for a in rec["actions"]]
            e.gt_locations = rec.get("locations")
    return episodes


def load_split(episodes_dir: str | Path, split: str, with_gt: bool = True) -> list[Episode]:
    ep, gt = episode_paths(episodes_dir, split)
    return read_episodes(ep, gt if with_gt else None)


def build_vocab(episodes: list[Episode]) -> dict:
    """Word list in first-seen order; instruction_tokens index into it (VLN-CE ``instruction_vocab``)."""
    words: dict[str, int] = {"<PAD>": 0, "<UNK>": 1}
    for e in episodes:
        toks = []
        for w in tokenize(e.instruction_text):
            if w not in words:
                words[w] = len(words)
            toks.append(words[w])
        e.instruction_tokens = toks
    return {"word_list": list(words), "word2idx_dict": words, "num_vocab": len(words),
            "UNK_INDEX": 1, "PAD_INDEX": 0}


def tokenize(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def write_episodes(episodes_dir: str | Path, split: str, episodes: list[Episode]) -> tuple[Path, Path]:
    """Write ``{split}.json.gz`` and ``{split}_gt.json.gz`` atomically (validated first)."""
    ep_path, gt_path = episode_paths(episodes_dir, split)
    vocab = build_vocab(episodes)
    data = {"episodes": [e.to_json() for e in episodes], "instruction_vocab": vocab}
    gt = {str(e.episode_id): {"actions": e.gt_actions or [], "locations": e.gt_locations or []} for e in episodes}
    _validate(json.loads(json.dumps(data)), DATASET_SCHEMA, ep_path)
    _validate(json.loads(json.dumps(gt)), GT_SCHEMA, gt_path)
    write_json(ep_path, data, indent=None)
    write_json(gt_path, gt, indent=None)
    return ep_path, gt_path

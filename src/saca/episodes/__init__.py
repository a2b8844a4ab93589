"""Episodes in the VLN-CE layout: ``{split}.json.gz`` and ``{split}_gt.json.gz``.

The same reader serves the embedded mini datasets and the real R2R-CE / RxR-CE
files (method-notes §1; the real files are imported by :mod:`saca.episodes.vlnce`,
docs/vlnce.md)::

    {"episodes": [{"episode_id", "trajectory_id"?, "scene_id", "start_position",
                   "start_rotation": [x, y, z, w], "goals": [{"position", "radius"}],
                   "reference_path", "instruction": {"instruction_text",
                   "instruction_tokens", ...RxR: "instruction_id", "language",
                   "annotator_id", "edit_distance", "timed_instruction"},
                   "info": {...}}, ...],
     "instruction_vocab": {...}}
    {"<episode_id>": {"actions": [...], "locations": [...], "forward_steps": n}}

``trajectory_id`` is optional (RxR-CE follower episodes have none; VLN-CE's
``VLNExtendedEpisode`` defaults it to None). A *leaderboard split* (R2R-CE ``test``: no
``_gt`` file) may also leave out ``goals`` and ``reference_path``: its episodes are read
with :data:`LEADERBOARD_EPISODE_SCHEMA` and have empty ``goals`` / ``reference_path``; they
can be run (their trajectories written for the leaderboard) but not scored. Instruction fields other than the
text and tokens are kept verbatim in :attr:`Episode.instruction_meta`. A gt record
needs ``actions`` or ``locations``; ``forward_steps`` is kept as read. A split
without ground truth (a test split) has no ``_gt`` file.
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
        "scene_id",
        "start_position",
        "start_rotation",
        "goals",
        "reference_path",
        "instruction",
    ],
    "properties": {
        "episode_id": {"type": ["integer", "string"]},
        "trajectory_id": {"type": ["integer", "string", "null"]},
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
                "instruction_id": {"type": ["integer", "string"]},
                "language": {"type": "string", "minLength": 1},
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
# A split without ground truth (R2R-CE ``test``: 3,408 episodes without goals or reference path): the same
# schema with ``goals`` and ``reference_path`` optional (validated as above where present)
LEADERBOARD_EPISODE_SCHEMA: dict[str, Any] = {
    **EPISODE_SCHEMA,
    "required": [k for k in EPISODE_SCHEMA["required"] if k not in ("goals", "reference_path")],
}
LEADERBOARD_DATASET_SCHEMA: dict[str, Any] = {
    **DATASET_SCHEMA,
    "properties": {**DATASET_SCHEMA["properties"], "episodes": {"type": "array", "items": LEADERBOARD_EPISODE_SCHEMA}},
}
GT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "anyOf": [{"required": ["actions"]}, {"required": ["locations"]}],
        "properties": {
            "actions": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}},
            "locations": {"type": "array", "items": _VEC3},
            "forward_steps": {"type": "integer", "minimum": 0},
        },
    },
}


@dataclass
class Episode:
    episode_id: int | str
    trajectory_id: int | str | None
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
    # instruction fields besides text and tokens, verbatim (RxR: instruction_id, language, annotator_id,
    # edit_distance, timed_instruction); VLN-CE's gt ``forward_steps`` as read (None where the gt has none)
    instruction_meta: dict = field(default_factory=dict)
    gt_forward_steps: int | None = None

    @property
    def language(self) -> str | None:
        """The instruction's language (RxR: en-US, en-IN, hi-IN, te-IN); None where the file has none (R2R)."""
        return self.instruction_meta.get("language")

    @property
    def has_goal(self) -> bool:
        """False for an episode of a leaderboard split (no ``goals`` in the file)."""
        return bool(self.goals)

    def _goal(self) -> dict:
        if not self.goals:
            raise SacaError(f"episode {self.episode_id!r} has no goals (a leaderboard split, e.g. R2R-CE test): "
                            "it can be run for the leaderboard but not scored or taught here")
        return self.goals[0]

    @property
    def goal_position(self) -> list[float]:
        return self._goal()["position"]

    @property
    def goal_radius(self) -> float:
        r = self._goal().get("radius")
        return 3.0 if r is None else float(r)

    @property
    def landmarks(self) -> list[str]:
        """Ground-truth landmark names (embedded datasets record them in ``info``)."""
        return list(self.info.get("landmarks", []))

    def to_json(self) -> dict:
        d = {
            "episode_id": self.episode_id,
            "trajectory_id": self.trajectory_id,
            "scene_id": self.scene_id,
            "start_position": list(self.start_position),
            "start_rotation": list(self.start_rotation),
            "goals": self.goals,
            "reference_path": [list(p) for p in self.reference_path],
            "instruction": {
                **self.instruction_meta,
                "instruction_text": self.instruction_text,
                "instruction_tokens": list(self.instruction_tokens),
            },
            "info": self.info,
        }
        for key in ("goals", "reference_path"):  # a leaderboard episode has neither (as in its source file)
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Episode":
        instr = d["instruction"]
        return cls(
            episode_id=d["episode_id"],
            trajectory_id=d.get("trajectory_id"),
            scene_id=d["scene_id"],
            start_position=[float(v) for v in d["start_position"]],
            start_rotation=[float(v) for v in d["start_rotation"]],
            goals=list(d.get("goals") or []),
            reference_path=[[float(v) for v in p] for p in d.get("reference_path") or []],
            instruction_text=instr["instruction_text"],
            instruction_tokens=list(instr.get("instruction_tokens") or []),
            info=dict(d.get("info") or {}),
            instruction_meta={k: v for k, v in instr.items() if k not in ("instruction_text", "instruction_tokens")},
        )


def _validate(data: Any, schema: dict, path: Path) -> None:
    """Raise SacaError naming the first invalid field in file order (the first bad episode, not the
    'best match' over the whole file, which named the last of 3,408 bad episodes)."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    first = next(iter(validator.iter_errors(data)), None)
    if first is None:
        return
    err = jsonschema.exceptions.best_match([first])  # into an anyOf's context, within that one error
    where = "/".join(str(p) for p in err.absolute_path) or "<root>"
    raise SacaError(f"{path}: invalid VLN-CE episode file at '{where}': {err.message}")


def episode_paths(episodes_dir: str | Path, split: str) -> tuple[Path, Path]:
    d = Path(episodes_dir)
    return d / f"{split}.json.gz", d / f"{split}_gt.json.gz"


def read_episode_file(path: str | Path, validate: bool = True,
                      leaderboard: bool = False) -> tuple[list[Episode], dict]:
    """The episodes of a VLN-CE ``{split}.json.gz`` and the whole decoded file (for ``instruction_vocab``).

    ``leaderboard``: the file is a split without ground truth, whose episodes may lack
    ``goals`` and ``reference_path`` (:data:`LEADERBOARD_DATASET_SCHEMA`)."""
    path = Path(path)
    data = read_json(path)
    if validate:
        _validate(data, LEADERBOARD_DATASET_SCHEMA if leaderboard else DATASET_SCHEMA, path)
    episodes = [Episode.from_json(e) for e in data["episodes"]]
    seen = set()
    for e in episodes:
        if e.episode_id in seen:
            raise SacaError(f"{path}: duplicate episode_id {e.episode_id!r}")
        seen.add(e.episode_id)
    return episodes, data


def attach_gt(episodes: list[Episode], gt_path: str | Path, validate: bool = True) -> None:
    """Attach a VLN-CE ``_gt`` file's records (keyed by ``str(episode_id)``) to ``episodes``."""
    gt_path = Path(gt_path)
    gt = read_json(gt_path)
    if validate:
        _validate(gt, GT_SCHEMA, gt_path)
    for e in episodes:
        rec = gt.get(str(e.episode_id))
        if rec is None:
            raise SacaError(f"{gt_path}: no ground truth for episode_id {e.episode_id!r}")
        e.gt_actions = [int(a) for a in rec["actions"]] if "actions" in rec else None
        e.gt_locations = rec.get("locations")
        e.gt_forward_steps = rec.get("forward_steps")


def read_episodes(path: str | Path, gt_path: str | Path | None = None, validate: bool = True,
                  leaderboard: bool = False) -> list[Episode]:
    """Read a VLN-CE ``{split}.json.gz`` (and optionally its ``_gt`` file).

    Reads this project's files and R2R-CE's ``R2R_VLNCE_v1-3_preprocessed`` files
    alike. Truncated or malformed files and schema violations raise SacaError naming
    the file and the offending field. ``leaderboard``: see :func:`read_episode_file`.
    """
    if leaderboard and gt_path is not None:
        raise SacaError(f"{gt_path}: a leaderboard split has no ground truth to attach")
    episodes, _ = read_episode_file(path, validate, leaderboard)
    if gt_path is not None:
        attach_gt(episodes, gt_path, validate)
    return episodes


def load_split(episodes_dir: str | Path, split: str, with_gt: bool = True) -> list[Episode]:
    """One split in the project's layout. ``with_gt=False`` reads the episodes alone; a split that
    has no ``_gt`` file at all is a leaderboard split (its episodes may lack goals and reference path)."""
    ep, gt = episode_paths(episodes_dir, split)
    if with_gt and ep.exists() and not gt.exists():
        raise SacaError(f"{gt}: file does not exist (split '{split}' has no ground truth, e.g. a test split)")
    if with_gt:
        return read_episodes(ep, gt)
    return read_episodes(ep, leaderboard=not gt.exists())


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


def _gt_record(e: Episode) -> dict | None:
    if e.gt_actions is None and e.gt_locations is None:
        return None
    rec: dict = {}
    if e.gt_actions is not None:
        rec["actions"] = list(e.gt_actions)
    if e.gt_locations is not None:
        rec["locations"] = [list(p) for p in e.gt_locations]
    if e.gt_forward_steps is not None:
        rec["forward_steps"] = e.gt_forward_steps
    return rec


def write_episodes(episodes_dir: str | Path, split: str, episodes: list[Episode],
                   vocab: dict | None = None) -> tuple[Path, Path | None]:
    """Write ``{split}.json.gz`` and ``{split}_gt.json.gz`` atomically (validated first).

    ``vocab``: the source's ``instruction_vocab``, written as given with the episodes'
    ``instruction_tokens`` kept (R2R-CE); None builds this project's vocabulary and
    re-tokenises (the mini datasets, RxR-CE, whose files have none). Episodes without
    ground truth (a test split) write no ``_gt`` file (a stale one is removed) and
    return None for its path; a split where only some episodes have it is refused.
    """
    ep_path, gt_path = episode_paths(episodes_dir, split)
    records = {str(e.episode_id): _gt_record(e) for e in episodes}
    missing = [k for k, r in records.items() if r is None]
    if missing and len(missing) < len(records):
        raise SacaError(f"{gt_path}: {len(missing)} of {len(records)} episodes have no ground truth "
                        f"(e.g. episode_id {missing[0]}); a split has it for all episodes or none")
    if vocab is None:
        vocab = build_vocab(episodes)
    data = {"episodes": [e.to_json() for e in episodes], "instruction_vocab": vocab}
    gt = None if missing else records
    _validate(json.loads(json.dumps(data)), LEADERBOARD_DATASET_SCHEMA if gt is None else DATASET_SCHEMA, ep_path)
    if gt is not None:
        _validate(json.loads(json.dumps(gt)), GT_SCHEMA, gt_path)
        write_json(gt_path, gt, indent=None)
    else:
        gt_path.unlink(missing_ok=True)
    write_json(ep_path, data, indent=None)
    return ep_path, (gt_path if gt is not None else None)

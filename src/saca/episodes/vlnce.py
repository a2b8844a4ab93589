"""Readers for the real VLN-CE episode files: R2R-CE and RxR-CE (docs/vlnce.md).

Both are read through the project's own reader (:func:`saca.episodes.read_episode_file`,
:func:`saca.episodes.attach_gt`), so a real split is checked against the same schema
as the mini datasets, and :func:`import_split` writes it in the project's layout
(``{split}.json.gz`` + ``{split}_gt.json.gz``) that every rule reads with
:func:`saca.episodes.load_split`.

Source layouts (VLN-CE ``habitat_extensions/config/vlnce_task.yaml`` and
``rxr_vlnce_english_task.yaml``, ``DATA_PATH`` / ``NDTW.GT_PATH``)::

    r2r_ce: {src}/{split}/{split}.json.gz          {src}/{split}/{split}_gt.json.gz
    rxr_ce: {src}/{split}/{split}_{role}.json.gz   {src}/{split}/{split}_{role}_gt.json.gz

``src`` is the extracted ``R2R_VLNCE_v1-3_preprocessed`` or ``RxR_VLNCE_v0`` folder.
Test splits (R2R ``test``, RxR ``test_challenge``) come without ``_gt`` files: they are read as
leaderboard splits (R2R-CE's ``test`` episodes have no ``goals`` and no ``reference_path`` either).
"""

from __future__ import annotations

import re
from pathlib import Path

from saca import SacaError
from saca.episodes import Episode, attach_gt, read_episode_file, write_episodes

FORMATS = ("r2r_ce", "rxr_ce")
RXR_ROLES = ("guide", "follower")  # RxRVLNCEDatasetV1.annotation_roles
RXR_LANGUAGES = ("en-US", "en-IN", "hi-IN", "te-IN")  # RxRVLNCEDatasetV1.languages
PAPER_ROLES = ("guide",)  # rxr_vlnce_english_task.yaml: ROLES [guide], LANGUAGES [en-US, en-IN]
PAPER_LANGUAGES = ("en-US", "en-IN")
ALL = "*"
# VLN-CE strips this prefix from scene_id before joining SCENES_DIR (habitat_extensions/task.py)
SCENE_PREFIX = "data/scene_datasets/"


def source_paths(fmt: str, src: str | Path, split: str, role: str | None = None) -> tuple[Path, Path]:
    """The episode file and the gt file of one split (and RxR role) under ``src``."""
    d = Path(src) / split
    if fmt == "r2r_ce":
        return d / f"{split}.json.gz", d / f"{split}_gt.json.gz"
    if fmt == "rxr_ce":
        return d / f"{split}_{role}.json.gz", d / f"{split}_{role}_gt.json.gz"
    raise SacaError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")


def _check_options(fmt: str, roles, languages) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    if fmt not in FORMATS:
        raise SacaError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "r2r_ce":
        if roles:
            raise SacaError("--role: only rxr_ce has annotation roles (R2R-CE has one file per split)")
        if languages:
            raise SacaError("--languages: only rxr_ce is multilingual (R2R-CE is English only)")
        return (), None
    roles = tuple(roles or PAPER_ROLES)
    if ALL in roles:
        roles = RXR_ROLES
    bad = [r for r in roles if r not in RXR_ROLES]
    if bad or len(set(roles)) != len(roles):
        raise SacaError(f"--role {','.join(roles)}: each of {', '.join(RXR_ROLES)} (or '*') at most once")
    languages = tuple(languages or PAPER_LANGUAGES)
    if ALL in languages:
        return roles, None
    bad = [lang for lang in languages if lang not in RXR_LANGUAGES]
    if bad:
        raise SacaError(f"--languages {','.join(languages)}: unknown {', '.join(bad)} "
                        f"(RxR-CE has {', '.join(RXR_LANGUAGES)}, or '*' for all)")
    return roles, languages


def _strip_scene_prefix(episodes: list[Episode]) -> None:
    for e in episodes:
        if e.scene_id.startswith(SCENE_PREFIX):
            e.scene_id = e.scene_id[len(SCENE_PREFIX):]


def _check_vocab(path: Path, data: dict, episodes: list[Episode]) -> dict:
    """R2R-CE's ``instruction_vocab`` (VLNCEDatasetV1 reads its ``word_list``); every token must index it."""
    vocab = data.get("instruction_vocab")
    if not isinstance(vocab, dict) or not isinstance(vocab.get("word_list"), list):
        raise SacaError(f"{path}: field 'instruction_vocab.word_list' is missing or not a list "
                        "(an R2R-CE file carries the vocabulary its instruction_tokens index)")
    n = len(vocab["word_list"])
    for k, e in enumerate(episodes):
        bad = [t for t in e.instruction_tokens if not 0 <= t < n]
        if bad:
            raise SacaError(f"{path}: field 'episodes/{k}/instruction/instruction_tokens': token {bad[0]} "
                            f"is outside instruction_vocab.word_list ({n} words)")
    return vocab


def _gt_or_none(ep_path: Path, gt_path: Path, split: str) -> Path | None:
    """The split's ``_gt`` file, or None for a test split without one: a leaderboard split, whose
    episodes may also lack ``goals`` and ``reference_path`` (R2R-CE ``test`` has neither)."""
    if gt_path.exists():
        return gt_path
    if not ep_path.exists():
        return None  # read_episode_file names the missing episode file
    if split.startswith("test"):
        return None  # R2R 'test', RxR 'test_challenge': the ground truth is held by the challenge server
    raise SacaError(f"{gt_path}: file does not exist (the ground truth of {ep_path.name}; "
                    f"only test splits come without one)")


def _read(fmt: str, src: str | Path, split: str, roles=None, languages=None) -> tuple[list[Episode], dict | None]:
    roles, languages = _check_options(fmt, roles, languages)
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise SacaError(f"--split {split!r}: a split name (letters, digits, '_'), e.g. val_unseen")
    src = Path(src)
    if not src.is_dir():
        raise SacaError(f"--src {src}: directory does not exist")
    if fmt == "r2r_ce":
        ep_path, gt_path = source_paths(fmt, src, split)
        gt = _gt_or_none(ep_path, gt_path, split)
        episodes, data = read_episode_file(ep_path, leaderboard=gt is None)
        vocab = _check_vocab(ep_path, data, episodes)
        if gt is not None:
            attach_gt(episodes, gt)
        _strip_scene_prefix(episodes)
        return episodes, vocab

    episodes: list[Episode] = []
    origin: dict[str, Path] = {}
    with_gt = []
    for role in roles:
        ep_path, gt_path = source_paths(fmt, src, split, role)
        gt = _gt_or_none(ep_path, gt_path, split)
        eps, _ = read_episode_file(ep_path, leaderboard=gt is None)
        if languages is not None:
            for k, e in enumerate(eps):
                if not e.language:
                    raise SacaError(f"{ep_path}: field 'episodes/{k}/instruction/language' is missing "
                                    "(needed by the --languages filter)")
            eps = [e for e in eps if e.language in languages]
        with_gt.append(gt is not None)
        if gt is not None:
            attach_gt(eps, gt)  # after the filter: only the kept episodes need a record
        for e in eps:
            key = str(e.episode_id)
            if key in origin:
                raise SacaError(f"{ep_path}: episode_id {e.episode_id!r} is also in {origin[key]} "
                                "(roles are merged into one split; their ids must be distinct)")
            origin[key] = ep_path
            e.info.setdefault("role", role)
        episodes += eps
    if len(set(with_gt)) > 1:
        raise SacaError(f"{src / split}: some roles of split '{split}' have a _gt file and some do not")
    if not episodes:
        raise SacaError(f"{src / split}: no {'/'.join(roles)} episodes in languages {', '.join(languages or [])}")
    _strip_scene_prefix(episodes)
    return episodes, None


def read_split(fmt: str, src: str | Path, split: str, roles=None, languages=None) -> list[Episode]:
    """One split of a real VLN-CE dataset, ground truth attached (none for test splits).

    ``fmt``: ``r2r_ce`` | ``rxr_ce``. RxR-CE only: ``roles`` (default guide) and
    ``languages`` (default en-US, en-IN: the English guide instructions the papers use;
    ``'*'`` for all). Raises SacaError naming the file and field of any problem.
    """
    return _read(fmt, src, split, roles, languages)[0]


def import_split(fmt: str, src: str | Path, split: str, out: str | Path, roles=None,
                 languages=None) -> tuple[list[Episode], Path, Path | None]:
    """Read one split and write it to ``out`` in the project's layout (atomically, each file)."""
    episodes, vocab = _read(fmt, src, split, roles, languages)
    ep_path, gt_path = write_episodes(out, split, episodes, vocab=vocab)
    return episodes, ep_path, gt_path

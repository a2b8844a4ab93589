"""The real R2R-CE files (VLN-CE's ``R2R_VLNCE_v1-3_preprocessed``), read in place from ``../shared/data/vlnce/``.

Nothing is copied into the project: the files are read where they are (``SACA_SHARED_DATA`` names another
``shared/data`` folder) and every test skips, with the reason, where they are absent (CI).
What they are: ``../shared/data/README.md``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pytest

from saca import SacaError
from saca.episodes import episode_paths, load_split, read_episode_file
from saca.episodes.vlnce import import_split, read_split, source_paths
from saca.evaluate import runner as R
from saca.evaluate.agents import OracleAgent, RandomAgent
from saca.sim.base import Observation, SimConfig, Simulator

SHARED = Path(os.environ.get("SACA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
R2R = SHARED / "vlnce" / "R2R_VLNCE_v1-3_preprocessed"


def _need(split: str) -> Path:
    path = R2R / split / f"{split}.json.gz"
    if not path.exists():
        pytest.skip(f"{path} is not here (the real R2R-CE files live in ../shared/data, outside CI)")
    return path


def _raw(path: Path):
    return json.loads(gzip.decompress(path.read_bytes()))


@pytest.mark.slow  # a minute or more each on a loaded laptop; skipped where the files are absent
def test_val_unseen_imports_with_its_gt_and_round_trips(tmp_path):
    _need("val_unseen")
    eps, ep_path, gt_path = import_split("r2r_ce", R2R, "val_unseen", tmp_path)
    assert len(eps) == 1839 and len({e.scene_id for e in eps}) == 11
    assert all(e.has_goal and e.scene_id.startswith("mp3d/") for e in eps)
    # VLN-CE's gt: locations are the start plus one per forward step; every path ends with STOP
    assert all(len(e.gt_locations) == e.gt_forward_steps + 1 == e.gt_actions.count(1) + 1 for e in eps)
    assert all(e.gt_actions[-1] == 0 for e in eps)
    assert sum(len(e.gt_actions) for e in eps) == 105459
    again = load_split(tmp_path, "val_unseen")
    assert [e.to_json() for e in again] == [e.to_json() for e in eps]
    assert [(e.gt_actions, e.gt_locations, e.gt_forward_steps) for e in again] == [
        (e.gt_actions, e.gt_locations, e.gt_forward_steps) for e in eps]
    # the source's gt records come back as they were, keyed by the string episode id
    src_gt = _raw(source_paths("r2r_ce", R2R, "val_unseen")[1])
    assert _raw(gt_path) == src_gt
    assert _raw(ep_path)["instruction_vocab"] == _raw(source_paths("r2r_ce", R2R, "val_unseen")[0])["instruction_vocab"]


@pytest.mark.slow  # a minute or more each on a loaded laptop; skipped where the files are absent
def test_the_test_split_imports_as_a_leaderboard_split(tmp_path):
    path = _need("test")
    raw = _raw(path)["episodes"]
    assert {tuple(sorted(e)) for e in raw} == {("episode_id", "instruction", "scene_id", "start_position",
                                                "start_rotation", "trajectory_id")}
    eps, ep_path, gt_path = import_split("r2r_ce", R2R, "test", tmp_path)
    assert len(eps) == 3408 and gt_path is None and not episode_paths(tmp_path, "test")[1].exists()
    assert not any(e.has_goal or e.reference_path or e.gt_actions or e.gt_locations for e in eps)
    again = load_split(tmp_path, "test", with_gt=False)
    assert [e.to_json() for e in again] == [e.to_json() for e in eps]
    with pytest.raises(SacaError, match=r"test_gt\.json\.gz: file does not exist \(split 'test' has no ground truth"):
        load_split(tmp_path, "test")


def test_a_bad_episode_is_named_by_its_own_index():
    # read as a scored split (goals required), every one of the 3,408 test episodes is bad: the first is named
    path = _need("test")
    with pytest.raises(SacaError, match=r"test\.json\.gz: invalid VLN-CE episode file at 'episodes/0': "
                                        r"'goals' is a required property$"):
        read_episode_file(path)


@pytest.mark.slow  # a minute or more each on a loaded laptop; skipped where the files are absent
def test_train_reads(tmp_path):
    path = _need("train")
    eps, data = read_episode_file(path)
    assert len(eps) == 10819 and len({e.scene_id for e in eps}) == 61
    assert len(data["instruction_vocab"]["word_list"]) == 2504
    assert all(e.has_goal and e.reference_path for e in eps)
    # its _gt file is not here: the import says so, naming it, instead of writing a split without gt
    with pytest.raises(SacaError, match=r"train_gt\.json\.gz: file does not exist \(the ground truth of "
                                        r"train\.json\.gz; only test splits come without one\)"):
        read_split("r2r_ce", R2R, "train")


class _Floor(Simulator):
    """Any scene, an unbounded flat floor: enough to run real episodes' starts without their scenes."""

    backend = "test"

    def load_scene(self, scene_id):
        pass

    def render(self, position, heading):
        return Observation(rgb=__import__("numpy").zeros((16, 16, 3), "uint8"))

    def move_to(self, start, target):
        return tuple(float(v) for v in target)

    def snap_to_floor(self, position):
        return tuple(float(v) for v in position)

    def geodesic_distance(self, a, b):
        return math.dist(a, b)

    def shortest_path(self, a, b):
        return [tuple(a), tuple(b)]


def test_evaluating_the_test_split_writes_leaderboard_trajectories_and_scores_nothing(tmp_path):
    _need("test")
    eps = read_split("r2r_ce", R2R, "test")[:20]
    cfg = R.EvalConfig(batch_size=4, seed=3)
    make = lambda: _Floor(SimConfig(), 15)  # noqa: E731
    res = R.evaluate_split(eps, make, RandomAgent(seed=3), tmp_path / "out", cfg, "test", "random")
    assert res["metrics"] is None and not (tmp_path / "out" / R.METRICS).exists()
    pred = json.loads(Path(res["predictions"]).read_text())
    assert sorted(pred) == sorted(str(e.episode_id) for e in eps)  # keyed by the id as a string (JSON keys)
    for e in eps:
        steps = pred[str(e.episode_id)]
        assert steps[0]["position"] == pytest.approx(e.start_position) and not steps[0]["stop"]
        assert steps[0]["heading"] == pytest.approx(2 * math.atan2(e.start_rotation[1], e.start_rotation[3]))
        assert [s["stop"] for s in steps].count(True) <= 1 and (steps[-1]["stop"] or len(steps) == 501)
    # the oracle needs a goal: refused in one line, naming the first episode it meets
    with pytest.raises(SacaError, match=r"^episode \d+ has no goals \(a leaderboard split"):
        R.evaluate_split(eps, make, OracleAgent(), tmp_path / "oracle", cfg, "test", "oracle")

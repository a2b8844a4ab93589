"""Readers of the real R2R-CE / RxR-CE episode files (fixtures in tests/fixtures/vlnce, made by make_fixtures.py).

Import -> the project's layout -> load_split, exactly; gt keyed by string episode ids;
RxR roles and the language filter; test splits without gt; bad input named by file and field.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from saca import SacaError
from saca.cli import main
from saca.episodes import Episode, episode_paths, load_split, read_episodes, write_episodes
from saca.episodes.vlnce import import_split, read_split, source_paths

FIX = Path(__file__).resolve().parent / "fixtures" / "vlnce"
R2R = FIX / "R2R_VLNCE_v1-3_preprocessed"
RXR = FIX / "RxR_VLNCE_v0"


def _load(path: Path):
    return json.loads(gzip.decompress(path.read_bytes()))


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(obj, ensure_ascii=False).encode("utf-8")))


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# --- R2R-CE -----------------------------------------------------------------------------------------------------


def test_r2r_ce_split_reads_with_gt_keyed_by_string_ids():
    eps = read_split("r2r_ce", R2R, "val_unseen")
    gt = _load(R2R / "val_unseen" / "val_unseen_gt.json.gz")
    assert sorted(gt) == ["1", "13", "2"]  # string keys; the episodes' ids are integers
    assert [e.episode_id for e in eps] == [1, 2, 13]
    assert [e.trajectory_id for e in eps] == [4, 4, 7]
    e = eps[2]
    assert e.scene_id == "mp3d/QUCTc6BB5sX/QUCTc6BB5sX.glb"
    assert e.gt_actions == [2, 2, 2, 2, 1, 1, 1, 1, 0]
    assert e.gt_forward_steps == 4
    assert e.gt_locations == [[-4.5, 0.1723, 2.25], [-4.25, 0.1723, 2.25], [-4.0, 0.1723, 2.25],
                              [-3.75, 0.1723, 2.25], [-3.5, 0.1723, 2.25]]
    assert e.goal_radius == 3.0 and e.info == {"geodesic_distance": 1.0}
    assert e.instruction_text == "Turn left and stop."
    assert e.instruction_tokens[:5] == [10, 11, 6, 7, 12] and len(e.instruction_tokens) == 200
    assert e.language is None and e.instruction_meta == {}


def test_read_episodes_takes_an_r2r_ce_file_directly():
    ep, gt = source_paths("r2r_ce", R2R, "val_unseen")
    eps = read_episodes(ep, gt)
    assert [(e.episode_id, e.gt_forward_steps, len(e.gt_actions), len(e.gt_locations)) for e in eps] == [
        (1, 8, 12, 9), (2, 8, 12, 9), (13, 4, 9, 5)]


def test_r2r_ce_import_round_trips_through_load_split(tmp_path):
    out = tmp_path / "r2r_ce" / "episodes"
    eps, ep_path, gt_path = import_split("r2r_ce", R2R, "val_unseen", out)
    assert (ep_path, gt_path) == episode_paths(out, "val_unseen")
    again = load_split(out, "val_unseen")
    assert [e.to_json() for e in again] == [e.to_json() for e in eps]
    assert [(e.gt_actions, e.gt_locations, e.gt_forward_steps) for e in again] == [
        (e.gt_actions, e.gt_locations, e.gt_forward_steps) for e in eps]
    # the source's vocabulary and tokens are kept, not rebuilt
    src = _load(R2R / "val_unseen" / "val_unseen.json.gz")
    written = _load(ep_path)
    assert written["instruction_vocab"] == src["instruction_vocab"]
    assert [e["instruction"]["instruction_tokens"] for e in written["episodes"]] == [
        e["instruction"]["instruction_tokens"] for e in src["episodes"]]
    assert _load(gt_path)["13"] == {"actions": [2, 2, 2, 2, 1, 1, 1, 1, 0], "forward_steps": 4,
                                    "locations": [[-4.5, 0.1723, 2.25], [-4.25, 0.1723, 2.25], [-4.0, 0.1723, 2.25],
                                                  [-3.75, 0.1723, 2.25], [-3.5, 0.1723, 2.25]]}
    # a second import gives the same bytes
    first = (ep_path.read_bytes(), gt_path.read_bytes())
    import_split("r2r_ce", R2R, "val_unseen", out)
    assert (ep_path.read_bytes(), gt_path.read_bytes()) == first


def test_vlnce_scene_prefix_is_stripped(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen.json.gz"
    data = _load(path)
    data["episodes"][0]["scene_id"] = "data/scene_datasets/mp3d/zsNo4HB9uLZ/zsNo4HB9uLZ.glb"
    _dump(path, data)
    eps = read_split("r2r_ce", src, "val_unseen")
    assert {e.scene_id for e in eps[:2]} == {"mp3d/zsNo4HB9uLZ/zsNo4HB9uLZ.glb"}


def test_r2r_ce_token_outside_the_vocabulary_is_named(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen.json.gz"
    data = _load(path)
    data["episodes"][1]["instruction"]["instruction_tokens"][3] = 13
    _dump(path, data)
    with pytest.raises(SacaError, match=r"val_unseen\.json\.gz: field 'episodes/1/instruction/instruction_tokens': "
                                        r"token 13 is outside instruction_vocab\.word_list \(13 words\)"):
        read_split("r2r_ce", src, "val_unseen")
    del data["instruction_vocab"]
    _dump(path, data)
    with pytest.raises(SacaError, match=r"val_unseen\.json\.gz: field 'instruction_vocab\.word_list' is missing"):
        read_split("r2r_ce", src, "val_unseen")


# --- RxR-CE -----------------------------------------------------------------------------------------------------


def test_rxr_ce_defaults_to_english_guide_instructions():
    eps = read_split("rxr_ce", RXR, "val_unseen")
    assert [(e.episode_id, e.language) for e in eps] == [("1", "en-US"), ("3", "en-IN")]
    e = eps[1]
    assert e.trajectory_id == "1" and e.info == {"role": "guide"}
    assert e.instruction_meta["instruction_id"] == "2" and e.instruction_meta["annotator_id"] == "a2"
    assert e.instruction_meta["timed_instruction"][0] == {"word": "Turn", "start_time": 1.0, "end_time": 1.5}
    assert e.gt_forward_steps == 7 and len(e.gt_locations) == 8 and e.gt_actions[-1] == 0


def test_rxr_ce_language_filter():
    every = read_split("rxr_ce", RXR, "val_unseen", languages=["*"])
    assert [e.language for e in every] == ["en-US", "hi-IN", "en-IN", "te-IN"]
    hindi = read_split("rxr_ce", RXR, "val_unseen", languages=["hi-IN"])
    assert [e.episode_id for e in hindi] == ["2"]
    assert hindi[0].instruction_text.startswith("आप कांच के दरवाजे")
    with pytest.raises(SacaError, match=r"--languages en,fr-FR: unknown en, fr-FR"):
        read_split("rxr_ce", RXR, "val_unseen", languages=["en", "fr-FR"])


def test_rxr_ce_import_keeps_the_non_english_text_and_instruction_fields(tmp_path):
    out = tmp_path / "episodes"
    eps, ep_path, _ = import_split("rxr_ce", RXR, "val_unseen", out, languages=["*"])
    again = load_split(out, "val_unseen")
    assert [e.to_json() for e in again] == [e.to_json() for e in eps]
    assert again[3].instruction_text == "వెనుకకు తిరిగి వంటగది వరకు నేరుగా వెళ్ళండి."
    raw = _load(ep_path)["episodes"][3]["instruction"]
    src = _load(RXR / "val_unseen" / "val_unseen_guide.json.gz")["episodes"][3]["instruction"]
    assert {k: raw[k] for k in src} == src  # every source field kept verbatim
    assert raw["instruction_tokens"] and _load(ep_path)["instruction_vocab"]["num_vocab"] > 2  # project vocabulary
    assert [e.gt_forward_steps for e in again] == [11, 11, 7, 7]


def test_rxr_ce_roles_are_read_from_their_own_files():
    eps = read_split("rxr_ce", RXR, "val_unseen", roles=["guide", "follower"], languages=["*"])
    assert [(e.episode_id, e.info["role"]) for e in eps] == [
        ("1", "guide"), ("2", "guide"), ("3", "guide"), ("4", "guide"), ("60301", "follower"), ("60302", "follower")]
    follower = read_split("rxr_ce", RXR, "val_unseen", roles=["follower"])
    assert [e.episode_id for e in follower] == ["60301"]
    f = follower[0]
    assert f.trajectory_id is None  # follower episodes have no trajectory_id
    assert f.info["demonstration_id"] == "1" and f.info["metrics"]["ndtw"] == 0.98
    assert f.gt_actions == [3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0] and f.gt_forward_steps == 9
    with pytest.raises(SacaError, match=r"--role guide,teacher: each of guide, follower"):
        read_split("rxr_ce", RXR, "val_unseen", roles=["guide", "teacher"])


def test_rxr_ce_follower_round_trips_without_trajectory_id(tmp_path):
    eps, ep_path, _ = import_split("rxr_ce", RXR, "val_unseen", tmp_path, roles=["follower"], languages=["*"])
    assert all("trajectory_id" in e and e["trajectory_id"] is None for e in _load(ep_path)["episodes"])
    assert [e.to_json() for e in load_split(tmp_path, "val_unseen")] == [e.to_json() for e in eps]


def test_episode_ids_shared_by_two_roles_are_refused(tmp_path):
    src = _copy(RXR, tmp_path)
    path = src / "val_unseen" / "val_unseen_follower.json.gz"
    data = _load(path)
    data["episodes"][0]["episode_id"] = "1"
    _dump(path, data)
    gt_path = src / "val_unseen" / "val_unseen_follower_gt.json.gz"
    gt = _load(gt_path)
    gt["1"] = gt.pop("60301")
    _dump(gt_path, gt)
    with pytest.raises(SacaError, match=r"val_unseen_follower\.json\.gz: episode_id '1' is also in .*"
                                        r"val_unseen_guide\.json\.gz"):
        read_split("rxr_ce", src, "val_unseen", roles=["guide", "follower"])


def test_r2r_options_are_refused_for_r2r_ce():
    with pytest.raises(SacaError, match="--role: only rxr_ce"):
        read_split("r2r_ce", R2R, "val_unseen", roles=["guide"])
    with pytest.raises(SacaError, match="--languages: only rxr_ce"):
        read_split("r2r_ce", R2R, "val_unseen", languages=["en-US"])


# --- test splits and missing gt --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,src,split,ids", [("r2r_ce", R2R, "test", [101, 102]),
                                                ("rxr_ce", RXR, "test_challenge", ["900"])])
def test_test_split_has_no_gt(tmp_path, fmt, src, split, ids):
    out = tmp_path / "episodes"
    ep_stale, gt_stale = episode_paths(out, split)
    gt_stale.parent.mkdir(parents=True)
    gt_stale.write_bytes(gzip.compress(b"{}"))  # from an earlier import: must not pair with the new episodes
    eps, ep_path, gt_path = import_split(fmt, src, split, out)
    assert gt_path is None and not gt_stale.exists() and ep_path == ep_stale
    assert [e.episode_id for e in eps] == ids
    assert all(e.gt_actions is None and e.gt_locations is None and e.gt_forward_steps is None for e in eps)
    with pytest.raises(SacaError, match=rf"{split}_gt\.json\.gz: file does not exist \(split '{split}' has no "
                                        r"ground truth"):
        load_split(out, split)
    assert [e.to_json() for e in load_split(out, split, with_gt=False)] == [e.to_json() for e in eps]


def test_r2r_ce_test_split_is_a_leaderboard_split_without_goals(tmp_path):
    """As the real R2R-CE test file: no goals, no reference_path (and no gt); read, written and read back so."""
    eps = read_split("r2r_ce", R2R, "test")
    assert [(e.has_goal, e.goals, e.reference_path) for e in eps] == [(False, [], [])] * 2
    with pytest.raises(SacaError, match=r"episode 101 has no goals \(a leaderboard split"):
        eps[0].goal_position
    _, ep_path, gt_path = import_split("r2r_ce", R2R, "test", tmp_path)
    assert gt_path is None
    written = _load(ep_path)["episodes"]
    assert [sorted(e) for e in written] == [["episode_id", "info", "instruction", "scene_id", "start_position",
                                             "start_rotation", "trajectory_id"]] * 2
    assert [e.to_json() for e in load_split(tmp_path, "test", with_gt=False)] == [e.to_json() for e in eps]
    # a split with its _gt file is not a leaderboard split: there, goals stay required
    with pytest.raises(SacaError, match=r"test\.json\.gz: invalid VLN-CE episode file at 'episodes/0': "
                                        r"'goals' is a required property"):
        read_episodes(ep_path)


def test_a_bad_episode_is_named_by_its_own_index(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen.json.gz"
    data = _load(path)
    del data["episodes"][1]["goals"]  # episodes 1 and 2 are bad alike; the first is named (jsonschema's
    del data["episodes"][2]["goals"]  # best_match named the last: 'episodes/3407' of the real test split)
    _dump(path, data)
    with pytest.raises(SacaError, match=r"invalid VLN-CE episode file at 'episodes/1': 'goals' is a required property"):
        read_split("r2r_ce", src, "val_unseen")


def test_missing_gt_of_a_validation_split_is_named(tmp_path):
    src = _copy(RXR, tmp_path)
    (src / "val_unseen" / "val_unseen_guide_gt.json.gz").unlink()
    with pytest.raises(SacaError, match=r"val_unseen_guide_gt\.json\.gz: file does not exist \(the ground truth of "
                                        r"val_unseen_guide\.json\.gz; only test splits come without one\)"):
        read_split("rxr_ce", src, "val_unseen")


def test_gt_without_a_record_for_an_episode_is_named(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen_gt.json.gz"
    gt = _load(path)
    del gt["13"]
    _dump(path, gt)
    with pytest.raises(SacaError, match=r"val_unseen_gt\.json\.gz: no ground truth for episode_id 13"):
        read_split("r2r_ce", src, "val_unseen")


def test_filtered_out_episodes_need_no_gt_record(tmp_path):
    src = _copy(RXR, tmp_path)
    path = src / "val_unseen" / "val_unseen_guide_gt.json.gz"
    gt = _load(path)
    del gt["2"], gt["4"]  # the Hindi and Telugu episodes
    _dump(path, gt)
    assert [e.episode_id for e in read_split("rxr_ce", src, "val_unseen")] == ["1", "3"]
    with pytest.raises(SacaError, match=r"val_unseen_guide_gt\.json\.gz: no ground truth for episode_id '2'"):
        read_split("rxr_ce", src, "val_unseen", languages=["*"])


# --- malformed fields -------------------------------------------------------------------------------------------


def test_malformed_episode_field_names_file_and_field(tmp_path):
    src = _copy(RXR, tmp_path)
    path = src / "val_unseen" / "val_unseen_guide.json.gz"
    data = _load(path)
    data["episodes"][2]["start_position"] = [1.0, 2.0]
    _dump(path, data)
    with pytest.raises(SacaError, match=r"val_unseen_guide\.json\.gz: invalid VLN-CE episode file at "
                                        r"'episodes/2/start_position'"):
        read_split("rxr_ce", src, "val_unseen")


def test_missing_language_names_the_field(tmp_path):
    src = _copy(RXR, tmp_path)
    path = src / "val_unseen" / "val_unseen_guide.json.gz"
    data = _load(path)
    del data["episodes"][1]["instruction"]["language"]
    _dump(path, data)
    with pytest.raises(SacaError, match=r"val_unseen_guide\.json\.gz: field 'episodes/1/instruction/language' is "
                                        r"missing"):
        read_split("rxr_ce", src, "val_unseen")


def test_malformed_gt_field_names_file_and_key(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen_gt.json.gz"
    gt = _load(path)
    gt["2"]["actions"][3] = 7
    _dump(path, gt)
    with pytest.raises(SacaError, match=r"val_unseen_gt\.json\.gz: invalid VLN-CE episode file at '2/actions/3'"):
        read_split("r2r_ce", src, "val_unseen")
    gt["2"]["actions"][3] = 1
    gt["2"]["forward_steps"] = "eight"
    _dump(path, gt)
    with pytest.raises(SacaError, match=r"val_unseen_gt\.json\.gz: invalid VLN-CE episode file at '2/forward_steps'"):
        read_split("r2r_ce", src, "val_unseen")


def test_gt_with_locations_but_no_actions_is_read(tmp_path):
    src = _copy(R2R, tmp_path)
    path = src / "val_unseen" / "val_unseen_gt.json.gz"
    gt = _load(path)
    for rec in gt.values():
        del rec["actions"]
    _dump(path, gt)
    eps = read_split("r2r_ce", src, "val_unseen")
    assert [(e.gt_actions, len(e.gt_locations), e.gt_forward_steps) for e in eps] == [(None, 9, 8), (None, 9, 8),
                                                                                       (None, 5, 4)]
    gt["1"] = {"forward_steps": 3}
    _dump(path, gt)
    with pytest.raises(SacaError, match=r"val_unseen_gt\.json\.gz: invalid VLN-CE episode file at '1'"):
        read_split("r2r_ce", src, "val_unseen")


def test_a_split_with_gt_for_some_episodes_only_is_not_written(tmp_path):
    eps = read_split("r2r_ce", R2R, "val_unseen")
    eps[1].gt_actions = eps[1].gt_locations = None
    with pytest.raises(SacaError, match=r"val_unseen_gt\.json\.gz: 1 of 3 episodes have no ground truth "
                                        r"\(e\.g\. episode_id 2\)"):
        write_episodes(tmp_path, "val_unseen", eps)
    assert not any(tmp_path.iterdir())


def test_bad_split_name_and_missing_source_are_named(tmp_path):
    with pytest.raises(SacaError, match=r"--split '\.\./val_unseen'"):
        read_split("r2r_ce", R2R, "../val_unseen")
    with pytest.raises(SacaError, match=rf"--src {tmp_path / 'nope'}: directory does not exist"):
        read_split("r2r_ce", tmp_path / "nope", "val_unseen")
    with pytest.raises(SacaError, match=r"val_seen\.json\.gz: file does not exist"):
        read_split("r2r_ce", R2R, "val_seen")


# --- the command ------------------------------------------------------------------------------------------------


def test_cli_episodes_import(tmp_path, capsys):
    out = tmp_path / "results" / "rxr_ce" / "episodes"
    rc = main(["episodes-import", "--format", "rxr_ce", "--src", str(RXR), "--split", "val_unseen", "--out", str(out),
               "--role", "guide", "--languages", "en-US,en-IN"])
    assert rc == 0
    assert f"wrote 2 episodes to {out / 'val_unseen.json.gz'} and {out / 'val_unseen_gt.json.gz'}" in capsys.readouterr().out
    assert [e.episode_id for e in load_split(out, "val_unseen")] == ["1", "3"]
    rc = main(["episodes-import", "--format", "r2r_ce", "--src", str(R2R), "--split", "test", "--out", str(out)])
    assert rc == 0 and "wrote 2 episodes" in capsys.readouterr().out
    rc = main(["episodes-import", "--format", "r2r_ce", "--src", str(R2R), "--split", "val_unseen", "--out", str(out),
               "--languages", "en-US"])
    assert rc == 2
    assert "saca episodes-import: error: --languages: only rxr_ce is multilingual" in capsys.readouterr().err


def test_mini_world_files_still_round_trip(mini_world, tmp_path):
    """The relaxed schema keeps the mini files as they were: no new keys, gt as before."""
    d = mini_world["root"] / "mini_rxr" / "episodes"
    eps = load_split(d, "val_seen")
    assert all(isinstance(e, Episode) and e.instruction_meta == {} and e.gt_forward_steps is None for e in eps)
    write_episodes(tmp_path, "val_seen", eps)
    for a, b in zip(episode_paths(d, "val_seen"), episode_paths(tmp_path, "val_seen")):
        assert a.read_bytes() == b.read_bytes()

"""Episode files: VLN-CE schema, round trip, bad input."""

from __future__ import annotations

import gzip
import json

import jsonschema
import pytest

from saca import SacaError
from saca.episodes import DATASET_SCHEMA, GT_SCHEMA, episode_paths, load_split, read_episodes, tokenize, write_episodes
from saca.sim.base import Action


@pytest.mark.parametrize("dataset", ["mini_r2r", "mini_rxr"])
@pytest.mark.parametrize("split", ["train", "val_seen", "val_unseen"])
def test_episode_files_validate_against_vlnce_schema(mini_world, dataset, split):
    ep_path, gt_path = episode_paths(mini_world["root"] / dataset / "episodes", split)
    data = json.loads(gzip.decompress(ep_path.read_bytes()))
    gt = json.loads(gzip.decompress(gt_path.read_bytes()))
    jsonschema.validate(data, DATASET_SCHEMA)
    jsonschema.validate(gt, GT_SCHEMA)
    assert set(data) == {"episodes", "instruction_vocab"}
    for e in data["episodes"]:
        assert e["goals"][0]["radius"] == 3.0
        assert len(e["start_rotation"]) == 4
        words = data["instruction_vocab"]["word_list"]
        assert [words[t] for t in e["instruction"]["instruction_tokens"]] == tokenize(e["instruction"]["instruction_text"])
        rec = gt[str(e["episode_id"])]
        assert rec["actions"][-1] == Action.STOP and Action.STOP not in rec["actions"][:-1]
        assert len(rec["locations"]) == len(rec["actions"])


def test_unseen_scenes_are_disjoint_from_train(mini_world):
    for dataset in ("mini_r2r", "mini_rxr"):
        d = mini_world["root"] / dataset / "episodes"
        train = {e.scene_id for e in load_split(d, "train")} | {e.scene_id for e in load_split(d, "val_seen")}
        unseen = {e.scene_id for e in load_split(d, "val_unseen")}
        assert unseen and train and not (train & unseen)


def test_instructions_name_the_landmarks_in_order(mini_world):
    for dataset in ("mini_r2r", "mini_rxr"):
        for e in load_split(mini_world["root"] / dataset / "episodes", "train"):
            text = e.instruction_text
            pos = [text.find(name) for name in e.landmarks]
            assert all(p >= 0 for p in pos), (text, e.landmarks)
            assert pos == sorted(pos)
            assert 1 <= len(e.landmarks) <= 4


def test_round_trip(mini_world, tmp_path):
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")
    write_episodes(tmp_path, "train", eps)
    again = load_split(tmp_path, "train")
    assert [e.to_json() for e in again] == [e.to_json() for e in eps]
    assert [e.gt_actions for e in again] == [e.gt_actions for e in eps]


def test_truncated_file_names_the_file(mini_world, tmp_path):
    src, _ = episode_paths(mini_world["root"] / "mini_r2r" / "episodes", "train")
    bad = tmp_path / "train.json.gz"
    bad.write_bytes(src.read_bytes()[:200])
    with pytest.raises(SacaError, match=r"train\.json\.gz: truncated or corrupt"):
        read_episodes(bad)


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "val_unseen.json.gz"
    bad.write_bytes(gzip.compress(b'{"episodes": [}'))
    with pytest.raises(SacaError, match=r"val_unseen\.json\.gz: malformed JSON"):
        read_episodes(bad)


def test_missing_field_names_the_field(mini_world, tmp_path):
    src, _ = episode_paths(mini_world["root"] / "mini_r2r" / "episodes", "train")
    data = json.loads(gzip.decompress(src.read_bytes()))
    del data["episodes"][1]["goals"]
    bad = tmp_path / "train.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(SacaError, match=r"train\.json\.gz: invalid VLN-CE episode file at 'episodes/1'.*'goals'"):
        read_episodes(bad)


def test_wrong_type_names_the_path(mini_world, tmp_path):
    src, _ = episode_paths(mini_world["root"] / "mini_r2r" / "episodes", "train")
    data = json.loads(gzip.decompress(src.read_bytes()))
    data["episodes"][0]["start_position"] = [1.0, 2.0]
    bad = tmp_path / "train.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(SacaError, match="episodes/0/start_position"):
        read_episodes(bad)


def test_gt_missing_an_episode_names_it(mini_world, tmp_path):
    src, gt = episode_paths(mini_world["root"] / "mini_r2r" / "episodes", "train")
    data = json.loads(gzip.decompress(gt.read_bytes()))
    data.pop("0")
    bad = tmp_path / "train_gt.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(SacaError, match=r"train_gt\.json\.gz: no ground truth for episode_id 0"):
        read_episodes(src, bad)


@pytest.mark.parametrize("dataset,turn_angle", [("mini_r2r", 15), ("mini_rxr", 30)])
def test_expert_sees_every_landmark_it_is_told_about(mini_world, dataset, turn_angle):
    """The expert turns to each landmark at its approach point, and ends facing the last one."""
    import numpy as np

    from saca.sim import make_simulator

    sim = make_simulator("embedded", mini_world["sim"], turn_angle, mini_world["scenes"])
    for e in load_split(mini_world["root"] / dataset / "episodes", "val_unseen"):
        sim.reset(e)
        seen = {i: 0 for i in e.info["landmark_instances"]}
        for a in e.gt_actions:
            inst = sim.observe().instance
            for i in seen:
                seen[i] = max(seen[i], int(np.count_nonzero(inst == i)))
            if a != Action.STOP:
                sim.step(a)
        last = sim.observe().instance
        assert all(n >= 20 for n in seen.values()), (e.episode_id, seen)
        assert np.count_nonzero(last == e.info["landmark_instances"][-1]) >= 20
    sim.close()


def test_path_length_bounds_the_route_and_is_checked(mini_world):
    """``datasets.*.path_length`` replaces the style's route-length limits (a world-difficulty lever, issue 12)."""
    from saca.episodes.generate import PATH_LIMITS, DatasetConfig, generate_split
    from saca.sim import make_simulator

    cfg = DatasetConfig(turn_angle=15, style="r2r", landmarks=[1, 1], seed=5, path_length=[4.0, 6.0],
                        episodes={"train": 4})
    cfg.validate("datasets.mini_r2r")
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    eps = generate_split("mini_r2r", cfg, "train", mini_world["index"]["train"], sim)
    sim.close()
    assert len(eps) == 4 and all(4.0 <= e.info["path_length"] <= 6.0 for e in eps)
    assert PATH_LIMITS["r2r"] == (3.0, 16.0)  # the default when path_length is not set
    for bad in ([2.0, 6.0], [8.0, 6.0], [5.0]):
        with pytest.raises(SacaError, match=r"datasets\.mini_r2r\.path_length"):
            DatasetConfig(path_length=bad).validate("datasets.mini_r2r")


def test_max_detour_keeps_every_leg_nearly_straight(mini_world):
    """``datasets.*.max_detour``: each leg's geodesic length is at most that multiple of its straight line."""
    import math

    from saca.episodes.generate import DatasetConfig, generate_split
    from saca.sim import make_simulator

    cfg = DatasetConfig(turn_angle=30, style="rxr", landmarks=[2, 2], seed=3, max_detour=1.1, episodes={"train": 3})
    sim = make_simulator("embedded", mini_world["sim"], 30, mini_world["scenes"])
    eps = generate_split("mini_rxr", cfg, "train", mini_world["index"]["train"], sim)
    for e in eps:
        sim.reset(e)
        legs = [tuple(e.start_position)] + [tuple(w) for w in e.info["waypoints"]]
        for a, b in zip(legs, legs[1:]):
            assert sim.geodesic_distance(a, b) <= 1.1 * math.hypot(b[0] - a[0], b[2] - a[2]) + 1e-9
    sim.close()
    with pytest.raises(SacaError, match=r"datasets\.mini_rxr\.max_detour"):
        DatasetConfig(max_detour=0.9).validate("datasets.mini_rxr")


def test_longest_unseen_run_on_scripted_frames():
    """The landmark-visibility check (issue 29) counts steps seeing neither the leg's landmark nor the last one."""
    import numpy as np

    from saca.episodes.generate import longest_unseen_run
    from saca.sim.base import SimConfig

    # 10 x 10 frames; per step the instance ids covering 5 pixels each (fraction 0.05)
    script = [[7], [7], [], [], [8], [], [], [], [9], [9]]
    targets = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # instances[0] = 7, [1] = 8, [2] = 9

    class Scripted:
        def __init__(self):
            self.config = SimConfig(width=10, height=10, instance=False)
            self.t = 0

        def reset(self, episode):
            self.t = 0

        def observe(self):
            assert self.config.instance  # the check renders the instance channel
            inst = np.full((10, 10), -1, np.int32)
            for k, i in enumerate(script[self.t]):
                inst[k, :5] = i
            from types import SimpleNamespace
            return SimpleNamespace(instance=inst)

        def step(self, a):
            self.t += 1

    sim = Scripted()
    # step 2 (target 0): unseen; 3 (target 1, last 0): unseen; 4 sees 8; 5 (1/0), 6 (2/1), 7 (2/1): unseen; 8 sees 9
    assert longest_unseen_run(sim, None, [1] * 10, targets, [7, 8, 9], 0.05) == 3
    assert sim.config.instance is False  # set back
    assert longest_unseen_run(sim, None, [1] * 10, targets, [7, 8, 9], 0.06) == 10  # 5 pixels < 6 % of 100
    assert longest_unseen_run(sim, None, [1] * 10, targets, [7, 8, 9], 0.06, limit=4) == 5  # stops early
    from saca.episodes.generate import DatasetConfig

    with pytest.raises(SacaError, match=r"datasets\.mini_rxr\.max_unseen_steps"):
        DatasetConfig(max_unseen_steps=-1).validate("datasets.mini_rxr")
    with pytest.raises(SacaError, match=r"datasets\.mini_rxr\.visible_fraction"):
        DatasetConfig(visible_fraction=0).validate("datasets.mini_rxr")


def test_max_unseen_steps_keeps_landmarks_in_view(mini_world):
    """``datasets.*.max_unseen_steps``: along the generated expert routes no leg's landmark is out of view longer."""
    from saca.episodes.generate import DatasetConfig, expert_actions, generate_split, longest_unseen_run
    from saca.sim import make_simulator

    cfg = DatasetConfig(turn_angle=30, style="rxr", landmarks=[2, 2], seed=3, max_detour=1.1, max_unseen_steps=4,
                        episodes={"train": 2})
    sim = make_simulator("embedded", mini_world["sim"], 30, mini_world["scenes"])
    eps = generate_split("mini_rxr", cfg, "train", mini_world["index"]["train"], sim)
    assert len(eps) == 2
    for e in eps:
        sim.reset(e)
        objs = {o["instance_id"]: o for o in sim.scene["objects"]}
        face = [objs[i]["position"] for i in e.info["landmark_instances"]]
        targets: list[int] = []
        actions, _ = expert_actions(sim, e.info["waypoints"], sim.config.max_steps - 1, face=face, targets=targets)
        assert actions == e.gt_actions and len(targets) == len(actions)
        assert longest_unseen_run(sim, e, actions, targets, e.info["landmark_instances"], 0.004) <= 4
    sim.close()


def test_held_out_houses_start_where_pinned():
    from saca.sim.embedded.world import SceneGenConfig

    assert SceneGenConfig(train=3, val_unseen=2).scene_ids() == {
        "train": ["house_000", "house_001", "house_002"], "val_unseen": ["house_003", "house_004"]}
    # pinned at 2: the held-out houses stay house_002-003 while train grows; the extra train houses follow them
    assert SceneGenConfig(train=2, val_unseen=2, val_unseen_start=2).scene_ids() == {
        "train": ["house_000", "house_001"], "val_unseen": ["house_002", "house_003"]}
    assert SceneGenConfig(train=4, val_unseen=2, val_unseen_start=2).scene_ids() == {
        "train": ["house_000", "house_001", "house_004", "house_005"], "val_unseen": ["house_002", "house_003"]}
    with pytest.raises(SacaError, match=r"scenes\.val_unseen_start: .* 0 to train \(2\), got 3"):
        SceneGenConfig(train=2, val_unseen=1, val_unseen_start=3).validate("scenes")


def test_more_train_houses_leave_the_val_unseen_episodes_unchanged(tmp_path, scene_builder):
    """Twice the train houses with the held-out house pinned: the same val_unseen episodes, new train ones."""
    from saca.episodes.generate import DatasetConfig, generate_split
    from saca.sim import make_simulator
    from saca.sim.base import SimConfig
    from saca.sim.embedded.world import SceneGenConfig

    cfg = DatasetConfig(turn_angle=30, style="rxr", landmarks=[1, 2], seed=3, episodes={"train": 4, "val_unseen": 3})
    small = dict(rooms=[2, 3], room_size=[3.0, 4.0])
    out = {}
    for name, scenes in (("base", SceneGenConfig(train=2, val_unseen=1, **small)),
                         ("more", SceneGenConfig(train=4, val_unseen=1, val_unseen_start=2, **small))):
        index = scene_builder(tmp_path / name, scenes)
        sim = make_simulator("embedded", SimConfig(width=64, height=64), cfg.turn_angle, tmp_path / name)
        out[name] = {split: [e.to_json() for e in generate_split("d", cfg, split, index[
            "val_unseen" if split == "val_unseen" else "train"], sim)] for split in ("train", "val_unseen")}
        sim.close()
        out[name]["index"] = index
    assert out["base"]["index"]["val_unseen"] == out["more"]["index"]["val_unseen"] == ["house_002"]
    assert out["more"]["index"]["train"] == ["house_000", "house_001", "house_003", "house_004"]
    assert out["base"]["val_unseen"] == out["more"]["val_unseen"]
    assert {e["scene_id"] for e in out["more"]["train"]} - {e["scene_id"] for e in out["base"]["train"]}


def test_episode_generation_builds_each_houses_navigation_grid_once(tmp_path, scene_builder):
    """Episode generation visits the houses in turn, one attempt each: with more houses than the scene cache
    held, every attempt rebuilt a navigation grid (80 % of the time with 24 train houses)."""
    from saca.sim import make_simulator
    from saca.sim.base import SimConfig
    from saca.sim.embedded import sim as embedded
    from saca.sim.embedded.world import SceneGenConfig

    index = scene_builder(tmp_path, SceneGenConfig(train=20, val_unseen=1, rooms=[1, 2], room_size=[3.0, 3.5]))
    sim = make_simulator("embedded", SimConfig(width=32, height=32), 30, tmp_path)
    embedded._load_scene.cache_clear()
    for _ in range(2):
        for house in index["train"]:
            sim.load_scene(house)
            assert sim.scene["scene_id"] == house
    sim.close()
    assert embedded._load_scene.cache_info().misses == 20

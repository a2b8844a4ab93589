"""VLN-Ego: memory samplers, targets, storage, determinism, export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from saca import SacaError
from saca.action_text import format_actions, option_menu, target_actions
from saca.episodes import load_split
from saca.sim import make_simulator
from saca.vln_ego.generate import VlnEgoConfig, generate_vln_ego, replay_frames
from saca.vln_ego.samplers import MemoryConfig, exponential_memory, history_indices, long_short_memory, uniform_memory
from saca.vln_ego.sharegpt import export_sharegpt
from saca.vln_ego.store import VlnEgoDataset

# --- memory samplers (VLN-R1 Eq. 6 and Table 3b), worked by hand ----------------


def test_long_short_first_frames():
    assert long_short_memory(0) == []
    assert long_short_memory(1) == [0]
    assert long_short_memory(5) == [0, 1, 2, 3, 4]  # all inside the short window (t-M = -3)


def test_long_short_short_window_plus_long_term():
    # t=12, M=8, d1=1: short = 11..4; long starts at t-M-d2 = 0 -> only frame 0
    assert long_short_memory(12) == [0, 4, 5, 6, 7, 8, 9, 10, 11]
    # t=20: short 19..12; long = 8, 4, 0
    assert long_short_memory(20) == [0, 4, 8, 12, 13, 14, 15, 16, 17, 18, 19]


def test_long_short_d1_two():
    # t=20, M=8, d1=2: short = 19, 17, 15, 13 (>= 12); long = 8, 4 (+0)
    assert long_short_memory(20, M=8, d1=2, d2=4) == [0, 4, 8, 13, 15, 17, 19]


def test_long_short_thins_long_term_uniformly():
    # t=100: short = 92..99 (8), long = 88, 84, ..., 4 (22 frames) + frame 0;
    # budget 15 -> keep 15 - 8 - 1 = 6 of the 22 long ones at positions floor((2i+1)*22/12) = 1, 5, 9, 12, 16, 20
    # of [4, 8, ..., 88] -> 8, 24, 40, 52, 68, 84
    assert long_short_memory(100) == [0, 8, 24, 40, 52, 68, 84, 92, 93, 94, 95, 96, 97, 98, 99]
    assert len(long_short_memory(100)) == 15


def test_long_short_tight_budget_keeps_recent_short_and_frame_zero():
    # max_frames=4 -> 3 history slots: frame 0 + the 2 most recent short frames
    assert long_short_memory(30, max_frames=4) == [0, 28, 29]


def test_uniform_sampler():
    assert uniform_memory(5, max_frames=8) == [0, 1, 2, 3, 4]
    # t=30, k=7: floor(i*29/6) for i=0..6 = 0, 4, 9, 14, 19, 24, 29
    assert uniform_memory(30, max_frames=8) == [0, 4, 9, 14, 19, 24, 29]


def test_exponential_sampler():
    # t=30: 29, 28, 26, 22, 14 and frame 0
    assert exponential_memory(30) == [0, 14, 22, 26, 28, 29]
    assert exponential_memory(30, max_frames=4) == [26, 28, 29]


def test_history_indices_dispatch_and_bad_sampler():
    from saca.config import from_dict

    assert history_indices(30, MemoryConfig(sampler="uniform", max_frames=8)) == [0, 4, 9, 14, 19, 24, 29]
    with pytest.raises(SacaError, match="vln_ego.memory.sampler"):
        from_dict(MemoryConfig, {"sampler": "random"}, "vln_ego.memory")


# --- targets: actions[t .. t+n-1], padded with STOP -----------------------------


def test_targets_are_not_off_by_one():
    actions = [1, 1, 2, 1, 3, 1, 1, 0]
    assert target_actions(actions, 0, 6) == [1, 1, 2, 1, 3, 1]
    assert target_actions(actions, 3, 6) == [1, 3, 1, 1, 0, 0]
    assert target_actions(actions, 7, 6) == [0, 0, 0, 0, 0, 0]
    with pytest.raises(IndexError):
        target_actions(actions, 8, 6)


def test_option_text_uses_the_real_turn_angle():
    assert format_actions([1, 2, 3, 0], 15) == "A. Move forward 25 cm, B. Turn left 15 degrees, C. Turn right 15 degrees, D. Stop"
    assert format_actions([2], 30) == "B. Turn left 30 degrees"
    assert option_menu(15).count("15 degrees") == 2


# --- generation and storage ------------------------------------------------------


@pytest.fixture(scope="module")
def ego(mini_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ego") / "train"
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    cfg = VlnEgoConfig(trajectories_per_shard=2)
    manifest = generate_vln_ego(eps, sim, cfg, 15, out)
    sim.close()
    return out, eps, manifest


def test_samples_hold_exact_targets_and_history(ego):
    out, eps, manifest = ego
    ds = VlnEgoDataset(out)
    assert len(ds) == sum(len(e.gt_actions) for e in eps) == manifest["samples"]
    by_ep = {str(e.episode_id): e for e in eps}
    for s in ds:
        acts = by_ep[s["episode_id"]].gt_actions
        t = s["step"]
        expect = (acts[t : t + 6] + [0] * 6)[:6]
        assert list(s["actions"]) == expect
        assert s["answer"] == format_actions(expect, 15)
        assert list(s["history"]) == long_short_memory(t)
        assert s["num_frames"] == len(acts)


def test_frames_are_sharded_once_per_trajectory(ego, mini_world):
    out, eps, _ = ego
    shards = sorted((out / "frames").glob("shard-*.parquet"))
    assert len(shards) == (len(eps) + 1) // 2  # 2 trajectories a shard
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    assert total == sum(len(e.gt_actions) for e in eps)
    # a sample's frames are the rendered frames of its trajectory
    ds = VlnEgoDataset(out)
    s = ds[5]
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    ep = next(e for e in eps if str(e.episode_id) == s["episode_id"])
    frames = replay_frames(sim, ep)
    sim.close()
    got = ds.images(s)
    assert len(got) == len(s["history"]) + 1
    diff = np.abs(got[-1].astype(int) - frames[s["step"]].astype(int)).mean()
    assert diff < 3.0  # JPEG q95


def _digest(d: Path) -> dict:
    # provenance.json records when and where a result was made: the one file that differs by design
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}


def test_same_seed_gives_byte_identical_outputs(mini_world, scene_builder, tmp_path):
    from saca.episodes import write_episodes
    from saca.episodes.generate import DatasetConfig, generate_split

    outs = []
    for run in ("a", "b"):
        root = tmp_path / run
        index = scene_builder(root / "scenes")
        cfg = DatasetConfig(turn_angle=30, style="rxr", landmarks=[2, 3], seed=5, episodes={"val_unseen": 2})
        sim = make_simulator("embedded", mini_world["sim"], 30, root / "scenes")
        eps = generate_split("mini_rxr", cfg, "val_unseen", index["val_unseen"], sim)
        write_episodes(root / "episodes", "val_unseen", eps)
        generate_vln_ego(load_split(root / "episodes", "val_unseen"), sim, VlnEgoConfig(), 30, root / "vln_ego")
        sim.close()
        outs.append(_digest(root))
    assert outs[0] == outs[1]
    assert any(k.startswith("vln_ego/frames/") for k in outs[0])


def test_missing_frame_shard_names_the_sample(ego, tmp_path):
    import shutil

    out, _, _ = ego
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "frames" / "shard-00000.parquet").unlink()
    ds = VlnEgoDataset(copy)
    with pytest.raises(SacaError, match=r"VLN-Ego sample 0:0: frame shard .*shard-00000\.parquet does not exist"):
        ds.images(ds[0])


def test_replay_divergence_is_an_error(mini_world):
    ep = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[0]
    ep.gt_locations = [list(p) for p in ep.gt_locations]
    ep.gt_locations[3] = [p + 1.0 for p in ep.gt_locations[3]]
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    with pytest.raises(SacaError, match="replay diverged at step 3"):
        replay_frames(sim, ep)
    sim.close()


def test_replay_mismatches_can_be_counted_instead(mini_world):
    from saca.vln_ego.generate import ReplayCheck

    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:2]
    eps[0].gt_locations = [list(p) for p in eps[0].gt_locations]
    eps[0].gt_locations[3] = [eps[0].gt_locations[3][0] + 0.002, *eps[0].gt_locations[3][1:]]
    eps[0].gt_locations[4] = [eps[0].gt_locations[4][0] - 0.0005, *eps[0].gt_locations[4][1:]]  # within 1 mm
    check = ReplayCheck()
    with make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"]) as sim:
        strict = [replay_frames(sim, eps[1])]
        frames = [replay_frames(sim, e, check) for e in eps]
    assert [len(f) for f in frames] == [len(e.gt_actions) for e in eps]
    assert all(np.array_equal(a, b) for a, b in zip(frames[1], strict[0]))  # the same frames either way
    assert check.as_dict() == {"tolerance_m": 1e-3, "episodes_checked": 2, "episodes_off": 1, "steps_off": 1,
                               "max_offset_m": pytest.approx(0.002, abs=1e-9)}


def test_replay_checks_vlnce_gt_locations_recorded_per_forward_step(mini_world):
    # R2R-CE / RxR-CE _gt files: the start, then one location per forward step (not one per action)
    from saca.vln_ego.generate import _replay_reference

    F, L, R, S = 1, 2, 3, 0
    start, a, b = [0.0, 0.0, 0.0], [0.0, 0.0, -0.25], [0.1, 0.0, -0.5]
    assert _replay_reference([L, F, L, F, S], [start, a, b]) == [start, start, a, a, b]
    assert _replay_reference([F, F], [start, a]) == [start, a]  # one per action: the mini world's layout
    assert _replay_reference([F, F, R], [start]) is None  # cannot be aligned: no check
    assert _replay_reference([F], []) is None
    ep = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[0]
    per_forward = [list(ep.gt_locations[0])] + [
        list(ep.gt_locations[t + 1]) for t, x in enumerate(ep.gt_actions[:-1]) if x == F]
    ep.gt_locations = per_forward
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    assert len(replay_frames(sim, ep)) == len(ep.gt_actions)  # the real layout replays without divergence
    k = len(per_forward) // 2
    ep.gt_locations[k] = [p + 1.0 for p in ep.gt_locations[k]]
    with pytest.raises(SacaError, match="replay diverged at step"):
        replay_frames(sim, ep)
    sim.close()


def test_failed_generation_leaves_no_output(mini_world, tmp_path):
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")
    eps[-1].gt_actions = None
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    out = tmp_path / "vln_ego" / "train"
    with pytest.raises(SacaError, match="no expert actions"):
        generate_vln_ego(eps, sim, VlnEgoConfig(), 15, out)
    sim.close()
    assert not out.exists()
    assert list((tmp_path / "vln_ego").iterdir()) == []


def test_sharegpt_export(ego, tmp_path):
    out, eps, manifest = ego
    n = export_sharegpt(out, tmp_path / "sg", "vln_ego_train")
    assert n == manifest["samples"]
    records = json.loads((tmp_path / "sg" / "vln_ego_train.json").read_text())
    info = json.loads((tmp_path / "sg" / "dataset_info.json").read_text())
    assert info["vln_ego_train"]["formatting"] == "sharegpt"
    r = records[3]
    human, gpt = r["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    assert human["value"].count("<image>") == len(r["images"])
    assert all((tmp_path / "sg" / p).exists() for p in r["images"])
    ds = VlnEgoDataset(out)
    assert gpt["value"] == ds[3]["answer"]
    n_frames = sum(len(e.gt_actions) for e in eps)
    assert len(list((tmp_path / "sg" / "images").rglob("*.jpg"))) == n_frames  # each frame written once


# --- noise-injected expert rollouts (vln_ego.noise; DART-style recovery data, a mini-world deviation) ---


def test_noise_free_rollout_is_the_expert(mini_world):
    """With p = 0 the rollout is the episode's expert trajectory and every target is its VLN-Ego target."""
    from saca.vln_ego.generate import noisy_rollout

    sim = make_simulator("embedded", mini_world["sim"], 30, mini_world["scenes"])
    for ep in load_split(mini_world["root"] / "mini_rxr" / "episodes", "train"):
        frames, targets, executed = noisy_rollout(sim, ep, 6, 0.0, np.random.default_rng(0))
        assert executed == ep.gt_actions
        assert targets == [target_actions(ep.gt_actions, t, 6) for t in range(len(ep.gt_actions))]
        assert len(frames) == len(executed)
    sim.close()


def test_noisy_rollout_labels_the_experts_continuation_from_where_the_agent_is(mini_world):
    from saca.sim.base import Action
    from saca.vln_ego.generate import noisy_rollout

    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    ep = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[0]
    frames, targets, executed = noisy_rollout(sim, ep, 6, 0.3, np.random.default_rng(3))
    assert executed != ep.gt_actions and executed[-1] == Action.STOP and targets[-1] == [0] * 6
    deviations = [t for t, (a, tg) in enumerate(zip(executed, targets)) if a != tg[0]]
    assert deviations and all(executed[t] != Action.STOP for t in deviations)
    # replaying the executed actions reproduces the frames, and at a deviation the target is the
    # expert's plan from that state: the first action of a fresh look-ahead there
    sim.reset(ep)
    for t, a in enumerate(executed):
        assert np.array_equal(sim.observe().rgb, frames[t])
        if a != Action.STOP:
            sim.step(a)
    assert sim.geodesic_distance(sim.state.position, ep.goals[0]["position"]) < mini_world["sim"].stop_radius + 0.3
    sim.close()


def test_noisy_rollout_that_reaches_the_step_limit_ends_before_the_lookahead_would_cross_it(mini_world):
    """Regression: with p = 0.3 a rollout ran into ``sim.max_steps`` and the expert's 6-action look-ahead
    stepped a finished episode ("episode 103 is over; reset first"). It now ends n - 1 frames early."""
    import dataclasses

    from saca.sim.base import Action
    from saca.vln_ego.generate import noisy_rollout

    ep = max(load_split(mini_world["root"] / "mini_r2r" / "episodes", "train"), key=lambda e: len(e.gt_actions))
    limit = 12
    assert len(ep.gt_actions) > limit + 6  # the rollout cannot finish before the limit
    sim = make_simulator("embedded", dataclasses.replace(mini_world["sim"], max_steps=limit), 15, mini_world["scenes"])
    frames, targets, executed = noisy_rollout(sim, ep, 6, 0.3, np.random.default_rng(0))
    assert len(frames) == len(targets) == len(executed) == limit - 5
    assert executed[-1] == Action.STOP and Action.STOP not in executed[:-1]
    # a caller's tighter limit still wins
    assert len(noisy_rollout(sim, ep, 6, 0.3, np.random.default_rng(0), max_steps=4)[0]) == 4
    with pytest.raises(SacaError, match=r"sim\.max_steps \(12\) leaves no room"):
        noisy_rollout(sim, ep, 13, 0.3, np.random.default_rng(0))
    sim.close()


def test_noise_adds_rollouts_to_the_configured_splits_only(mini_world, tmp_path):
    from saca.vln_ego.generate import NoiseConfig

    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:2]
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    cfg = VlnEgoConfig(noise=NoiseConfig(trajectories=2, p=0.2, seed=1, splits=["train"]))
    m = generate_vln_ego(eps, sim, cfg, 15, tmp_path / "train", split="train")
    m_val = generate_vln_ego(eps, sim, cfg, 15, tmp_path / "val", split="val_seen")
    sim.close()
    assert m["noisy_trajectories"] == 4 and m_val["noisy_trajectories"] == 0
    assert m_val["samples"] == sum(len(e.gt_actions) for e in eps)
    ds = VlnEgoDataset(tmp_path / "train")
    keys = {s["episode_id"] for s in ds}
    assert keys == {str(e.episode_id) for e in eps} | {f"{e.episode_id}~{k}" for e in eps for k in (0, 1)}
    s = next(s for s in ds if s["episode_id"].endswith("~1") and s["step"] == 3)
    assert len(ds.images(s)) == len(s["history"]) + 1
    with pytest.raises(SacaError, match=r"vln_ego\.noise\.p"):
        VlnEgoConfig(noise={"p": 1.5}).validate("vln_ego")

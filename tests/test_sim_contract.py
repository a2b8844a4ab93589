"""Simulator contract: written once, run against every backend.

The embedded backend runs everywhere; the Habitat backend runs wherever
``habitat_sim`` imports (the cluster's conda env) and is skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from saca import SacaError
from saca.episodes import load_split
from saca.sim import Action, make_simulator
from saca.sim.base import AgentState, forward_vector

HABITAT = importlib.util.find_spec("habitat_sim") is not None


def _backend_world(request, backend, mini_world):
    if backend == "habitat":
        if not HABITAT:
            pytest.skip("habitat_sim is not installed here (conda-only; runs in envs/habitat.yaml on the cluster)")
        world = request.getfixturevalue("habitat_world")
        return world
    return mini_world


@pytest.fixture(params=["embedded", "habitat"])
def world(request, mini_world):
    backend = request.param
    w = _backend_world(request, backend, mini_world)
    return backend, w


def _sim(world, turn_angle=15):
    backend, w = world
    return make_simulator(backend, w["sim"], turn_angle, w["scenes"])


def _episodes(world, dataset="mini_r2r", split="val_unseen"):
    _, w = world
    return load_split(w["root"] / dataset / "episodes", split)


@pytest.mark.parametrize("turn_angle,dataset", [(15, "mini_r2r"), (30, "mini_rxr")])
def test_turns_by_the_dataset_angle(world, turn_angle, dataset):
    ep = _episodes(world, dataset)[0]
    with _sim(world, turn_angle) as sim:
        s0 = sim.reset(ep)
        s1 = sim.step(Action.TURN_LEFT)
        assert math.degrees(math.remainder(s1.heading - s0.heading, 2 * math.pi)) == pytest.approx(turn_angle, abs=1e-6)
        assert s1.position == s0.position
        s2 = sim.step(Action.TURN_RIGHT)
        s3 = sim.step(Action.TURN_RIGHT)
        assert math.degrees(math.remainder(s3.heading - s2.heading, 2 * math.pi)) == pytest.approx(-turn_angle, abs=1e-6)
        assert s3.steps == 3


def test_forward_moves_quarter_metre_in_the_facing_direction(world):
    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        moved = 0
        for _ in range(40):  # find a heading with free space ahead, then step
            before = sim.state
            after = sim.step(Action.MOVE_FORWARD)
            if not after.collided:
                d = np.asarray(after.position) - np.asarray(before.position)
                assert np.linalg.norm(d) == pytest.approx(0.25, abs=1e-6)
                assert np.allclose(d / 0.25, forward_vector(before.heading), atol=1e-6)
                moved += 1
                if moved == 3:
                    break
            else:
                sim.step(Action.TURN_LEFT)
        assert moved == 3


def test_collisions_stop_the_agent(world):
    """A blocked step moves the agent less than a step along its heading (embedded: not at all; Habitat without
    sliding: up to the contact point, as try_step_no_sliding); from there the next one does not move it."""
    backend, _ = world
    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        for _ in range(200):  # walk straight until something blocks the way
            before = sim.state
            after = sim.step(Action.MOVE_FORWARD)
            if after.collided:
                d = np.asarray(after.position) - np.asarray(before.position)
                ahead = float(np.dot(d, forward_vector(before.heading)))
                if backend == "embedded":
                    assert after.position == before.position
                assert -1e-6 <= ahead < 0.25 - 1e-3
                assert math.hypot(d[0], d[2]) == pytest.approx(ahead, abs=1e-5)  # along the heading, no sliding
                assert after.steps == before.steps + 1
                again = sim.step(Action.MOVE_FORWARD)
                assert again.collided and again.position == pytest.approx(after.position, abs=1e-5)
                return
        pytest.fail("walking straight for 50 m never hit a wall")


def test_geodesic_is_at_least_euclidean(world):
    eps = _episodes(world) + _episodes(world, "mini_r2r", "train")
    with _sim(world) as sim:
        rng = np.random.default_rng(0)
        for ep in eps:
            sim.reset(ep)
            pts = [ep.start_position, ep.goal_position] + [p for p in ep.reference_path]
            for _ in range(20):
                a, b = (pts[int(i)] for i in rng.integers(len(pts), size=2))
                g = sim.geodesic_distance(a, b)
                e = math.hypot(a[0] - b[0], a[2] - b[2])
                assert g >= e - 1e-9
            assert sim.geodesic_distance(ep.start_position, ep.start_position) == pytest.approx(0.0)


@pytest.mark.parametrize("dataset,turn_angle", [("mini_r2r", 15), ("mini_rxr", 30)])
def test_teacher_reaches_goal_and_stops_within_3m_from_random_starts(world, dataset, turn_angle):
    backend, w = world
    eps = _episodes(world, dataset)
    rng = np.random.default_rng(7)
    with _sim(world, turn_angle) as sim:
        for ep in eps:
            sim.reset(ep)
            if backend == "embedded":
                free = sim.nav.free_points(min_clearance=0.05)
                starts = [free[int(i)] for i in rng.integers(len(free), size=4)]
            else:
                starts = [sim.sample_navigable_point() for _ in range(4)]
            for start in starts:
                sim.reset(ep)
                if not math.isfinite(sim.geodesic_distance(start, ep.goal_position)):
                    continue
                heading = float(rng.uniform(-math.pi, math.pi))
                sim.restore(AgentState(position=tuple(float(v) for v in start), heading=heading))
                while not sim.episode_over:
                    sim.step(sim.teacher_action())
                assert sim.state.stopped, f"teacher did not call STOP from {list(start)} in episode {ep.episode_id}"
                assert sim.distance_to_goal() < 3.0


def test_restore_snapshot_reproduces_identical_frames(world):
    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        for a in ep.gt_actions[:5]:
            sim.step(a)
        snap = sim.snapshot()
        frame = sim.observe()
        for a in (Action.TURN_LEFT, Action.MOVE_FORWARD, Action.MOVE_FORWARD, Action.TURN_RIGHT):
            sim.step(a)
        assert not np.array_equal(sim.observe().rgb, frame.rgb)
        sim.restore(snap)
        assert sim.state == snap
        sim._forget_frames()  # force a fresh render, not the frame store
        again = sim.observe()
        assert np.array_equal(again.rgb, frame.rgb)
        if frame.depth is not None:
            assert np.array_equal(again.depth, frame.depth)
        if frame.instance is not None:
            assert np.array_equal(again.instance, frame.instance)


def test_the_frame_store_renders_a_pose_once_and_forgets_the_least_recent_past_its_budget(world, monkeypatch):
    import saca.sim.base as base

    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        start = sim.snapshot()
        a = sim.observe()
        assert not a.rgb.flags.writeable  # shared between a group's trajectories: nobody may draw on it
        sim._forget_frames()
        fresh = sim.observe()
        assert fresh is not a and np.array_equal(fresh.rgb, a.rgb)  # the store changes no pixel
        a = fresh
        assert len(sim._frames) == 1 and sim._frames_bytes == sum(
            x.nbytes for x in (a.rgb, a.depth, a.instance) if x is not None)
        # room for two frames: the third pose forgets the least recently used one
        monkeypatch.setattr(base, "FRAME_CACHE_BYTES", 2 * sim._frames_bytes)
        sim.step(Action.TURN_LEFT)
        b = sim.observe()
        sim.restore(start)
        assert sim.observe() is a  # a hit, which makes ``a`` the most recent
        sim.step(Action.TURN_RIGHT)
        sim.observe()  # a third pose: ``b`` goes
        assert len(sim._frames) == 2
        sim.restore(start)
        assert sim.observe() is a
        sim.step(Action.TURN_LEFT)
        again = sim.observe()
        assert again is not b and np.array_equal(again.rgb, b.rgb)


def test_observation_shapes(world):
    backend, w = world
    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        obs = sim.observe()
        h, wd = w["sim"].height, w["sim"].width
        assert obs.rgb.shape == (h, wd, 3) and obs.rgb.dtype == np.uint8
        assert obs.depth.shape == (h, wd) and obs.depth.dtype == np.float32
        assert obs.instance.shape == (h, wd)
        assert np.all(obs.depth > 0)


def test_stepping_after_stop_raises(world):
    ep = _episodes(world)[0]
    with _sim(world) as sim:
        sim.reset(ep)
        sim.step(Action.STOP)
        assert sim.episode_over
        with pytest.raises(SacaError, match="is over"):
            sim.step(Action.MOVE_FORWARD)


def test_unknown_scene_names_it(world):
    backend, w = world
    ep = _episodes(world)[0]
    ep.scene_id = "embedded/house_999"
    with _sim(world) as sim:
        with pytest.raises(SacaError, match="house_999"):
            sim.reset(ep)

"""The Habitat backend (saca.sim.habitat) against a geometric stand-in of habitat_sim 0.3.3.

The stand-in (tests/fakes/fake_habitat_sim.py) is loaded by path and put into
``sys.modules["habitat_sim"]`` by the ``hs`` fixture only (monkeypatch), so that
tests/test_sim_contract.py still finds no habitat_sim here and skips its Habitat
half visibly. Scenes: a floor with a 0.15 m step and a ramp, an L-shaped corridor,
and a scene that ships no navmesh.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from saca import SacaError
from saca.config import from_dict, load_schema, section_from_json
from saca.episodes import Episode
from saca.episodes.generate import DatasetConfig
from saca.sim import DATASET_SIM_KEYS, dataset_sim_config, make_simulator
from saca.sim.base import DEPTH_FAR, Action, AgentState, SimConfig, Simulator, heading_to_quaternion

FAKE = Path(__file__).parent / "fakes" / "fake_habitat_sim.py"
EAST = -math.pi / 2  # heading that faces +x
NORTH = 0.0  # faces -z

# VLN-CE's per-dataset settings (docs/habitat.md gives the source of each value)
R2R_CE = {"width": 224, "height": 224, "hfov": 90, "camera_height": 1.25, "agent_radius": 0.1, "agent_height": 1.5,
          "allow_sliding": True, "recompute_navmesh": False}
RXR_CE = {"width": 640, "height": 480, "hfov": 79, "camera_height": 0.88, "agent_radius": 0.18, "agent_height": 0.88,
          "allow_sliding": False, "recompute_navmesh": True}

SCENES = {
    # x in [0, 3] at y 0, a 0.15 m step up to x in [3, 6], a ramp to 0.6 m at x = 9; z in [-1, 1]
    "step.glb": {"floor": [{"rect": [0, -1, 3, 1], "y": 0.0}, {"rect": [3, -1, 6, 1], "y": 0.15},
                           {"rect": [6, -1, 9, 1], "ramp": [0.15, 0.6]}],
                 "navmesh": {"agent_radius": 0.1, "agent_height": 1.5},
                 "objects": [{"id": 5, "name": "chair"}, {"id": 6}, {"id": 8, "name": ""}]},
    # east along z in [0, 1] to x = 8, then north up x in [7, 8] to z = -7: the inner corner is (7, 0)
    "L.glb": {"floor": [{"rect": [0, 0, 8, 1]}, {"rect": [7, -7, 8, 1]}],
              "navmesh": {"agent_radius": 0.1, "agent_height": 1.5}},
    "bare.glb": {"floor": [{"rect": [0, -1, 3, 1]}], "navmesh": None},
}


@pytest.fixture
def hs(monkeypatch):
    spec = importlib.util.spec_from_file_location("habitat_sim", FAKE)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "habitat_sim", fake)
    return fake


@pytest.fixture
def scenes(tmp_path):
    for name, scene in SCENES.items():
        (tmp_path / name).write_text(json.dumps(scene))
    return tmp_path


@pytest.fixture
def pool():
    from saca.sim.habitat import ScenePool

    return ScenePool()


def _sim(scenes, pool, turn_angle=15, **cfg):
    from saca.sim.habitat import HabitatSimulator

    base = {"width": 16, "height": 16, "agent_radius": 0.1, "recompute_navmesh": False}
    return HabitatSimulator(SimConfig(**{**base, **cfg}), turn_angle, scenes, pool=pool)


def _episode(scene, start, heading, goal):
    return Episode(0, 0, scene, list(start), heading_to_quaternion(heading), [{"position": list(goal), "radius": 3.0}],
                   [list(start), list(goal)], "go")


def test_the_stand_in_is_not_importable_as_habitat_sim():
    spec = importlib.util.find_spec("habitat_sim")
    assert spec is None or "fakes" not in str(spec.origin)


# --- defect 1: steps that change height move ------------------------------------------------------

def test_stairs_and_ramps_move_the_agent_and_take_the_navmesh_height(hs, scenes, pool):
    with _sim(scenes, pool) as sim:
        sim.reset(_episode("step.glb", (2.5, 0.0, 0.0), EAST, (8.5, 0.0, 0.0)))
        ys = {}
        for _ in range(16):
            before = sim.state
            after = sim.step(Action.MOVE_FORWARD)
            assert not after.collided, f"blocked at {before.position}"
            assert after.position[0] == pytest.approx(before.position[0] + 0.25, abs=1e-6)
            assert after.position[2] == pytest.approx(0.0, abs=1e-6)
            ys[round(after.position[0], 2)] = after.position[1]
        assert ys[2.75] == pytest.approx(0.0)
        assert ys[3.0] == pytest.approx(0.0)  # the edge belongs to the lower floor
        assert ys[3.25] == pytest.approx(0.15, abs=1e-6)  # up the step: 0.15 m higher than the target
        assert ys[6.5] == pytest.approx(0.15 + 0.45 * 0.5 / 3, abs=1e-6)  # on the ramp
        assert ys[6.5] - ys[6.25] == pytest.approx(0.45 * 0.25 / 3, abs=1e-6)
        for _ in range(12):  # turn around and walk back down
            sim.step(Action.TURN_LEFT)
        down = [sim.step(Action.MOVE_FORWARD) for _ in range(16)]
        assert not any(s.collided for s in down)
        assert down[-1].position == pytest.approx((2.5, 0.0, 0.0), abs=1e-5)


def test_a_blocked_step_without_sliding_moves_up_to_the_contact_point(hs, scenes, pool):
    # Habitat's step_filter -> try_step_no_sliding (RxR-CE's allow_sliding: false): the agent stops at the
    # wall, not where it was
    with _sim(scenes, pool) as sim:
        sim.reset(_episode("step.glb", (1.0, 0.0, -0.9), math.radians(-45), (2.0, 0.0, 0.0)))  # facing +x, -z
        before = sim.state
        after = sim.step(Action.MOVE_FORWARD)  # the wall at z = -1 is 0.1 m away along z: 0.1 * sqrt(2) ahead
        assert after.collided and after.steps == 1
        # the contact point, less 1 mm along the move (habitat-sim 57ee494 never lets a start on a wall edge move)
        d = 1e-3 / math.sqrt(2)
        assert after.position == pytest.approx((1.1 - d, 0.0, -1.0 + d), abs=1e-6)
        again = sim.step(Action.MOVE_FORWARD)  # 1 mm from the wall: nearly no move, still a collision
        assert again.collided and again.position == pytest.approx(after.position, abs=1e-3)
        for _ in range(3):
            sim.step(Action.TURN_RIGHT)  # facing +x, along the wall
        assert not sim.step(Action.MOVE_FORWARD).collided  # and it can move on
        assert sim.move_to(before.position, (1.0, 0.0, -1.2)) is None  # a full step does not fit
        # head-on into the end wall at x = 9 from 0.1 m before it
        sim.restore(AgentState(position=(8.9, 0.6 - 0.45 * 0.1 / 3, 0.0), heading=EAST))
        end = sim.step(Action.MOVE_FORWARD)
        assert end.collided and end.position == pytest.approx((9.0 - 1e-3, 0.6, 0.0), abs=1e-6)


def test_a_step_that_cuts_an_obstacle_corner_without_sliding_stays_where_it_was(hs, scenes, pool):
    # habitat-sim 57ee494's tryStep takes the wall crossing nearest the target: a ray that leaves the navmesh at
    # the L's inner corner (7, 0) and comes back onto it "hits" where it comes back, (7, -0.05), and 1 mm before
    # that lies off the navmesh, where every later move would be blocked (seen on simple_room.glb: the teacher
    # turned left and right for 500 steps). The step is a collision and the agent stays where it was.
    with _sim(scenes, pool) as sim:
        start, target = (6.9, 0.0, 0.05), (6.9 + 0.25 / math.sqrt(2), 0.0, 0.05 - 0.25 / math.sqrt(2))
        sim.reset(_episode("L.glb", start, math.radians(-45), (7.5, 0.0, -6.5)))  # facing +x, -z
        contact = sim._need().pathfinder.try_step_no_sliding(np.float32(start), np.float32(target))
        assert (float(contact[0]), float(contact[2])) == pytest.approx((7.0, -0.05), abs=1e-6)
        after = sim.step(Action.MOVE_FORWARD)
        assert after.collided and after.position == pytest.approx(start, abs=1e-6)
        assert sim.forward_move(start, target) == (pytest.approx(start, abs=1e-6), True)
        while not sim.episode_over:  # and the teacher goes round the corner
            sim.step(sim.teacher_action())
        assert sim.state.stopped and sim.distance_to_goal() < sim.config.stop_radius


@pytest.mark.parametrize("turn_angle", [15, 30])
def test_teacher_takes_over_from_the_contact_point(hs, scenes, pool, turn_angle):
    # a rollout that ran into the wall (as RxR-CE's no-sliding agent does) leaves the agent on the navmesh's edge;
    # the teacher's primitives are tried with the same moves (contact points and collisions) and get it out
    with _sim(scenes, pool, turn_angle) as sim:
        sim.reset(_episode("L.glb", (7.5, 0.0, 0.5), EAST, (7.5, 0.0, -6.5)))
        while not sim.step(Action.MOVE_FORWARD).collided:
            pass
        assert sim.state.position == pytest.approx((8.0, 0.0, 0.5), abs=1e-6)  # a full step ended on the wall
        start = sim.state.steps
        while not sim.episode_over:
            sim.step(sim.teacher_action())
        assert sim.state.stopped and sim.distance_to_goal() < sim.config.stop_radius
        assert sim.state.steps - start <= math.ceil(7.0 / 0.25) + 180 // turn_angle + 4


def test_vln_ego_on_habitat_counts_gt_replay_mismatches(hs, scenes, pool, tmp_path):
    # a recomputed navmesh moves the replay by millimetres: counted in the manifest, not an abort
    from saca.vln_ego.generate import VlnEgoConfig, generate_vln_ego

    ep = _episode("step.glb", (1.0, 0.0, 0.0), EAST, (2.0, 0.0, 0.0))
    ep.gt_actions = [1, 1, 1, 0]
    ep.gt_locations = [[1.0, 0.0, 0.0], [1.25, 0.0, 0.0], [1.502, 0.0, 0.0], [1.75, 0.0, 0.0]]
    with _sim(scenes, pool, recompute_navmesh=True) as sim:
        manifest = generate_vln_ego([ep], sim, VlnEgoConfig(), 15, tmp_path / "vln_ego", split="val_unseen")
    assert manifest["frames"] == 4
    assert manifest["replay_check"] == {"tolerance_m": 1e-3, "episodes_checked": 1, "episodes_off": 1,
                                        "steps_off": 1, "max_offset_m": pytest.approx(0.002, abs=1e-6)}


def test_episodes_generated_on_the_navmesh_are_deterministic_and_replay(hs, scenes, pool, tmp_path):
    from saca.episodes import load_split, write_episodes
    from saca.episodes.navmesh import generate_navmesh_split
    from saca.vln_ego.generate import replay_frames

    cfg = DatasetConfig(backend="habitat", turn_angle=30, style="rxr", path_length=[4.0, 12.0], seed=3,
                        episodes={"val_unseen": 3})
    runs = []
    for _ in range(2):
        with _sim(scenes, pool, 30, recompute_navmesh=True) as sim:
            runs.append(generate_navmesh_split("hab", cfg, "val_unseen", ["L.glb", "step.glb"], sim))
    a, b = runs
    assert [e.to_json() for e in a] == [e.to_json() for e in b] and len(a) == 3
    assert [(e.gt_actions, e.gt_locations) for e in a] == [(e.gt_actions, e.gt_locations) for e in b]
    write_episodes(tmp_path, "val_unseen", a)
    eps = load_split(tmp_path, "val_unseen")
    with _sim(scenes, pool, 30, recompute_navmesh=True) as sim:
        for e in eps:
            assert 4.0 <= e.info["geodesic_distance"] <= 12.0 and e.info["landmarks"] == []
            assert e.instruction_text.endswith(".") and "meters to your goal" in e.instruction_text
            assert e.gt_actions[-1] == Action.STOP and len(replay_frames(sim, e)) == len(e.gt_actions)  # 1 mm check
            assert sim.distance_to_goal() < sim.config.stop_radius
    # VLN-Ego with a noise-injected rollout per episode (DART-style recovery data) renders on Habitat too
    from saca.vln_ego.generate import NoiseConfig, VlnEgoConfig, generate_vln_ego

    cfg = VlnEgoConfig(noise=NoiseConfig(trajectories=1, p=0.3, splits=["val_unseen"]))
    with _sim(scenes, pool, 30, recompute_navmesh=True) as sim:
        manifest = generate_vln_ego(eps, sim, cfg, 30, tmp_path / "ego", split="val_unseen")
    assert manifest["episodes"] == 3 and manifest["noisy_trajectories"] == 3
    assert manifest["replay_check"]["episodes_checked"] == 3 and manifest["replay_check"]["steps_off"] == 0
    with _sim(scenes, pool, 30, recompute_navmesh=True) as sim:
        with pytest.raises(SacaError, match=r"could not generate 3 episodes with routes of 40-50 m"):
            generate_navmesh_split("hab", DatasetConfig(path_length=[40.0, 50.0], episodes={"train": 3}), "train",
                                   ["step.glb"], sim)


def test_the_episodes_command_generates_on_linked_habitat_scenes(hs, tmp_path, capsys):
    from saca.cli import main
    from saca.episodes import load_split

    src = tmp_path / "test-scenes"
    for scan in ("L", "step"):
        (src / "test" / scan).mkdir(parents=True)
        (src / "test" / scan / f"{scan}.glb").write_text(json.dumps(SCENES[f"{scan}.glb"]))
    out = tmp_path / "results" / "scenes"
    assert main(["scenes", "--params", json.dumps({"backend": "habitat", "dir": str(src)}), "--out", str(out)]) == 0
    ds = {"backend": "habitat", "turn_angle": 15, "path_length": [4.0, 9.0], "seed": 5, "episodes": {"train": 4},
          "sim": {"recompute_navmesh": True}}
    assert main(["episodes", "--dataset", "hab", "--split", "train", "--scenes", str(out), "--sim",
                 json.dumps({"width": 16, "height": 16}), "--dataset-config", json.dumps(ds), "--out",
                 str(tmp_path / "episodes")]) == 0
    eps = load_split(tmp_path / "episodes", "train")
    assert len(eps) == 4 and {e.scene_id for e in eps} <= {"test/L/L.glb", "test/step/step.glb"}
    assert all(e.gt_actions[-1] == Action.STOP and len(e.gt_locations) == len(e.gt_actions) for e in eps)


def test_sliding_slides_along_the_wall_and_reports_the_collision_as_habitat(hs, scenes, pool):
    with _sim(scenes, pool, allow_sliding=True) as sim:
        sim.reset(_episode("step.glb", (1.0, 0.0, -0.9), math.radians(-45), (2.0, 0.0, 0.0)))
        after = sim.step(Action.MOVE_FORWARD)
        d = 0.25 / math.sqrt(2)
        assert after.collided
        assert after.position == pytest.approx((1.0 + d, 0.0, -1.0), abs=1e-6)  # slid along z = -1
        free = sim.step(Action.TURN_RIGHT) and sim.step(Action.TURN_RIGHT) and sim.step(Action.TURN_RIGHT)
        start = free.position
        moved = sim.step(Action.MOVE_FORWARD)  # facing +x: free
        assert not moved.collided and moved.position == pytest.approx((start[0] + 0.25, 0.0, -1.0), abs=1e-6)
        # up the step with sliding on: the end is higher than the target, not a collision (object_controls.py)
        sim.restore(AgentState(position=(2.9, 0.0, 0.0), heading=EAST))
        up = sim.step(Action.MOVE_FORWARD)
        assert not up.collided and up.position == pytest.approx((3.15, 0.15, 0.0), abs=1e-6)


# --- defect 2: the start is snapped to the navmesh -------------------------------------------------

def test_an_off_navmesh_start_is_snapped_and_moves(hs, scenes, pool):
    with _sim(scenes, pool) as sim:
        s = sim.reset(_episode("step.glb", (1.0, 0.3, 0.0), EAST, (2.5, 0.0, 0.0)))  # 0.3 m above the floor
        assert s.position == pytest.approx((1.0, 0.0, 0.0), abs=1e-7)
        assert not sim.step(Action.MOVE_FORWARD).collided
        s = sim.reset(_episode("step.glb", (1.0, 0.0, 1.2), EAST, (2.5, 0.0, 0.0)))  # 0.2 m off the edge
        assert s.position == pytest.approx((1.0, 0.0, 1.0), abs=1e-7)
        assert sim.step(Action.MOVE_FORWARD).position == pytest.approx((1.25, 0.0, 1.0), abs=1e-6)


def test_a_start_far_from_the_navmesh_names_the_position_and_scene(hs, scenes, pool):
    with _sim(scenes, pool) as sim:
        with pytest.raises(SacaError, match=r"not navigable in scene step.glb: the nearest navmesh point .* more than 0.5 m"):
            sim.reset(_episode("step.glb", (1.0, 0.0, 2.0), EAST, (2.5, 0.0, 0.0)))
        with pytest.raises(SacaError, match="not navigable in scene step.glb: no navmesh near it"):
            sim.reset(_episode("step.glb", (1.0, 0.0, 5.0), EAST, (2.5, 0.0, 0.0)))


# --- defect 3: the teacher turns corners ------------------------------------------------------------

@pytest.mark.parametrize("turn_angle", [15, 30])
def test_teacher_turns_the_corner_of_an_l_corridor(hs, scenes, pool, turn_angle):
    start, goal = (0.5, 0.0, 0.05), (7.5, 0.0, -6.5)
    with _sim(scenes, pool, turn_angle) as sim:
        sim.reset(_episode("L.glb", start, EAST, goal))
        assert sim.shortest_path(start, goal)[1] == pytest.approx((7.0, 0.0, 0.0))  # bends at the inner corner
        geodesic = sim.geodesic_distance(start, goal)
        actions = []
        while not sim.episode_over:
            actions.append(sim.teacher_action())
            sim.step(actions[-1])
        assert sim.state.stopped and sim.distance_to_goal() < sim.config.stop_radius
        forward = actions.count(Action.MOVE_FORWARD)
        assert forward <= math.ceil(geodesic / 0.25) + 4
        assert len(actions) <= forward + 12 + 1  # a quarter turn or two, not hundreds of steps


def test_the_base_look_ahead_thrashes_at_that_corner(hs, scenes, pool):
    # the defect the override fixes: within a step of the corner the base teacher aims through the wall
    with _sim(scenes, pool, 15) as sim:
        sim.reset(_episode("L.glb", (0.5, 0.0, 0.05), EAST, (7.5, 0.0, -6.5)))
        while not sim.episode_over:
            sim.step(Simulator.teacher_action(sim))
        assert not sim.state.stopped and sim.state.steps == 500


def test_teacher_stops_near_the_goal_and_names_an_unreachable_goal(hs, scenes, pool):
    with _sim(scenes, pool) as sim:
        sim.reset(_episode("L.glb", (7.5, 0.0, -6.2), NORTH, (7.5, 0.0, -6.5)))
        assert sim.teacher_action() == Action.STOP
        with pytest.raises(SacaError, match="cannot be reached"):
            sim.teacher_action(goal=(20.0, 0.0, 20.0))


def test_the_embedded_backend_keeps_the_base_teacher_and_moves():
    from saca.sim.embedded.sim import EmbeddedSimulator
    from saca.sim.habitat import HabitatSimulator

    assert EmbeddedSimulator.teacher_action is Simulator.teacher_action
    assert EmbeddedSimulator.forward_move is Simulator.forward_move
    assert HabitatSimulator.teacher_action is not Simulator.teacher_action


def test_the_embedded_backend_refuses_sliding(tmp_path):
    with pytest.raises(SacaError, match="sim.allow_sliding: the embedded backend does not slide"):
        make_simulator("embedded", SimConfig(allow_sliding=True), 15, tmp_path)


# --- defect 4: per-dataset settings -----------------------------------------------------------------

@pytest.mark.parametrize("name,values", [("r2r_ce", R2R_CE), ("rxr_ce", RXR_CE)])
def test_dataset_settings_reach_habitat(hs, scenes, pool, name, values):
    ds = from_dict(DatasetConfig, {"backend": "habitat", "turn_angle": 15, "sim": values}, f"datasets.{name}")
    cfg = dataset_sim_config(SimConfig(depth=True, instance=True), ds, f"datasets.{name}")
    with make_simulator("habitat", cfg, 15, scenes) as sim:
        sim.pool = pool
        sim.load_scene("step.glb")
        (habitat,) = hs.LOG["simulators"]
        backend, agent = habitat.config.sim_cfg, habitat.config.agents[0]
        assert backend.scene_id == str(scenes / "step.glb") and backend.allow_sliding is values["allow_sliding"]
        assert backend.gpu_device_id == 0  # sim.gpu_device_id; -1 renders on EGL's default display (llvmpipe)
        assert agent.height == values["agent_height"] and agent.radius == values["agent_radius"]
        assert agent.action_space == {}
        specs = {s.uuid: s for s in agent.sensor_specifications}
        assert sorted(specs) == ["depth", "rgb", "semantic"]
        for s in specs.values():
            assert s.hfov == values["hfov"]
            assert list(s.position) == [0.0, values["camera_height"], 0.0]
            assert list(s.resolution) == [values["height"], values["width"]]
            assert (s.near, s.far) == (0.05, DEPTH_FAR)
        if values["recompute_navmesh"]:
            assert hs.LOG["recompute"] == [(habitat, values["agent_radius"], values["agent_height"])]
            assert habitat.pathfinder.nav_mesh_settings.agent_radius == values["agent_radius"]
        else:
            assert hs.LOG["recompute"] == []  # the scene's own navmesh (radius 0.1, height 1.5)
            assert habitat.pathfinder.nav_mesh_settings.agent_radius == 0.1
        obs = sim.reset(_episode("step.glb", (1.0, 0.0, 0.0), EAST, (2.0, 0.0, 0.0))) and sim.observe()
        assert obs.rgb.shape == (values["height"], values["width"], 3)


def test_a_missing_shipped_navmesh_names_the_file_and_the_key(hs, scenes, pool):
    with _sim(scenes, pool) as sim:
        with pytest.raises(SacaError, match=r"bare.glb: no navmesh loaded; sim.recompute_navmesh is false, .*bare.navmesh"):
            sim.load_scene("bare.glb")
    with _sim(scenes, pool, recompute_navmesh=True) as sim:
        sim.load_scene("bare.glb")
        assert sim.geodesic_distance((0.5, 0.0, 0.0), (2.5, 0.0, 0.0)) == pytest.approx(2.0)


def test_dataset_sim_overrides_merge_and_are_checked():
    sim = SimConfig(width=640, height=480, max_steps=400)
    ds = from_dict(DatasetConfig, {"backend": "habitat", "turn_angle": 30, "sim": RXR_CE}, "datasets.rxr_ce")
    merged = dataset_sim_config(sim, ds, "datasets.rxr_ce")
    assert (merged.hfov, merged.camera_height, merged.agent_radius, merged.agent_height) == (79, 0.88, 0.18, 0.88)
    assert merged.allow_sliding is False and merged.recompute_navmesh is True and merged.max_steps == 400
    assert dataset_sim_config(sim, DatasetConfig(), "datasets.x") is sim
    with pytest.raises(SacaError, match=r"unknown config key 'datasets.rxr_ce.sim.hfovv'"):
        from_dict(DatasetConfig, {"sim": {"hfovv": 79}}, "datasets.rxr_ce")
    with pytest.raises(SacaError, match=r"datasets.rxr_ce.sim.max_steps: not a per-dataset setting"):
        from_dict(DatasetConfig, {"sim": {"max_steps": 10}}, "datasets.rxr_ce")
    with pytest.raises(SacaError, match=r"datasets.rxr_ce.sim: expected a mapping"):
        from_dict(DatasetConfig, {"sim": [1]}, "datasets.rxr_ce")
    with pytest.raises(SacaError, match=r"datasets.rxr_ce.sim.hfov: must be between 10 and 170"):
        dataset_sim_config(sim, DatasetConfig(sim={"hfov": 200}), "datasets.rxr_ce")
    with pytest.raises(SacaError, match=r"datasets.rxr_ce.sim.agent_height: must be positive"):
        dataset_sim_config(sim, DatasetConfig(sim={"agent_height": 0}), "datasets.rxr_ce")


def test_the_command_line_merges_the_dataset_sim_section(hs, scenes):
    from saca.commands.data import sim_configs, sim_from_args

    args = argparse.Namespace(sim=json.dumps({"width": 64, "height": 48, "depth": False}), scenes=str(scenes),
                              dataset_config=json.dumps({"backend": "habitat", "turn_angle": 30, "sim": RXR_CE}))
    cfg, ds = sim_configs(args)
    assert (cfg.width, cfg.height, cfg.hfov, cfg.agent_height, cfg.depth) == (640, 480, 79, 0.88, False)
    sim, _ = sim_from_args(args)
    with sim:
        assert sim.config == cfg and sim.turn_angle == 30
    bad = argparse.Namespace(sim=None, scenes=str(scenes), dataset_config=json.dumps({"sim": {"hfov": "wide"}}))
    with pytest.raises(SacaError, match=r"datasets.<dataset>.sim.hfov: 'wide' is not of type 'number'"):
        sim_configs(bad)
    bad.dataset_config = json.dumps({"sim": {"fov": 79}})
    with pytest.raises(SacaError, match=r"unknown config key 'datasets.<dataset>.sim.fov'"):
        sim_configs(bad)


def test_rft_builds_its_simulators_with_the_dataset_settings(hs, scenes):
    from saca.train.rft import RftConfig, RftTrainer

    ds = DatasetConfig(backend="habitat", turn_angle=15, sim=R2R_CE)
    trainer = RftTrainer("init", None, scenes / "out", RftConfig(), None, {}, sim_args={"r2r_ce": (SimConfig(instance=False), ds, scenes)})
    sim = trainer._sim("r2r_ce", 0, instance=True)
    assert sim.config == SimConfig(**{**R2R_CE, "instance": True})


def test_the_workflow_names_an_unknown_dataset_sim_key():
    from saca.config import unknown_keys

    with pytest.raises(SacaError, match=r"unknown config key 'datasets.rxr_ce.sim.fov' \(did you mean 'hfov'\?\)"):
        unknown_keys({"datasets": {"rxr_ce": {"backend": "habitat", "turn_angle": 30, "sim": {"fov": 79}}}})


def test_the_schema_knows_every_sim_key():
    import dataclasses

    props = load_schema()["properties"]
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    assert set(props["sim"]["properties"]) == fields
    assert set(props["datasets"]["additionalProperties"]["properties"]["sim"]["properties"]) == set(DATASET_SIM_KEYS)
    assert set(DATASET_SIM_KEYS) <= fields
    section_from_json(json.dumps({"backend": "habitat", "turn_angle": 15, "sim": R2R_CE}), DatasetConfig, "datasets.<dataset>")


# --- defect 5: observation conventions ------------------------------------------------------------

def test_observations_follow_the_interface(hs, scenes, pool):
    with _sim(scenes, pool, width=16, height=8) as sim:
        sim.reset(_episode("step.glb", (1.0, 0.0, 0.0), EAST, (2.0, 0.0, 0.0)))
        obs = sim.observe()
        assert sim.instance_labels == {5: "chair"}  # object 6 has no category, 8 an empty name
        assert obs.rgb.shape == (8, 16, 3) and obs.rgb.dtype == np.uint8
        assert obs.depth.dtype == np.float32 and obs.instance.dtype == np.int32
        assert np.all(obs.depth[:4] == DEPTH_FAR) and np.all(obs.instance[:4] == -1)  # nothing rendered
        assert np.all(obs.depth[4:, :4] == 2.0) and np.all(obs.instance[4:, :4] == 5)
        assert np.all(obs.depth[4:, 4:8] == 3.0) and np.all(obs.instance[4:, 4:8] == -1)  # id 7: no object
        assert np.all(obs.depth[4:, 8:] == 1.0) and np.all(obs.instance[4:, 8:] == -1)  # id 0: background
        assert np.all(obs.depth > 0)


def test_depth_clip_planes_are_the_embedded_backends():
    from saca.sim.base import DEPTH_NEAR
    from saca.sim.embedded import sim as embedded

    assert (DEPTH_NEAR, DEPTH_FAR) == (embedded.NEAR, embedded.FAR)


# --- defect 6: one scene load per group ---------------------------------------------------------------

def test_a_group_shares_one_habitat_simulator(hs, scenes, pool):
    ep = _episode("step.glb", (1.0, 0.0, 0.0), EAST, (2.0, 0.0, 0.0))
    group = [_sim(scenes, pool) for _ in range(8)]
    for k, sim in enumerate(group):
        sim.reset(ep)
        for _ in range(k % 4):
            sim.step(Action.MOVE_FORWARD)
    assert len(hs.LOG["simulators"]) == 1 and len(pool) == 1
    assert pool.refs(group[0]._shared.key) == 8
    for k in (3, 0, 2, 1, 7):  # each render shows its own agent's pose, whatever rendered before
        frame = group[k].observe().rgb
        assert frame[0, 0, 0] == int(round((1.0 + 0.25 * (k % 4)) * 40)) % 256
    other = _sim(scenes, pool, instance=False)  # other render settings: another load
    other.load_scene("step.glb")
    assert len(hs.LOG["simulators"]) == 2 and len(pool) == 2
    other.close()
    for sim in group[:7]:
        sim.close()
    assert hs.LOG["closed"] == 1 and not group[7]._shared.sim.closed
    group[7].close()
    assert hs.LOG["closed"] == 2 and len(pool) == 0


def test_a_sole_user_reconfigures_and_a_shared_scene_stays_open(hs, scenes, pool):
    a, b = _sim(scenes, pool), _sim(scenes, pool)
    a.load_scene("step.glb")
    a.load_scene("L.glb")  # its only user: the same habitat simulator, reconfigured
    assert len(hs.LOG["simulators"]) == 1 and hs.LOG["reconfigure"] == 1 and hs.LOG["closed"] == 0
    b.load_scene("L.glb")
    b.load_scene("step.glb")  # L.glb is shared with a: a new load, L.glb stays open
    assert len(hs.LOG["simulators"]) == 2 and hs.LOG["reconfigure"] == 1 and len(pool) == 2
    assert a.geodesic_distance((0.5, 0.0, 0.5), (7.5, 0.0, -6.5)) == pytest.approx(
        math.hypot(6.5, 0.5) + math.hypot(0.5, 6.5))
    with pytest.raises(SacaError, match="unknown scene: .*nowhere.glb"):
        a.load_scene("nowhere.glb")
    assert a._scene_id == "L.glb"  # an unknown scene leaves the loaded one alone
    a.close()
    b.close()
    assert len(pool) == 0 and hs.LOG["closed"] == 2


def test_a_dropped_simulator_lets_go_of_its_scene(hs, scenes, pool):
    import gc

    a, b = _sim(scenes, pool), _sim(scenes, pool)
    a.load_scene("step.glb")
    b.load_scene("step.glb")
    key = a._shared.key
    del a
    gc.collect()
    assert pool.refs(key) == 1 and hs.LOG["closed"] == 0
    del b
    gc.collect()
    assert len(pool) == 0 and hs.LOG["closed"] == 1


def test_the_habitat_smoke_overlay_plans_its_dag(tmp_path):
    """config/habitat-smoke.yaml over smoke.yaml: the 28 jobs docs/habitat.md lists (a dry run; the real run
    needs habitat_sim and the test scenes)."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "hs"
    targets = []
    for d in ("mini_r2r", "mini_rxr"):
        targets += [f"{out}/{d}/vln_ego/{s}" for s in ("train", "val_seen", "val_unseen")]
        targets += [f"{out}/{d}/eval/{r}/val_unseen/metrics.json" for r in ("random", "forward", "oracle", "sft")]
        targets.append(f"{out}/{d}/audit/oracle/val_unseen/summary.json")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--nolock", *targets, "--configfile",
                        "config/smoke.yaml", "config/habitat-smoke.yaml", "--config", f"results={out}"],
                       cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = dict(line.split() for line in r.stdout.splitlines()
                  if line.split()[:1] and line.split()[0] in ("scenes", "episodes", "vln_ego", "evaluate", "sft",
                                                              "audit", "vision_pretrain", "total")
                  and len(line.split()) == 2)
    assert counts == {"scenes": "1", "episodes": "6", "vln_ego": "6", "evaluate": "8", "sft": "1", "audit": "2",
                      "total": "28"}


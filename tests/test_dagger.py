"""DAgger (issue 29): the policy's rollouts labelled by the expert, aggregated with the VLN-Ego data."""

from __future__ import annotations

import json

import pytest

from saca import SacaError
from saca.cli import main
from saca.episodes import load_split
from saca.sim import make_simulator
from saca.sim.base import Action
from saca.vln_ego.dagger import (
    DaggerConfig,
    labelled_policy_rollouts,
    rollout_stats,
    select_episodes,
    write_dagger_split,
)
from saca.vln_ego.generate import VlnEgoConfig, generate_vln_ego


class ReplayAgent:
    """Takes the episode's expert actions one by one (the expert as a policy)."""

    name = "replay"

    def reset(self, contexts):
        pass

    def act(self, contexts):
        return [ctx.episode.gt_actions[ctx.step] for ctx in contexts]


class TurnThenStopAgent:
    """Turns left ``k`` times, then walks forward until blocked, then stops: a policy off the expert's path."""

    name = "turner"

    def __init__(self, k=4):
        self.k = k

    def reset(self, contexts):
        pass

    def act(self, contexts):
        out = []
        for ctx in contexts:
            if ctx.step < self.k:
                out.append(int(Action.TURN_LEFT))
            elif ctx.step > self.k and ctx.sim.state.collided or ctx.step >= 40:
                out.append(int(Action.STOP))
            else:
                out.append(int(Action.MOVE_FORWARD))
        return out


def _sims(mini_world, turn_angle):
    made = []

    def make():
        made.append(make_simulator("embedded", mini_world["sim"], turn_angle, mini_world["scenes"]))
        return made[-1]

    return make, made


def _replay(sim, ep, actions, goal=None):
    """Replays ``actions`` on ``ep`` in ``sim``: the shortest-path teacher's action toward ``goal`` (default: the
    episode's goal) before each action up to STOP, and the forward steps taken and blocked by a wall."""
    sim.reset(ep)
    labels, fwd, blocked = [], 0, 0
    for a in actions:
        labels.append(int(sim.teacher_action(goal=goal)))
        if a == Action.STOP:
            break
        st = sim.step(a)
        fwd += a == Action.MOVE_FORWARD
        blocked += bool(st.collided) and a == Action.MOVE_FORWARD
    return labels, fwd, blocked


def test_the_route_expert_as_policy_is_labelled_with_its_own_actions(mini_world):
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:3]
    make, made = _sims(mini_world, 15)
    rolls = labelled_policy_rollouts(eps, make, ReplayAgent(), 6, batch_size=2, teacher="route")
    assert len(made) == 3  # one simulator per episode
    for r, ep in zip(rolls, eps):
        assert len(r.frames) == len(r.targets) == len(ep.gt_actions)
        # the label of frame t is the expert's next 6 actions, padded with STOP
        for t in range(len(ep.gt_actions)):
            want = list(ep.gt_actions[t:t + 6]) + [int(Action.STOP)] * max(0, t + 6 - len(ep.gt_actions))
            assert r.targets[t] == want, (ep.episode_id, t)
        assert r.success and r.agree == len(ep.gt_actions) and r.blocked == 0
    s = rollout_stats(rolls)
    assert s["success_rate"] == 1.0 and s["expert_agreement"] == 1.0 and s["wall_collision_share"] == 0.0


def test_labels_are_the_teachers_action_on_the_states_the_policy_visits(mini_world):
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:2]
    make, _ = _sims(mini_world, 15)
    rolls = labelled_policy_rollouts(eps, make, TurnThenStopAgent(4), 6, batch_size=2, teacher="route")
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    for r, ep in zip(rolls, eps):
        # the agent starts >= 1.5 m from the first waypoint, which it never reaches here: the expert's
        # label is the shortest-path teacher's action toward it, from where the agent is
        labels, fwd, blocked = _replay(sim, ep, r.ctx.actions, goal=tuple(ep.info["waypoints"][0]))
        assert [t[0] for t in r.targets[:len(labels)]] == labels, ep.episode_id
        assert r.ctx.actions[:4] == [int(Action.TURN_LEFT)] * 4
        assert (r.forward, r.blocked) == (fwd, blocked) and r.blocked >= 1  # it walked into a wall
        assert not r.success
    sim.close()


class GoalTeacherAgent:
    """Follows the simulator's shortest-path teacher to the goal (not the route through the landmarks)."""

    name = "goal-teacher"

    def reset(self, contexts):
        pass

    def act(self, contexts):
        return [int(ctx.sim.teacher_action()) for ctx in contexts]


def test_the_goal_teacher_labels_every_visited_state_with_the_shortest_path_action_to_the_goal(mini_world):
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:3]
    make, _ = _sims(mini_world, 15)
    rolls = labelled_policy_rollouts(eps, make, TurnThenStopAgent(4), 6, batch_size=2, teacher="goal")
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    for r, ep in zip(rolls, eps):
        # the label's first action is the teacher's toward the goal from where the off-route agent stands
        labels, _, _ = _replay(sim, ep, r.ctx.actions)
        assert [t[0] for t in r.targets[:len(labels)]] == labels, ep.episode_id
    sim.close()
    # a policy that goes straight to the goal agrees with every label and is labelled STOP on arrival,
    # whichever landmark approach points it skipped
    rolls = labelled_policy_rollouts(eps, make, GoalTeacherAgent(), 6, batch_size=3, teacher="goal")
    for r in rolls:
        assert r.success and r.agree == len(r.frames) and r.targets[-1] == [int(Action.STOP)] * 6
        assert r.ctx.actions[-1] == int(Action.STOP)


def test_the_route_teacher_pins_a_skipped_waypoint_and_the_goal_teacher_does_not(mini_world):
    # the shortest path to the goal skips a landmark approach point (by more than stop_radius) in some episode:
    # there the route expert's labels never say STOP, however close to the goal the agent stands
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:12]
    make, _ = _sims(mini_world, 15)
    route = labelled_policy_rollouts(eps, make, GoalTeacherAgent(), 6, batch_size=4, teacher="route")
    goal = labelled_policy_rollouts(eps, make, GoalTeacherAgent(), 6, batch_size=4, teacher="goal")
    pinned = [k for k, r in enumerate(route) if r.targets[-1][0] != int(Action.STOP)]
    assert pinned, "no episode's direct path skipped a waypoint: pick other episodes"
    for k in pinned:
        assert goal[k].targets[-1][0] == int(Action.STOP) and goal[k].success


def test_an_unknown_teacher_is_named():
    with pytest.raises(SacaError, match=r"sft.dagger.teacher: must be one of goal, route, got 'expert'"):
        DaggerConfig(teacher="expert").validate("sft.dagger")


def test_write_aggregate_and_determinism(mini_world, tmp_path):
    from saca.policy.data import PolicyData
    import pyarrow.parquet as pq

    def read_samples(d):
        return pq.read_table(d / "samples.parquet").to_pylist()

    cfg = VlnEgoConfig()
    eps = load_split(mini_world["root"] / "mini_r2r" / "episodes", "train")[:2]
    sim = make_simulator("embedded", mini_world["sim"], 15, mini_world["scenes"])
    base = generate_vln_ego(eps, sim, cfg, 15, tmp_path / "vln_ego", split="train")
    sim.close()

    from saca.evaluate.agents import RandomAgent

    outs = []
    for k in range(2):  # the same seed twice: the same rollouts, labels and frames
        make, _ = _sims(mini_world, 15)
        rolls = labelled_policy_rollouts(eps, make, RandomAgent(seed=5), 6, batch_size=2, max_steps=30)
        m = write_dagger_split(rolls, cfg, 15, tmp_path / f"d{k}", round_=1)
        outs.append((m, read_samples(tmp_path / f"d{k}")))
    (m0, s0), (m1, s1) = outs
    assert m0 == m1 and s0 == s1
    assert all(len(r.frames) <= 30 for r in rolls)
    assert m0["samples"] == sum(len(r.frames) for r in rolls) and m0["dagger_round"] == 1
    assert all(row["episode_id"].endswith("~d1") for row in s0)
    assert [row["actions"] for row in s0] == [list(t) for r in rolls for t in r.targets]
    for a, b in zip(sorted((tmp_path / "d0" / "frames").iterdir()), sorted((tmp_path / "d1" / "frames").iterdir())):
        assert a.read_bytes() == b.read_bytes()
    # aggregation: SFT's training data is the expert split plus the rounds' splits
    agg = PolicyData([tmp_path / "vln_ego", tmp_path / "d0"], 6)
    assert len(agg) == base["samples"] + m0["samples"]


def test_select_episodes_and_config_errors():
    assert select_episodes(list(range(10)), 0) == list(range(10))
    assert select_episodes(list(range(10)), 4) == [0, 2, 5, 7]
    assert select_episodes(list(range(3)), 5) == [0, 1, 2]
    from saca.config import from_dict

    assert from_dict(DaggerConfig, {}, "sft.dagger").rounds == 0  # off by default
    with pytest.raises(SacaError, match=r"sft\.dagger\.rounds"):
        from_dict(DaggerConfig, {"rounds": -1}, "sft.dagger")
    with pytest.raises(SacaError, match=r"sft\.dagger\.batch_size"):
        from_dict(DaggerConfig, {"batch_size": 0}, "sft.dagger")


def test_dagger_rollouts_command(mini_world, tmp_path, capsys):
    ds = json.dumps({"backend": "embedded", "turn_angle": 15, "style": "r2r"})
    sim = json.dumps({"width": 64, "height": 64})
    args = ["dagger-rollouts", "--episodes", str(mini_world["root"] / "mini_r2r" / "episodes"), "--split", "train",
            "--scenes", str(mini_world["scenes"]), "--sim", sim, "--dataset-config", ds, "--agent", "forward",
            "--dagger", json.dumps({"episodes": 2, "rollout_steps": 20}), "--round", "2",
            "--out", str(tmp_path / "r2")]
    assert main(args) == 0
    assert "forward steps into walls" in capsys.readouterr().out
    m = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert m["episodes"] == 2 and m["dagger_round"] == 2 and m["rollouts"]["rollouts"] == 2
    assert m["rollouts"]["forward_steps"] >= 1 and m["samples"] == m["rollouts"]["steps"] == m["frames"]
    bad = [*args[:-2], "--dagger", json.dumps({"rounds": "two"}), "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "sft.dagger.rounds" in capsys.readouterr().err

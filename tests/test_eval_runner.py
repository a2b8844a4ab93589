"""The batched evaluation runner on a tiny in-test simulator: resume, shard + merge, bad input."""

import json
import math

import numpy as np
import pytest

from saca import SacaError
from saca.episodes import Episode
from saca.evaluate import runner as R
from saca.evaluate.agents import ForwardAgent, OracleAgent, RandomAgent, make_agent
from saca.sim.base import Observation, SimConfig, Simulator

HALF = 5.0  # the open room is [-5, 5] x [-5, 5]


class OpenRoomSim(Simulator):
    """An empty square room: geodesic = Euclidean, the walls block forward moves."""

    backend = "test"
    scenes = {"room_a", "room_b"}

    def __init__(self, turn_angle=15.0, max_steps=500):
        super().__init__(SimConfig(max_steps=max_steps), turn_angle)
        self.scene = None

    def load_scene(self, scene_id):
        if scene_id not in self.scenes:
            raise SacaError(f"unknown scene '{scene_id}'")
        self.scene = scene_id

    def render(self, position, heading):
        return Observation(rgb=np.zeros((16, 16, 3), np.uint8))

    def move_to(self, start, target):
        if max(abs(target[0]), abs(target[2])) > HALF:
            return None
        return (float(target[0]), 0.0, float(target[2]))

    def snap_to_floor(self, position):
        return (float(position[0]), 0.0, float(position[2]))

    def geodesic_distance(self, a, b):
        return math.hypot(a[0] - b[0], a[2] - b[2])

    def shortest_path(self, a, b):
        return [tuple(a), tuple(b)]


def make_episodes(n, seed=0, scene=None):
    rng = np.random.default_rng(seed)
    eps = []
    for k in range(n):
        start = [float(v) for v in rng.uniform(-4, 4, 2)]
        goal = [float(v) for v in rng.uniform(-4, 4, 2)]
        h = float(rng.uniform(-math.pi, math.pi))
        ref = [[start[0], 0.0, start[1]], [goal[0], 0.0, goal[1]]]
        eps.append(
            Episode(
                episode_id=100 + k,
                trajectory_id=k,
                scene_id=scene or ("room_a" if k % 2 else "room_b"),
                start_position=ref[0],
                start_rotation=[0.0, math.sin(h / 2), 0.0, math.cos(h / 2)],
                goals=[{"position": ref[1], "radius": 3.0}],
                reference_path=ref,
                instruction_text="walk to the goal",
                gt_locations=ref,
            )
        )
    return eps


CFG = R.EvalConfig(batch_size=3, seed=7)


def run(tmp_path, agent, eps, shard=None, cfg=CFG, name="out"):
    return R.evaluate_split(eps, OpenRoomSim, agent, tmp_path / name, cfg, "val_unseen", agent.name, shard)


def files(d):
    return {f: (d / f).read_bytes() for f in (R.EPISODES, R.METRICS, R.RUN)}


class CountingAgent:
    """Wraps an agent; counts resets and can raise after a number of act calls (a simulated kill)."""

    def __init__(self, inner, kill_after=None):
        self.inner, self.name, self.kill_after = inner, inner.name, kill_after
        self.started, self.calls = [], 0

    def reset(self, contexts):
        self.started += [c.episode.episode_id for c in contexts]
        self.inner.reset(contexts)

    def act(self, contexts):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            raise KeyboardInterrupt("simulated kill")
        return self.inner.act(contexts)


# --- reference agents ---------------------------------------------------------------------------------------


def test_oracle_is_near_perfect_in_open_room(tmp_path):
    eps = make_episodes(12)
    res = run(tmp_path, OracleAgent(), eps)
    m = res["metrics"]
    assert m["episodes"] == 12 and m["SR"] == 1.0 and m["SPL"] > 0.95 and m["OS"] == 1.0
    assert set(json.loads((tmp_path / "out" / R.METRICS).read_text())) == {
        "TL", "NE", "OS", "SR", "SPL", "nDTW", "SDTW", "episodes"}
    assert not (tmp_path / "out" / R.JOURNAL).exists()
    recs = [json.loads(line) for line in (tmp_path / "out" / R.EPISODES).read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(12))
    r0 = recs[0]
    assert r0["actions"][-1] == 0 and r0["stop_called"] and len(r0["positions"]) == r0["steps"] + 1


def test_forward_agent_stops_at_wall(tmp_path):
    eps = make_episodes(4)
    res = run(tmp_path, ForwardAgent(), eps)
    for line in (tmp_path / "out" / R.EPISODES).read_text().splitlines():
        r = json.loads(line)
        assert r["actions"][-2:] == [1, 0] and set(r["actions"][:-1]) == {1}
        assert r["stop_called"]
        last = r["positions"][-1]
        assert max(abs(last[0]), abs(last[2])) > HALF - 0.25  # within one step of the wall
    assert res["ran"] == 4


def test_random_agent_is_seeded_per_episode(tmp_path):
    eps = make_episodes(6)
    a = run(tmp_path, RandomAgent(seed=3), eps, name="a")
    b = run(tmp_path, RandomAgent(seed=3), eps, cfg=R.EvalConfig(batch_size=1, seed=3), name="b")
    assert (tmp_path / "a" / R.EPISODES).read_bytes() == (tmp_path / "b" / R.EPISODES).read_bytes()
    c = run(tmp_path, RandomAgent(seed=4), eps, name="c")
    assert (tmp_path / "a" / R.EPISODES).read_bytes() != (tmp_path / "c" / R.EPISODES).read_bytes()
    assert a["metrics"]["SR"] < 0.5 and b["metrics"] == a["metrics"] and c["metrics"]["episodes"] == 6


class ChunkAgent:
    """Plans chunks of 1-4 actions per decision, a pure function of (episode, step): what an episode
    does cannot depend on which episodes share a call. Records each decision call's episodes."""

    name = "chunks"

    def __init__(self, waits: bool):
        self.calls = []
        if not waits:
            self.queued_actions = None  # the runner then steps every episode on every tick

    def reset(self, contexts):
        for c in contexts:
            c.memory["queue"] = []

    def queued_actions(self, ctx):
        return len(ctx.memory["queue"])

    def act(self, contexts):
        deciding = [c for c in contexts if not c.memory["queue"]]
        if deciding:
            self.calls.append(sorted(c.episode.episode_id for c in deciding))
        for c in deciding:
            k = c.episode.episode_id * 7 + c.step
            length = 1 + k % 4
            stop_at = 20 + 9 * (c.episode.episode_id % 5)
            c.memory["queue"] = [0 if c.step + j >= stop_at else 1 + (k + j) % 3 for j in range(length)]
        return [c.memory["queue"].pop(0) for c in contexts]


def test_chunked_agents_decide_together_without_changing_any_episode(tmp_path):
    eps = make_episodes(11)
    cfg = R.EvalConfig(batch_size=4, seed=7)
    waiting, lockstep = ChunkAgent(waits=True), ChunkAgent(waits=False)
    run(tmp_path, waiting, eps, cfg=cfg, name="a")
    run(tmp_path, lockstep, eps, cfg=cfg, name="b")
    # each episode took the same actions, positions and metrics
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert sum(map(len, waiting.calls)) == sum(map(len, lockstep.calls))  # the same decisions
    # ... in fewer, fuller calls: while 4 episodes are active, every call holds all 4
    assert len(waiting.calls) < len(lockstep.calls) / 2
    sizes = [len(c) for c in waiting.calls]  # 31 calls here, against 75
    assert sizes == sorted(sizes, reverse=True) and sizes.count(4) >= len(sizes) - 4  # only the tail is smaller
    assert max(map(len, lockstep.calls)) <= 4


def test_step_limit_without_stop(tmp_path):
    class Spin:
        name = "spin"

        def reset(self, contexts):
            pass

        def act(self, contexts):
            return [2] * len(contexts)

    eps = make_episodes(2)
    res = R.evaluate_split(eps, lambda: OpenRoomSim(max_steps=20), Spin(), tmp_path / "o", CFG, "val_unseen", "spin")
    rec = json.loads((tmp_path / "o" / R.EPISODES).read_text().splitlines()[0])
    assert rec["steps"] == 20 and not rec["stop_called"] and rec["metrics"]["SR"] == 0.0
    assert rec["metrics"]["TL"] == 0.0 and res["steps"] == 40


# --- resume ------------------------------------------------------------------------------------------------------


def test_killed_run_resumes_without_recomputing(tmp_path):
    eps = make_episodes(10)
    full = run(tmp_path, OracleAgent(), eps, name="full")
    killed = CountingAgent(OracleAgent(), kill_after=60)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, killed, eps, name="resumed")
    d = tmp_path / "resumed"
    assert not (d / R.METRICS).exists() and not (d / R.EPISODES).exists()  # no partial outputs
    journal = (d / R.JOURNAL).read_text().splitlines()
    assert 0 < len(journal) < 10
    finished = {json.loads(line)["episode_id"] for line in journal}
    # a kill in the middle of writing a line: half a record, no newline
    with open(d / R.JOURNAL, "a") as fh:
        fh.write('{"episode_id": 999, "actions": [1, 1')
    again = CountingAgent(OracleAgent())
    res = run(tmp_path, again, eps, name="resumed")
    assert res["skipped"] == len(finished) and res["ran"] == 10 - len(finished)
    assert finished.isdisjoint(again.started) and len(again.started) == 10 - len(finished)
    assert files(d) == files(tmp_path / "full")
    assert res["metrics"] == full["metrics"]
    # a finished run resumed again computes nothing and rewrites the same bytes
    idle = CountingAgent(OracleAgent())
    assert run(tmp_path, idle, eps, name="resumed")["ran"] == 0 and idle.started == []
    assert files(d) == files(tmp_path / "full")


def test_resume_refuses_a_different_run(tmp_path):
    eps = make_episodes(4)
    run(tmp_path, OracleAgent(), eps)
    with pytest.raises(SacaError, match=r"run.json: this output directory holds a different run \(agent_id: 'oracle'"):
        run(tmp_path, ForwardAgent(), eps)


def test_resume_refuses_a_different_unfinished_run(tmp_path):
    eps = make_episodes(10)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, CountingAgent(OracleAgent(), kill_after=60), eps)
    assert (tmp_path / "out" / R.JOURNAL).exists()
    with pytest.raises(SacaError, match=r"holds a different run \(total_episodes: 10 there, 9 now\)"):
        run(tmp_path, OracleAgent(), eps[:9])


def test_a_run_json_without_records_is_replaced(tmp_path):
    # what Snakemake leaves when it reruns an evaluation after a config edit: it deletes
    # the declared outputs (episodes.jsonl, metrics.json), not run.json
    eps = make_episodes(4)
    run(tmp_path, OracleAgent(), eps)
    d = tmp_path / "out"
    (d / R.EPISODES).unlink()
    (d / R.METRICS).unlink()
    res = run(tmp_path, ForwardAgent(), eps[:3])
    assert res["ran"] == 3 and res["skipped"] == 0
    ident = json.loads((d / R.RUN).read_text())
    assert ident["agent"] == "forward" and ident["total_episodes"] == 3
    assert len((d / R.EPISODES).read_text().splitlines()) == 3


def test_journal_corrupt_in_the_middle_is_an_error(tmp_path):
    eps = make_episodes(10)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, CountingAgent(OracleAgent(), kill_after=60), eps)
    j = tmp_path / "out" / R.JOURNAL
    j.write_text("not json\n" + j.read_text())
    with pytest.raises(SacaError, match=r"episodes.partial.jsonl:1: malformed journal line"):
        run(tmp_path, OracleAgent(), eps)


# --- shards --------------------------------------------------------------------------------------------------------


def test_shard_and_merge_equals_unsharded(tmp_path):
    eps = make_episodes(11)
    run(tmp_path, RandomAgent(seed=7), eps, name="whole")
    for i in range(3):
        res = run(tmp_path, RandomAgent(seed=7), eps, shard=(i, 3), name="sharded")
        assert res["out_dir"] == str(tmp_path / "sharded" / "shards" / f"{i}-of-3")
    merged = R.merge_shards(tmp_path / "sharded")
    assert merged["episodes"] == 11
    assert files(tmp_path / "sharded") == files(tmp_path / "whole")


def test_merge_refuses_missing_or_unfinished_shard(tmp_path):
    eps = make_episodes(6)
    run(tmp_path, OracleAgent(), eps, shard=(0, 2))
    with pytest.raises(SacaError, match="shard 1-of-2 is missing"):
        R.merge_shards(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, CountingAgent(OracleAgent(), kill_after=5), eps, shard=(1, 2))
    with pytest.raises(SacaError, match="1-of-2: shard is not finished"):
        R.merge_shards(tmp_path / "out")
    assert not (tmp_path / "out" / R.METRICS).exists()
    with pytest.raises(SacaError, match="no shard directories"):
        R.merge_shards(tmp_path / "nothing")


@pytest.mark.parametrize("spec", ["3/2", "2/2", "-1/2", "1/0", "a/b", "1", "0/2/3"])
def test_bad_shard_spec_names_it(spec):
    with pytest.raises(SacaError, match=f"--shard '{spec}'"):
        R.parse_shard(spec)


def test_shard_spec_ok():
    assert R.parse_shard("1/3") == (1, 3) and R.parse_shard(None) is None


# --- bad input -----------------------------------------------------------------------------------------------------


def test_missing_scene_names_episode_and_scene(tmp_path):
    eps = make_episodes(3)
    eps[2].scene_id = "room_zz"
    with pytest.raises(SacaError, match=r"episode 102 \(scene 'room_zz'\): unknown scene 'room_zz'"):
        run(tmp_path, OracleAgent(), eps)
    assert not (tmp_path / "out" / R.METRICS).exists() and not (tmp_path / "out" / R.EPISODES).exists()


def test_nonexistent_checkpoint_names_it(tmp_path):
    missing = tmp_path / "ckpt" / "step_100"
    with pytest.raises(SacaError, match=f"agent '{missing}': not a reference agent"):
        make_agent(str(missing))
    assert make_agent("random", seed=5).seed == 5


def test_agent_options_cannot_set_the_seed(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(SacaError, match=r"agent_options.seed is not allowed; the evaluation seed"):
        make_agent(str(ckpt), seed=1, options={"seed": 2})


def test_bad_agent_action_is_an_error(tmp_path):
    class Bad:
        name = "bad"

        def reset(self, contexts):
            pass

        def act(self, contexts):
            return [7] * len(contexts)

    with pytest.raises(SacaError, match=r"agent 'bad' returned action 7 for episode 10[01]; expected 0-3"):
        run(tmp_path, Bad(), make_episodes(2))
    assert not (tmp_path / "out" / R.METRICS).exists()


def test_missing_gt_locations(tmp_path):
    eps = make_episodes(2)
    eps[1].gt_locations = None
    with pytest.raises(SacaError, match="episode 101 has no ground-truth 'locations'"):
        run(tmp_path, OracleAgent(), eps)
    res = run(tmp_path, OracleAgent(), eps, cfg=R.EvalConfig(reference="reference_path"), name="ref")
    assert res["metrics"]["episodes"] == 2


def _leaderboard(eps):
    for e in eps:
        e.goals, e.reference_path, e.gt_locations = [], [], None
    return eps


def test_a_leaderboard_split_writes_trajectories_and_no_metrics(tmp_path):
    eps = _leaderboard(make_episodes(5))
    res = R.evaluate_split(eps, OpenRoomSim, ForwardAgent(), tmp_path / "lb", CFG, "test", "forward")
    out = tmp_path / "lb"
    assert res["metrics"] is None and res["predictions"] == str(out / R.PREDICTIONS)
    assert not (out / R.METRICS).exists() and not (out / R.JOURNAL).exists()
    assert json.loads((out / R.RUN).read_text())["leaderboard"] is True
    records = [json.loads(line) for line in (out / R.EPISODES).read_text().splitlines()]
    assert all("metrics" not in r for r in records)
    pred = json.loads((out / R.PREDICTIONS).read_text())
    assert sorted(pred, key=int) == [str(e.episode_id) for e in eps]
    for e, r in zip(eps, records):
        steps = pred[str(e.episode_id)]
        # the start, then one entry per step (VLN-CE inference: get_info after reset and after each step)
        assert len(steps) == r["steps"] + 1 == len(r["actions"]) + 1
        assert [s["position"] for s in steps] == r["positions"] and r["stop_called"]
        assert [s["stop"] for s in steps] == [False] * r["steps"] + [True]
        assert steps[0]["heading"] == pytest.approx(2 * math.atan2(e.start_rotation[1], e.start_rotation[3]))
        assert max(abs(steps[-1]["position"][0]), abs(steps[-1]["position"][2])) > HALF - 0.25  # walked to a wall
    # sharded and merged: the same files
    for i in range(2):
        R.evaluate_split(eps, OpenRoomSim, ForwardAgent(), tmp_path / "sh", CFG, "test", "forward", (i, 2))
    assert R.merge_shards(tmp_path / "sh") is None
    for f in (R.EPISODES, R.PREDICTIONS, R.RUN):
        assert (tmp_path / "sh" / f).read_bytes() == (out / f).read_bytes()


def test_what_has_no_gt_is_not_scored(tmp_path):
    eps = _leaderboard(make_episodes(3))
    with pytest.raises(SacaError, match=r"^episode 10\d has no goals \(a leaderboard split, e\.g\. R2R-CE test\): it "
                                        r"can be run for the leaderboard but not scored or taught here$"):
        R.evaluate_split(eps, OpenRoomSim, OracleAgent(), tmp_path / "o", CFG, "test", "oracle")
    mixed = make_episodes(3)
    mixed[2].goals = []
    with pytest.raises(SacaError, match=r"episode 102 has no goals, 2 of 3 episodes have"):
        run(tmp_path, OracleAgent(), mixed)
    no_gt = make_episodes(3)
    for e in no_gt:
        e.gt_locations = None
    with pytest.raises(SacaError, match=r"^episodes: split 'val_unseen': episode 100 has no ground-truth 'locations' "
                                        r"for nDTW \(3 of 3 episodes\); it cannot be scored"):
        run(tmp_path, OracleAgent(), no_gt, name="nogt")
    assert not (tmp_path / "nogt").exists()  # refused before anything ran


def test_config_errors():
    from saca.config import from_dict

    with pytest.raises(SacaError, match="did you mean 'batch_size'"):
        from_dict(R.EvalConfig, {"batchsize": 2}, "evaluation")
    with pytest.raises(SacaError, match="evaluation.dtw: unknown 'fast'"):
        from_dict(R.EvalConfig, {"dtw": "fast"}, "evaluation")
    with pytest.raises(SacaError, match="must include val_unseen"):
        from_dict(R.EvalConfig, {"splits": ["val_seen"]}, "evaluation")

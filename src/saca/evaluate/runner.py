"""The batched VLN-CE evaluation runner: resumable, shardable, atomic outputs.

``evaluate_split`` runs every episode of a split (or of one shard of it) until
STOP or the simulator's step limit (500), keeping up to ``batch_size``
episodes active at once, one simulator per slot (reused from episode to
episode; backends cache their scenes). The agent's ``act`` is called once per
environment step of each episode it steps, with the contexts of those episodes
(all active ones, unless the agent batches its decisions as below).

An agent that plans several actions per decision (a policy executing chunks of
``k`` actions) exposes ``queued_actions(ctx)``. While some active episodes still
have planned actions, only those are stepped; the others wait, without taking
a step, until every active episode needs a decision, and then all of them
decide in one batched call. A simulated episode does not notice the wait: it
sees the same frames and takes the same number of steps. Each ``generate``
call then holds every active episode, instead of the one or two whose chunks
happen to end on the same step (``benchmarks/eval_throughput.py`` measures
both). What changes is which episodes share a call, and so the sampled actions.

Files in the output directory (``results/{dataset}/eval/{run}/{split}``, or
``.../shards/{i}-of-{n}`` for a shard):

* ``episodes.partial.jsonl``: the journal, one record per finished episode,
  flushed and fsync'ed line by line. A killed run resumes from it and skips
  the episodes it holds (a truncated last line from the kill is dropped).
* ``run.json``: what the run is (agent, split, shard, episode ids, settings;
  a policy agent by the sha256 of its weights and its settings, not by its
  path); a resumed run with different settings is refused rather than mixed,
  and the unfinished records of another agent (changed weights) are
  discarded with a warning, the run starting afresh. A
  ``run.json`` alone, without records (Snakemake deletes a rule's outputs
  before rerunning it), describes nothing left and is replaced.
* ``episodes.jsonl`` and ``metrics.json``: written atomically, and only
  once every episode is done; the journal is then removed. Records are sorted
  by their index in the split file, so a merged sharded run gives the same
  bytes as an unsharded one.

A *leaderboard split* (no episode has goals: R2R-CE ``test``, imported without
``_gt``) is run but not scored: instead of ``metrics.json`` the run writes
``predictions.json``, the trajectories in the form VLN-CE's ``inference`` writes
for the leaderboard (``{episode_id: [{"position", "heading", "stop"}, ...]}``,
the start and one entry per step; ``vlnce_baselines/common/base_il_trainer.py``,
``VLNCEInferenceEnv.get_info``), and its records hold no metrics. Scoring
episodes without the ground truth it needs is refused before anything runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from saca import SacaError
from saca.episodes import SPLITS, Episode
from saca.evaluate import metrics as M
from saca.evaluate.agent_api import EpisodeContext
from saca.io import read_journal, read_json, read_jsonl, write_json, write_jsonl
from saca.sim.base import Action, Simulator

log = logging.getLogger(__name__)

JOURNAL = "episodes.partial.jsonl"
EPISODES = "episodes.jsonl"
METRICS = "metrics.json"
RUN = "run.json"
PREDICTIONS = "predictions.json"
REFERENCES = ("gt_locations", "reference_path")
# run.json keys that must agree for a resumed run (or for the shards of one merge)
_IDENTITY = ("agent_id", "split", "dtw", "reference", "seed", "max_steps", "turn_angle", "total_episodes", "leaderboard")


@dataclass
class EvalConfig:
    """The ``evaluation`` config section.

    ``runs``: the reference runs (and, via ``RUN_AGENTS`` in
    ``workflow/rules/evaluate.smk``, policy runs) the workflow evaluates;
    ``splits``: the splits (``val_unseen`` always); ``batch_size``: episodes
    active at once; ``dtw``: ``exact`` or ``fastdtw`` (VLN-CE's default, for
    comparison with published numbers); ``reference``: what nDTW compares
    against, ``gt_locations`` (VLN-CE: the ``locations`` of
    ``{split}_gt.json.gz``) or ``reference_path``; ``seed``: the agent seed;
    ``plots``: episodes drawn top-down per run and split; ``shards``: how many
    processes the workflow splits one evaluation into; ``agents``: policies
    trained elsewhere, ``{run name: agent.json path}`` (``{dataset}`` filled
    per dataset), evaluated by the workflow on this config's episodes;
    ``agent_options``: keyword arguments for a policy checkpoint's agent loader.
    """

    runs: list = field(default_factory=lambda: ["random", "forward", "oracle"])
    splits: list = field(default_factory=lambda: ["val_unseen"])
    batch_size: int = 8
    dtw: str = "exact"
    reference: str = "gt_locations"
    seed: int = 0
    plots: int = 4
    shards: int = 1
    agents: dict = field(default_factory=dict)
    agent_options: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SacaError(f"{where}.batch_size: must be a positive integer, got {self.batch_size!r}")
        if self.dtw not in M.DTW_METHODS:
            raise SacaError(f"{where}.dtw: unknown '{self.dtw}'; choose one of {', '.join(M.DTW_METHODS)}")
        if self.reference not in REFERENCES:
            raise SacaError(f"{where}.reference: unknown '{self.reference}'; choose one of {', '.join(REFERENCES)}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise SacaError(f"{where}.splits: unknown split '{bad[0]}'; choose from {', '.join(SPLITS)}")
        if "val_unseen" not in self.splits:
            raise SacaError(f"{where}.splits: must include val_unseen (the split every paper reports)")
        if not isinstance(self.plots, int) or self.plots < 0:
            raise SacaError(f"{where}.plots: must be a non-negative integer, got {self.plots!r}")
        if not isinstance(self.shards, int) or self.shards < 1:
            raise SacaError(f"{where}.shards: must be a positive integer, got {self.shards!r}")
        if not self.runs:
            raise SacaError(f"{where}.runs: name at least one run")


# --- shards -------------------------------------------------------------------------------------------


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` stays ``None``."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise SacaError(f"--shard '{spec}': expected i/n with 0 <= i < n (0-based), e.g. 0/2")
    return int(m.group(1)), int(m.group(2))


def shard_dir(out_dir: str | Path, shard: tuple[int, int] | None) -> Path:
    out_dir = Path(out_dir)
    return out_dir if shard is None else out_dir / "shards" / f"{shard[0]}-of-{shard[1]}"


def select_shard(episodes: Sequence[Episode], shard: tuple[int, int] | None) -> list[tuple[int, Episode]]:
    """``(index in split, episode)`` pairs of the shard: index modulo n == i."""
    return [(k, e) for k, e in enumerate(episodes) if shard is None or k % shard[1] == shard[0]]


# --- journal (read with saca.io.read_journal, which drops a torn last line) ------------------------------


def _append(fh, row: dict) -> None:
    fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


# --- one episode ------------------------------------------------------------------------------------------


def nd_reference(episode: Episode, reference: str, source: str) -> list[list[float]]:
    """The locations nDTW compares against (``gt_locations`` as VLN-CE, or ``reference_path``)."""
    if reference == "reference_path":
        return episode.reference_path
    if not episode.gt_locations:
        raise SacaError(
            f"{source}: episode {episode.episode_id!r} has no ground-truth 'locations' for nDTW; "
            "use evaluation.reference: reference_path"
        )
    return episode.gt_locations


def is_leaderboard(episodes: Sequence[Episode], source: str) -> bool:
    """True when no episode has goals (a leaderboard split: run, not scored); a mix is an error."""
    without = [e for e in episodes if not e.has_goal]
    if not without:
        return False
    if len(without) < len(episodes):
        raise SacaError(f"{source}: episode {without[0].episode_id!r} has no goals, {len(episodes) - len(without)} "
                        f"of {len(episodes)} episodes have; a split has them for all episodes or none "
                        "(a leaderboard split)")
    return True


def check_scorable(episodes: Sequence[Episode], cfg: EvalConfig, split: str, source: str) -> None:
    """Refuse, in one line and before anything runs, to score episodes without the reference nDTW needs."""
    if cfg.reference != "gt_locations":
        return
    missing = [e for e in episodes if not e.gt_locations]
    if missing:
        raise SacaError(
            f"{source}: split '{split}': episode {missing[0].episode_id!r} has no ground-truth 'locations' for nDTW "
            f"({len(missing)} of {len(episodes)} episodes); it cannot be scored: use evaluation.reference: "
            "reference_path, or the split's _gt file"
        )


def leaderboard_predictions(records: Sequence[dict]) -> dict:
    """VLN-CE's leaderboard file from leaderboard records: ``{str(episode_id): [{position, heading, stop}]}``,
    the start pose and then one entry per step, ``stop`` true on the entry after STOP only."""
    out = {}
    for r in records:
        n = len(r["positions"])
        out[str(r["episode_id"])] = [
            {"position": list(p), "heading": h, "stop": bool(r["stop_called"] and k == n - 1)}
            for k, (p, h) in enumerate(zip(r["positions"], r["headings"]))
        ]
    return out


@dataclass
class _Slot:
    sim: Simulator
    ctx: EpisodeContext | None = None
    index: int = -1
    positions: list = field(default_factory=list)
    headings: list = field(default_factory=list)


def _trajectory(slot: _Slot) -> dict:
    """What every episode record holds: the episode's ids and the agent's trajectory."""
    ep, sim = slot.ctx.episode, slot.sim
    return {
        "episode_id": ep.episode_id,
        "index": slot.index,
        "scene_id": ep.scene_id,
        "trajectory_id": ep.trajectory_id,
        "actions": list(slot.ctx.actions),
        "positions": [list(p) for p in slot.positions],
        "stop_called": bool(sim.state.stopped),
        "steps": sim.state.steps,
    }


def _finish(slot: _Slot, cfg: EvalConfig, source: str, scored: bool = True) -> dict:
    record = _trajectory(slot)
    if not scored:  # a leaderboard split: the trajectory and its headings, no metrics
        return {**record, "headings": list(slot.headings)}
    ep, sim = slot.ctx.episode, slot.sim
    goal = ep.goal_position
    distances = M.geodesic_distances(slot.positions, lambda p: sim.geodesic_distance(p, goal), goal=goal)
    if not all(map(math.isfinite, distances)):
        raise SacaError(f"{source}: episode {ep.episode_id!r} (scene {ep.scene_id}): goal unreachable from the trajectory")
    values = M.episode_metrics(
        slot.positions, record["stop_called"], nd_reference(ep, cfg.reference, source), distances=distances, dtw=cfg.dtw
    )
    return {**record, "d0": distances[0], "metrics": values}


# --- the runner ---------------------------------------------------------------------------------------------


def _run_identity(agent_spec, split, cfg, sim: Simulator, total, selected, shard, agent_id=None, leaderboard=False) -> dict:
    extra = {"leaderboard": True} if leaderboard else {}  # absent for a scored run (its run.json as before)
    return {
        **extra,
        "agent": str(agent_spec),
        # what the agent is: a policy's weights and settings by content (saca.policy.agent.load_policy_agent),
        # a reference agent by its name; the path in "agent" may differ (a moved checkout) and is not compared
        "agent_id": agent_id or str(agent_spec),
        "split": split,
        "dtw": cfg.dtw,
        "reference": cfg.reference,
        "seed": cfg.seed,
        "max_steps": sim.config.max_steps,
        "turn_angle": sim.turn_angle,
        "total_episodes": total,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "episode_ids": [e.episode_id for _, e in selected],
    }


def _check_identity(path: Path, old: dict, new: dict) -> None:
    for key in (*_IDENTITY, "shard", "episode_ids"):
        if old.get(key) != new.get(key):
            shown = (lambda v: f"{len(v)} episodes") if key == "episode_ids" else repr
            raise SacaError(
                f"{path}: this output directory holds a different run ({key}: {shown(old.get(key))} there, "
                f"{shown(new.get(key))} now); delete it or choose another output directory"
            )


def evaluate_split(
    episodes: Sequence[Episode],
    make_sim: Callable[[], Simulator],
    agent,
    out_dir: str | Path,
    cfg: EvalConfig,
    split: str,
    agent_spec: str | None = None,
    shard: tuple[int, int] | None = None,
    source: str = "episodes",
    progress_every: float = 30.0,
) -> dict:
    """Evaluate ``agent`` on ``episodes`` (one split) and write the outputs described in the module docstring.

    Returns a summary: ``metrics`` (the aggregate; None for a leaderboard split),
    ``predictions`` (the leaderboard file's path, or None), ``out_dir``, ``ran``
    (episodes simulated now), ``skipped`` (finished before), ``steps``
    (environment steps taken now), ``seconds``.
    """
    out = shard_dir(out_dir, shard)
    leaderboard = is_leaderboard(episodes, source)
    if not leaderboard:
        check_scorable(episodes, cfg, split, source)
    selected = select_shard(episodes, shard)
    if not selected:
        raise SacaError(f"{source}: shard {shard[0]}/{shard[1]} selects no episodes of {len(episodes)}")
    by_id = {e.episode_id: (k, e) for k, e in selected}
    t_start = time.perf_counter()

    sims: list[Simulator] = [make_sim()]
    try:
        for _, ep in selected:
            made_for = ep.info.get("turn_angle")
            if made_for is not None and float(made_for) != sims[0].turn_angle:
                raise SacaError(
                    f"{source}: episode {ep.episode_id!r} was made for {made_for} degree turns, the simulator "
                    f"turns {sims[0].turn_angle:g} degrees (check the dataset's turn_angle)"
                )
        identity = _run_identity(agent_spec or getattr(agent, "name", "?"), split, cfg, sims[0], len(episodes), selected,
                                 shard, getattr(agent, "identity", None), leaderboard)
        run_path = out / RUN
        journal = out / JOURNAL
        has_records = (out / EPISODES).exists() or journal.exists()
        if run_path.exists() and journal.exists() and not (out / EPISODES).exists():
            old = read_json(run_path)
            if old.get("agent_id") != identity["agent_id"] and all(old.get(k) == identity.get(k) for k in (*_IDENTITY[1:], "shard", "episode_ids")):
                # an unfinished run of another agent (changed weights or settings): its records are of no use
                log.warning("%s: the unfinished records are of another agent (%s there, %s now); starting afresh",
                            out, old.get("agent_id"), identity["agent_id"])
                journal.unlink()
                has_records = False
        if run_path.exists() and has_records:
            _check_identity(run_path, read_json(run_path), identity)
        elif run_path.exists():
            # no records to mix with (e.g. Snakemake removed the outputs before a rerun):
            # the old run.json only describes results that are gone, and is replaced
            log.info("%s: replacing %s of a run whose results are gone", out, RUN)
        done: dict = {}
        # a finished run's records are in episodes.jsonl; an unfinished one's in the journal
        previous = read_jsonl(out / EPISODES) if (out / EPISODES).exists() else []
        for rec in previous + read_journal(journal):
            if rec.get("episode_id") not in by_id:
                raise SacaError(
                    f"{out}: record for episode {rec.get('episode_id')!r}, which is not in this run's "
                    f"{len(selected)} episodes; delete the directory or choose another output directory"
                )
            done[rec["episode_id"]] = rec
        pending = [(k, e) for k, e in selected if e.episode_id not in done]
        if done:
            log.info("%s: %d of %d episodes already finished; %d to run", out, len(done), len(selected), len(pending))
        steps = 0
        if pending:
            write_json(run_path, identity)
            with open(journal, "a", encoding="utf-8") as fh:
                steps = _run_batched(pending, sims, make_sim, agent, cfg, source, done, fh, progress_every,
                                     scored=not leaderboard)
        records = sorted(done.values(), key=lambda r: r["index"])
        summary = None if leaderboard else M.aggregate(r["metrics"] for r in records)
        from saca.provenance import write_provenance

        write_provenance(out, {"run": identity, "evaluation": asdict(cfg), "agent": agent_spec}, seed=cfg.seed,
                         device=str(getattr(agent, "device", "cpu")))
        write_json(run_path, identity)
        write_jsonl(out / EPISODES, records)
        if leaderboard:
            write_json(out / PREDICTIONS, leaderboard_predictions(records))
        else:
            write_json(out / METRICS, summary)
        journal.unlink(missing_ok=True)
    finally:
        for sim in sims:
            sim.close()
    return {
        "metrics": summary,
        "predictions": str(out / PREDICTIONS) if leaderboard else None,
        "out_dir": str(out),
        "ran": len(pending),
        "skipped": len(selected) - len(pending),
        "steps": steps,
        "seconds": time.perf_counter() - t_start,
    }


def _run_batched(pending, sims, make_sim, agent, cfg, source, done, fh, progress_every, scored=True) -> int:
    # Grouped by scene (stable), so that each simulator slot rarely switches scenes; records are
    # sorted by split index at the end, so the processing order does not show in the outputs.
    queue = sorted(pending, key=lambda item: str(item[1].scene_id), reverse=True)
    while len(sims) < min(cfg.batch_size, len(pending)):
        sims.append(make_sim())
    slots = [_Slot(sim) for sim in sims]
    steps = 0
    from saca.progress import Progress

    progress = Progress(len(pending) + len(done), f"evaluate {source}", unit="episode", every=progress_every,
                        initial=len(done))

    def start(slot: _Slot) -> bool:
        if not queue:
            slot.ctx = None
            return False
        index, ep = queue.pop()
        try:
            state = slot.sim.reset(ep)
        except SacaError as err:
            raise SacaError(f"{source}: episode {ep.episode_id!r} (scene '{ep.scene_id}'): {err}") from err
        slot.ctx, slot.index, slot.positions = EpisodeContext(episode=ep, sim=slot.sim), index, [state.position]
        slot.headings = [state.heading]
        return True

    agent.reset([s.ctx for s in slots if start(s)])
    queued = getattr(agent, "queued_actions", None)
    while True:
        active = [s for s in slots if s.ctx is not None]
        if not active:
            progress.close()
            return steps
        if queued is not None:
            # step the episodes with planned actions; the rest wait to decide together
            active = [s for s in active if queued(s.ctx) > 0] or active
        actions = agent.act([s.ctx for s in active])
        if len(actions) != len(active):
            raise SacaError(f"agent '{getattr(agent, 'name', agent)}' returned {len(actions)} actions for {len(active)} episodes")
        for slot, action in zip(active, actions):
            try:
                action = int(Action(int(action)))
            except (ValueError, TypeError):
                raise SacaError(
                    f"agent '{getattr(agent, 'name', agent)}' returned action {action!r} for episode "
                    f"{slot.ctx.episode.episode_id!r}; expected 0-3 (STOP, MOVE_FORWARD, TURN_LEFT, TURN_RIGHT)"
                ) from None
            state = slot.sim.step(action)
            steps += 1
            slot.ctx.actions.append(action)
            slot.ctx.step += 1
            slot.positions.append(state.position)
            slot.headings.append(state.heading)
            if slot.sim.episode_over:
                rec = _finish(slot, cfg, source, scored)
                _append(fh, rec)
                done[rec["episode_id"]] = rec
                progress.update(1)
                if start(slot):
                    agent.reset([slot.ctx])


# --- merge -------------------------------------------------------------------------------------------


def merge_shards(out_dir: str | Path) -> dict:
    """Combine ``out_dir/shards/{i}-of-{n}`` into ``out_dir/episodes.jsonl`` + ``metrics.json``.

    Every shard ``0..n-1`` must be complete (its ``metrics.json``, for a
    leaderboard split its ``predictions.json``, exists) and from the same run;
    together they must hold every episode of the split exactly once. Nothing is
    written otherwise. A leaderboard split's merge writes ``predictions.json``
    and returns None.
    """
    out = Path(out_dir)
    root = out / "shards"
    found = sorted(root.glob("*-of-*")) if root.is_dir() else []
    if not found:
        raise SacaError(f"{root}: no shard directories ({{i}}-of-{{n}}) to merge")
    counts = {d.name.split("-of-")[1] for d in found}
    if len(counts) != 1:
        raise SacaError(f"{root}: shards of different counts ({', '.join(sorted(counts))}); keep one sharding")
    n = int(counts.pop())
    names = {d.name for d in found}
    missing = [f"{i}-of-{n}" for i in range(n) if f"{i}-of-{n}" not in names]
    if missing:
        raise SacaError(f"{root}: shard {missing[0]} is missing ({len(missing)} of {n} missing)")
    records, ids, first = [], set(), None
    for i in range(n):
        d = root / f"{i}-of-{n}"
        marker = PREDICTIONS if (d / RUN).exists() and read_json(d / RUN).get("leaderboard") else METRICS
        if not (d / marker).exists():
            raise SacaError(f"{d}: shard is not finished (no {marker}); run it again to resume")
        run = read_json(d / RUN)
        if first is None:
            first = run
        for key in _IDENTITY:
            if run.get(key) != first.get(key):
                raise SacaError(f"{d / RUN}: {key} {run.get(key)!r} differs from shard 0's {first.get(key)!r}")
        rows = read_jsonl(d / EPISODES)
        got = [r["episode_id"] for r in rows]
        if sorted(map(str, got)) != sorted(map(str, run["episode_ids"])):
            raise SacaError(f"{d / EPISODES}: holds {len(got)} episodes, run.json lists {len(run['episode_ids'])}")
        dup = ids.intersection(got)
        if dup:
            raise SacaError(f"{d}: episode {sorted(dup, key=str)[0]!r} also appears in another shard")
        ids.update(got)
        records.extend(rows)
    if len(records) != first["total_episodes"]:
        raise SacaError(f"{root}: shards hold {len(records)} episodes, the split has {first['total_episodes']}")
    records.sort(key=lambda r: r["index"])
    leaderboard = bool(first.get("leaderboard"))
    summary = None if leaderboard else M.aggregate(r["metrics"] for r in records)
    merged = {**first, "shard": None, "episode_ids": [r["episode_id"] for r in records]}
    write_json(out / RUN, merged)
    write_jsonl(out / EPISODES, records)
    if leaderboard:
        write_json(out / PREDICTIONS, leaderboard_predictions(records))
    else:
        write_json(out / METRICS, summary)
    return summary

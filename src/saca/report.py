"""Reports: the paper's numbers beside the reproduced ones (issue 14; the notebooks in workflow/notebooks/).

The logic lives here, importable and tested; the notebooks only call it and draw.

* :func:`paper_numbers` reads ``config/paper-numbers.csv`` (every number of the
  paper's tables, one row per table x row x benchmark x metric);
* :func:`comparison` puts a table's paper numbers beside the reproduced metrics
  (``results/{dataset}/eval/{run}/{split}/metrics.json``, run ``sft`` or
  ``rft-{variant}``), converting the reproduced fractions to the paper's percent;
* :func:`fig5_curves` reads the validation success rate against the RFT update
  from each variant's ``train_log.jsonl`` (SACA Fig. 5);
* :func:`paired_comparison` compares a variant with a baseline on the same
  evaluation episodes (bootstrap over episodes, sign test over seeds);
* :func:`mechanism_counts` totals SACA's mechanisms (repair, AFR, L_con) from
  the RFT journals;
* :func:`wall_collision_share` and :func:`behaviour` read an evaluation's
  trajectories: forward steps into walls; how episodes end (STOP, the step
  limit, a STOP at the goal once there) and how many turns are undone;
* :func:`appendix_a` reads the share of failed episodes with ``rho > 0.5`` from
  the audits (SACA Appendix A);
* :func:`run_notebook` executes a parameterised notebook with papermill and
  renders it to HTML (code cells hidden), atomically.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from saca import SacaError
from saca.sim.base import Action

COLUMNS = ("table", "group", "row", "label", "variant", "benchmark", "split", "metric", "value", "note")
PERCENT = ("SR", "OS", "SPL", "nDTW", "SDTW")  # the paper reports them in %, the metrics files as fractions
TABLES = ("table1", "table2", "table3", "table4", "table5")


def paper_numbers(path) -> list[dict]:
    """The rows of the paper-numbers CSV; a missing column or a non-numeric value names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SacaError(f"{path}: the paper-numbers file does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SacaError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
        rows = []
        for n, r in enumerate(reader, 2):
            try:
                r["value"] = float(r["value"])
            except ValueError as err:
                raise SacaError(f"{path}:{n}: value {r['value']!r} is not a number") from err
            rows.append(r)
    return rows


def run_name(variant: str, seed: int | None = None, train_seed: int = 0) -> str:
    """The evaluation run of a paper row's variant and seed: ``rft-{variant}-s{seed}`` (one per entry of the
    config's ``seeds``; the RFT training seed and the evaluation seed are both ``seed``); for the SFT policy
    ``sft`` (evaluation seed 0, or ``seed`` None) and ``sft-s{seed}`` (the same checkpoint, evaluation seed
    ``seed``: the SFT row's spread over evaluation seeds), and for a further SFT training seed (``sft.train_seeds``)
    ``sft-t{train_seed}`` and ``sft-t{train_seed}-s{seed}``."""
    if variant == "sft":
        base = "sft" if train_seed == 0 else f"sft-t{train_seed}"
        return base if seed in (None, 0) else f"{base}-s{seed}"
    return f"rft-{variant}" if seed is None else f"rft-{variant}-s{seed}"


def table_variants(paper: Sequence[Mapping], table: str) -> list[str]:
    """The reproducible rows of ``table`` (those with a variant), in the paper's row order, without repeats."""
    out = []
    for r in sorted((r for r in paper if r["table"] == table and r["variant"]), key=lambda r: int(r["row"] or 0)):
        if r["variant"] not in out:
            out.append(r["variant"])
    return out


def metrics_path(results, dataset: str, variant: str, split: str = "val_unseen", seed: int | None = None) -> Path:
    return Path(results) / dataset / "eval" / run_name(variant, seed) / split / "metrics.json"


def mean_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value) of the per-seed numbers of a row."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def comparison(paper: Sequence[Mapping], table: str, results, benchmarks: Mapping[str, str],
               split: str = "val_unseen", built: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[dict]:
    """One dict per (row, benchmark, metric) of ``table``: the paper's value, the reproduced one (percent for
    :data:`PERCENT`, metres for NE) and the difference. ``benchmarks`` maps a paper benchmark (``R2R-CE``) to a
    dataset of this config (``mini_r2r``); rows without a variant (other published methods, Table 1) carry the
    paper's number only. ``built``: the variants this workflow built; others are marked ``not built``, and a
    built variant whose metrics file is missing is an error naming it. ``seeds``: the RFT rows are the mean over
    the runs ``rft-{variant}-s{seed}`` with their sample standard deviation as ``spread`` (``None`` for one
    seed); the SFT row likewise over its evaluation runs ``sft``, ``sft-s{seed}`` (:func:`run_name`), the one
    SFT checkpoint sampled with each seed (``seeds`` None: the unseeded run names ``sft``, ``rft-{variant}``)."""
    rows = [r for r in paper if r["table"] == table]
    if not rows:
        raise SacaError(f"paper numbers: no rows for table '{table}' (tables: {', '.join(sorted({r['table'] for r in paper}))})")
    cache: dict = {}

    def load(dataset, variant, seed, label):
        key = (dataset, variant, seed)
        if key not in cache:
            p = metrics_path(results, dataset, variant, split, seed)
            if not p.is_file():
                raise SacaError(f"report {table}: missing input {p} (the evaluation of row '{label}')")
            cache[key] = json.loads(p.read_text())
        return cache[key]

    out = []
    for r in sorted(rows, key=lambda r: int(r["row"] or 0)):  # stable: each row's benchmarks and metrics in the paper's order
        rec = {"row": int(r["row"] or 0), "label": r["label"], "variant": r["variant"], "benchmark": r["benchmark"],
               "metric": r["metric"], "paper": r["value"], "reproduced": None, "spread": None, "seeds": 0,
               "delta": None, "status": "paper only"}
        dataset = benchmarks.get(r["benchmark"])
        if r["variant"] and dataset:
            if built is not None and r["variant"] not in built:
                rec["status"] = "not built"
            else:
                run_seeds = [None] if seeds is None else list(seeds)
                vals = [load(dataset, r["variant"], s, r["label"]).get(r["metric"]) for s in run_seeds]
                if all(m is not None for m in vals):
                    scale = 100.0 if r["metric"] in PERCENT else 1.0
                    mean, spread = mean_spread([float(m) * scale for m in vals])
                    rec.update(reproduced=mean, spread=spread, seeds=len(vals), delta=mean - r["value"],
                               status="reproduced")
                else:
                    rec["status"] = "metric not computed"
        out.append(rec)
    return out


def _episode_records(path: Path, what: str):
    """``(line number, record)`` of an evaluation's ``episodes.jsonl``; a missing file names it and ``what``."""
    if not path.is_file():
        raise SacaError(f"report: missing input {path} ({what})")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            yield n, json.loads(line)


def _rft_run(results, variant: str, seed: int | None) -> Path:
    """An RFT run's folder: ``results/rft/{variant}/s{seed}`` (``seed`` None: the unseeded ``results/rft/{variant}``)."""
    run = Path(results) / "rft" / variant
    return run if seed is None else run / f"s{seed}"


def _ratio(num, den):
    return num / den if den else None


def episode_metrics(results, dataset: str, variant: str, split: str = "val_unseen", seed: int | None = None,
                    metric: str = "SR") -> dict[int, float]:
    """``{episode index: metric}`` of one evaluation (its ``episodes.jsonl`` beside ``metrics.json``); a missing
    file, or an episode without the metric, names the file."""
    path = metrics_path(results, dataset, variant, split, seed).with_name("episodes.jsonl")
    return episode_metrics_file(path, metric, f"the per-episode results of run '{run_name(variant, seed)}'")


def episode_metrics_file(path, metric: str = "SR", what: str = "an evaluation's per-episode results") -> dict[int, float]:
    """``{episode index: metric}`` from one evaluation's ``episodes.jsonl`` at ``path`` (any run name)."""
    path = Path(path)
    out = {}
    for n, row in _episode_records(path, what):
        value = row.get("metrics", {}).get(metric)
        if value is None:
            raise SacaError(f"{path}:{n}: no metric '{metric}' in the episode's 'metrics'")
        out[int(row["index"])] = float(value)
    return out


def wall_collision_share(path, forward_step: float = 0.25, tol: float = 1e-3) -> dict:
    """The forward steps an evaluation's agent walked into a wall, from its ``episodes.jsonl`` (``path``):
    a MOVE_FORWARD (action 1) that moved the agent less than ``forward_step - tol`` metres (the embedded backend
    leaves a blocked agent where it was; Habitat stops it at the contact point). ``{"forward", "blocked",
    "share"}`` (share ``None`` without forward steps). A record whose positions do not follow its actions names
    the file and line."""
    path = Path(path)
    fwd = blocked = 0
    for n, row in _episode_records(path, "an evaluation's per-episode results"):
        actions, pos = row.get("actions", []), row.get("positions", [])
        if len(pos) != len(actions) + 1:
            raise SacaError(f"{path}:{n}: {len(actions)} actions need {len(actions) + 1} positions, not {len(pos)}")
        for t, a in enumerate(actions):
            if a != Action.MOVE_FORWARD:
                continue
            fwd += 1
            blocked += math.dist(pos[t], pos[t + 1]) < forward_step - tol
    return {"forward": fwd, "blocked": blocked, "share": blocked / fwd if fwd else None}


def behaviour(path, max_steps: int = 500) -> dict:
    """How an evaluation's agent ends and spends its episodes, from its ``episodes.jsonl`` (``path``): ``episodes``;
    ``stopped`` / ``at_limit``: the share ending on STOP / running out of the ``max_steps`` step limit without it;
    ``steps``: mean actions per episode; ``success_steps``: mean actions of the successful episodes (``None``
    without one; beside the expert's ``steps``, how directly the agent's successes walk); ``turn_share``: turns
    among all actions; ``undone_turns``: the share of turns cancelled by an opposite turn before the agent moves
    on (left-right-left-right undoes all four, a left-left-forward none); ``stop_at_goal``: SR over OS, the share
    of the episodes that came within the success distance of the goal whose agent stopped there (``None`` when
    none came). A record without ``actions`` or ``metrics`` names the file and line."""
    path = Path(path)
    n = stopped = at_limit = steps = turns = undone = came = succeeded = success_steps = 0
    for line, row in _episode_records(path, "an evaluation's per-episode results"):
        actions, met = row.get("actions"), row.get("metrics")
        if not isinstance(actions, list) or not isinstance(met, dict) or "SR" not in met or "OS" not in met:
            raise SacaError(f"{path}:{line}: a record needs 'actions' and 'metrics' with SR and OS")
        n += 1
        steps += len(actions)
        ended_on_stop = bool(actions) and actions[-1] == Action.STOP
        stopped += ended_on_stop
        at_limit += not ended_on_stop and len(actions) >= max_steps
        came += met["OS"] > 0
        if met["SR"] > 0:
            succeeded += 1
            success_steps += len(actions)
        pending: list[int] = []  # the turns since the last non-turn action, not yet cancelled
        for a in actions:
            if a not in (Action.TURN_LEFT, Action.TURN_RIGHT):
                pending = []
                continue
            turns += 1
            if pending and pending[-1] != a:
                pending.pop()
                undone += 2
            else:
                pending.append(a)
    return {"episodes": n, "stopped": _ratio(stopped, n), "at_limit": _ratio(at_limit, n),
            "steps": _ratio(steps, n), "success_steps": _ratio(success_steps, succeeded),
            "turn_share": _ratio(turns, steps), "undone_turns": _ratio(undone, turns),
            "stop_at_goal": _ratio(succeeded, came)}


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test: the probability, under a fair coin, of a split of the non-zero ``differences``
    at least as uneven as the observed one (ties dropped; 1.0 when every difference is zero)."""
    pos = sum(d > 0 for d in differences)
    n = pos + sum(d < 0 for d in differences)
    if n == 0:
        return 1.0
    k = min(pos, n - pos)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparison(results, dataset: str, variant: str, baseline: str, seeds: Sequence[int],
                      split: str = "val_unseen", metric: str = "SR", n_boot: int = 10000, rng_seed: int = 0,
                      level: float = 0.95) -> dict:
    """``variant`` against ``baseline`` on the same episodes: run ``rft-{v}-s{s}`` and ``rft-{baseline}-s{s}``
    evaluate the same episodes with the same evaluation seed ``s``, so each episode has a paired difference per
    seed. ``diff``: the mean difference (= the difference of the seed-averaged metric); ``ci``: the percentile
    interval of the mean of the per-episode differences (averaged over the seeds) over ``n_boot`` resamples of
    the episodes; ``p_boot``: twice the smaller share of resampled means on either side of zero (two-sided);
    ``per_seed``: the difference of each seed's mean; ``wins``: seeds where the variant is higher;
    ``p_sign``: the exact sign test over the seeds (:func:`sign_test`; with 3 seeds it cannot go below 0.25).
    Episodes that differ between the runs are an error naming both."""
    if not seeds:
        raise SacaError("paired comparison: no seeds")
    pairs = []
    for s in seeds:
        a = episode_metrics(results, dataset, variant, split, s, metric)
        b = episode_metrics(results, dataset, baseline, split, s, metric)
        if set(a) != set(b):
            raise SacaError(f"paired comparison on {dataset}: runs '{run_name(variant, s)}' and "
                            f"'{run_name(baseline, s)}' evaluated different episodes ({len(a)} and {len(b)})")
        pairs.append((a, b))
    return {"dataset": dataset, "variant": variant, "baseline": baseline, "metric": metric, "seeds": list(seeds),
            **paired_bootstrap(pairs, n_boot=n_boot, rng_seed=rng_seed, level=level)}


def paired_bootstrap(pairs: Sequence[tuple[dict, dict]], n_boot: int = 10000, rng_seed: int = 0,
                     level: float = 0.95) -> dict:
    """The paired statistics of :func:`paired_comparison` from ``pairs``, one ``(variant, baseline)`` pair of
    ``{episode: metric}`` dicts per seed over the same episodes: ``episodes``, ``diff``, ``ci``, ``level``,
    ``p_boot``, ``per_seed``, ``wins``, ``p_sign``."""
    if not pairs:
        raise SacaError("paired comparison: no seeds")
    per_episode = None
    per_seed = []
    for a, b in pairs:
        if set(a) != set(b):
            raise SacaError(f"paired comparison: the two runs evaluated different episodes ({len(a)} and {len(b)})")
        keys = sorted(a)
        d = np.array([a[k] - b[k] for k in keys])
        per_seed.append(float(d.mean()))
        per_episode = d if per_episode is None else per_episode + d
    per_episode = per_episode / len(pairs)
    rng = np.random.default_rng(rng_seed)
    n = len(per_episode)
    boot = per_episode[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    p_boot = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"episodes": n, "diff": float(per_episode.mean()), "ci": (float(lo), float(hi)), "level": level,
            "p_boot": p_boot, "per_seed": per_seed, "wins": sum(d > 0 for d in per_seed),
            "p_sign": sign_test(per_seed)}


MECHANISMS = ("repair_attempts", "repair_successes", "afr_groups", "afr_zero_spread", "con_pairs", "rep_samples",
              "align_samples", "groups", "groups_mixed", "groups_all_failure")


def mechanism_counts(results, variants: Sequence[str], seeds: Sequence[int] | None = None,
                     partial: bool = False) -> list[dict]:
    """SACA's mechanisms from each RFT journal (``train`` rows of ``train_log.jsonl``), one dict per run:
    totals of :data:`MECHANISMS`, ``repair_success_rate`` (successful branches over branch rollouts, Eq. 5),
    ``afr_spread_share`` (the AFR groups whose rescued advantages are not all zero), ``con_every_update`` (the
    share of updates with at least one L_con pair, Eq. 13), the mean Appendix-A share of failed rollouts and
    the rollouts' success rate. A rate whose denominator is zero is ``None``. A missing journal names it;
    ``partial``: a run still going is read from its ``train_log.partial.jsonl`` (``"partial": True``)."""
    out = []
    for v in variants:
        for seed in [None] if seeds is None else seeds:
            run = _rft_run(results, v, seed)
            path = run / "train_log.jsonl"
            going = partial and not path.is_file() and (run / "train_log.partial.jsonl").is_file()
            path = run / "train_log.partial.jsonl" if going else path
            rows = [r for r in _journal(path, f"the training log of variant '{v}'") if r.get("event") == "train"]
            tot = {k: int(sum(r.get(k, 0) for r in rows)) for k in MECHANISMS}

            def mean(key):
                vals = [float(r[key]) for r in rows if r.get(key) is not None]
                return _ratio(sum(vals), len(vals))

            out.append({"variant": v, "seed": seed, "partial": going, "updates": len(rows), **tot,
                        "repair_success_rate": _ratio(tot["repair_successes"], tot["repair_attempts"]),
                        "afr_spread_share": _ratio(tot["afr_groups"] - tot["afr_zero_spread"], tot["afr_groups"]),
                        "con_every_update": _ratio(sum(r.get("con_pairs", 0) > 0 for r in rows), len(rows)),
                        "appendix_a_share": mean("appendix_a_share"), "rollout_sr": mean("success_rate")})
    return out


def fig5_curves(results, variants: Sequence[str], seeds: Sequence[int] | None = None) -> dict:
    """``{variant: [(update, mean validation SR over datasets and seeds, {dataset: SR averaged over the seeds},
    [each seed's SR averaged over the datasets])]}`` from each RFT run's journal
    (``results/rft/{variant}/s{seed}/train_log.jsonl``, its ``val`` rows; ``seeds`` None: the unseeded
    ``results/rft/{variant}/``, one entry in the last list); an update is kept where every seed validated. The
    per-seed values give the figure its spread over seeds. A missing journal names it."""
    out = {}
    for v in variants:
        per_seed = []
        for seed in [None] if seeds is None else seeds:
            path = _rft_run(results, v, seed) / "train_log.jsonl"
            if not path.is_file():
                raise SacaError(f"report fig5: missing input {path} (the training log of variant '{v}')")
            pts = {}
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row.get("event") == "val" and row.get("val_sr"):
                    pts[int(row["step"])] = {k: float(x) for k, x in row["val_sr"].items()}
            per_seed.append(pts)
        steps = sorted(set.intersection(*(set(p) for p in per_seed)))
        curve = []
        for step in steps:
            sr = {d: sum(p[step][d] for p in per_seed) / len(per_seed) for d in per_seed[0][step]}
            by_seed = [sum(p[step].values()) / len(p[step]) for p in per_seed]
            curve.append((step, sum(sr.values()) / len(sr), sr, by_seed))
        out[v] = curve
    return out


def _journal(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise SacaError(f"report training: missing input {path} ({what})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curves(results, mixes: Sequence[str], variants: Sequence[str], seeds: Sequence[int] | None = None) -> dict:
    """The training curves of the journals (``train_log.jsonl``): ``sft[mix]`` = [(step, training loss)],
    ``sft_val[mix]`` = [(step, mean validation loss over the validation splits)], ``rft[label]`` = [(update, mean
    reward, loss)] for every variant and seed (label ``{variant}/s{seed}``). A missing journal names it."""
    out: dict = {"sft": {}, "sft_val": {}, "rft": {}}
    for mix in mixes:
        rows = _journal(Path(results) / "sft" / mix / "train_log.jsonl", f"the SFT journal of mix '{mix}'")
        out["sft"][mix] = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("event") == "train" and "loss" in r]
        out["sft_val"][mix] = [(int(r["step"]), sum(r["val_loss"].values()) / len(r["val_loss"]))
                               for r in rows if r.get("event") == "val" and r.get("val_loss")]
    for v in variants:
        for seed in [None] if seeds is None else seeds:
            rows = _journal(_rft_run(results, v, seed) / "train_log.jsonl", f"the training log of variant '{v}'")
            label = v if seed is None else f"{v}/s{seed}"
            out["rft"][label] = [(int(r["step"]), float(r.get("reward_mean", 0.0)), float(r.get("loss", 0.0)))
                                 for r in rows if r.get("event") == "train"]
    return out


def appendix_a(results, datasets: Sequence[str], run: str = "sft", split: str = "val_unseen") -> dict:
    """``{dataset: {"share", "near_miss", "failed"}}`` from ``results/{dataset}/audit/{run}/{split}/summary.json``."""
    out = {}
    for d in datasets:
        path = Path(results) / d / "audit" / run / split / "summary.json"
        if not path.is_file():
            raise SacaError(f"report appendix_a: missing input {path} (the audit of run '{run}' on {d})")
        a = json.loads(path.read_text())["appendix_a"]
        out[d] = {"share": a["share"], "near_miss": a["near_miss"], "failed": a["failed"]}
    return out


def fmt(x, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def check_parameters(parameters: Mapping, flag: str = "--parameters") -> dict:
    """The notebook parameters, their names checked: papermill writes ``name = value`` lines into the notebook,
    so a name must be a Python identifier (not a keyword), else it would be code; values are written as
    literals (data). SacaError naming the bad name."""
    import keyword

    for name in parameters:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise SacaError(f"{flag}: {name!r} is not a notebook parameter name (a Python identifier)")
    return dict(parameters)


# what papermill and nbclient record that changes from run to run: the times of the run and of each cell, and the
# temporary file the notebook was executed into
_VOLATILE_NB = ("start_time", "end_time", "duration", "output_path")
_VOLATILE_CELL = ("start_time", "end_time", "duration")


def normalize_notebook(nb) -> None:
    """Make an executed notebook the same bytes for the same inputs: cell ids numbered in order (nbformat draws
    random ids for cells without one, papermill's parameters cell included), no run or cell times."""
    meta = nb.metadata.get("papermill")
    if meta is not None:
        for k in _VOLATILE_NB:
            meta.pop(k, None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        cell.metadata.pop("execution", None)  # nbclient's iopub / shell timestamps
        pm_meta = cell.metadata.get("papermill")
        if pm_meta is not None:
            for k in _VOLATILE_CELL:
                pm_meta.pop(k, None)


def run_notebook(notebook, out_html, parameters: Mapping, kernel: str = "python3", timeout: int = 600) -> Path:
    """Execute ``notebook`` with papermill (``parameters`` injected), keep the executed notebook next to the HTML
    (``.ipynb``), render HTML without the code cells; both written atomically, and the same bytes for the same
    notebook and parameters (:func:`normalize_notebook`)."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    from saca.io import atomic_path, write_text

    parameters = check_parameters(parameters)
    notebook, out_html = Path(notebook), Path(out_html)
    if not notebook.is_file():
        raise SacaError(f"{notebook}: the report notebook does not exist")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    executed = out_html.with_suffix(".ipynb")
    with atomic_path(executed, suffix=".ipynb") as tmp:
        try:
            pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=kernel,
                                progress_bar=False, execution_timeout=timeout, cwd=str(Path.cwd()))
        except pm.PapermillExecutionError as err:
            raise SacaError(f"{notebook}: cell {err.exec_count} failed: {err.ename}: {err.evalue}") from err
        nb = nbformat.read(str(tmp), as_version=4)
        normalize_notebook(nb)
        nbformat.write(nb, str(tmp))
    html, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    write_text(out_html, html)
    return out_html


def index_html(reports: Sequence[tuple[str, str]], title: str = "SACA / VLN-R1 reproduction: reports") -> str:
    """The index page: one link per ``(file name, description)``."""
    import html

    items = "\n".join(f'  <li><a href="{html.escape(f)}">{html.escape(d)}</a></li>' for f, d in reports)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}li{margin:.4em 0}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<ul>\n{items}\n</ul></body></html>\n")

"""Reports: the paper's numbers beside the reproduced ones, executed notebooks rendered to HTML (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saca import SacaError
from saca.report import (appendix_a, behaviour, comparison, episode_metrics_file, fig5_curves, mechanism_counts,
                         paired_bootstrap, paired_comparison, paper_numbers, run_name,
                         sign_test, table_variants, training_curves, wall_collision_share)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper-numbers.csv"
BENCH = {"R2R-CE": "mini_r2r", "RxR-CE": "mini_rxr"}


def fake_results(root: Path, variants=("sft", "grpo", "ss", "ss_afr", "saca")) -> Path:
    for k, v in enumerate(variants):
        for d in ("mini_r2r", "mini_rxr"):
            p = root / d / "eval" / ("sft" if v == "sft" else f"rft-{v}") / "val_unseen" / "metrics.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"SR": 0.1 + 0.01 * k, "OS": 0.2, "SPL": 0.05, "NE": 6.25, "nDTW": 0.4,
                                     "SDTW": 0.1, "TL": 5.0, "episodes": 150}))
    return root


def test_the_paper_numbers_are_data_with_every_table():
    rows = paper_numbers(PAPER)
    assert {r["table"] for r in rows} >= {"table1", "table2", "table3", "table4", "table5", "appendix_a"}
    assert table_variants(rows, "table2") == ["sft", "grpo", "ss", "ss_afr", "saca"]
    assert table_variants(rows, "table5") == ["global", "global_box", "saca"]
    sr = {(r["variant"], r["benchmark"]): r["value"] for r in rows if r["table"] == "table2" and r["metric"] == "SR"}
    assert sr[("saca", "R2R-CE")] == 60.3 and sr[("sft", "RxR-CE")] == 48.6


def test_every_reproducible_row_is_a_variant_of_the_config():
    import yaml

    variants = set(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["rft"]["variants"]) | {"sft"}
    rows = paper_numbers(PAPER)
    for t in ("table2", "table3", "table4", "table5"):
        assert set(table_variants(rows, t)) <= variants, t


def test_comparison_puts_percent_beside_percent(tmp_path):
    res = fake_results(tmp_path)
    rows = comparison(paper_numbers(PAPER), "table2", res, BENCH)
    by = {(r["variant"], r["benchmark"], r["metric"]): r for r in rows}
    r = by[("saca", "R2R-CE", "SR")]
    assert r["paper"] == 60.3 and r["reproduced"] == pytest.approx(14.0) and r["delta"] == pytest.approx(14.0 - 60.3)
    ne = by[("sft", "RxR-CE", "NE")]
    assert ne["reproduced"] == 6.25 and ne["delta"] == pytest.approx(6.25 - 6.72)  # metres, not percent
    assert by[("grpo", "RxR-CE", "nDTW")]["reproduced"] == pytest.approx(40.0)
    # a variant this configuration did not build is shown as such; one it built but lost is an error
    rows = comparison(paper_numbers(PAPER), "table2", res, BENCH, built=["sft", "grpo"])
    assert {r["status"] for r in rows if r["variant"] == "ss"} == {"not built"}
    (res / "mini_rxr" / "eval" / "rft-grpo" / "val_unseen" / "metrics.json").unlink()
    with pytest.raises(SacaError, match=r"report table2: missing input .*mini_rxr/eval/rft-grpo/val_unseen/metrics.json"):
        comparison(paper_numbers(PAPER), "table2", res, BENCH)


def test_several_seeds_give_mean_and_sample_spread(tmp_path):
    # rft-saca-s0 / -s1 / -s2 with SR 0.10, 0.14, 0.15: mean 13.0 %, sample sd sqrt(((-3)^2 + 1 + 2^2) / 2) = 2.6458 %
    for seed, sr in ((0, 0.10), (1, 0.14), (2, 0.15)):
        for d in ("mini_r2r", "mini_rxr"):
            p = tmp_path / d / "eval" / f"rft-saca-s{seed}" / "val_unseen" / "metrics.json"
            p.parent.mkdir(parents=True)
            p.write_text(json.dumps({"SR": sr, "NE": 6.0 + seed}))
    fake_results(tmp_path, ("sft",))
    # the SFT row: the one checkpoint evaluated with seeds 0 (run "sft", SR 0.10), 1 and 2 (runs sft-s1, sft-s2)
    assert run_name("sft", 0) == run_name("sft") == "sft" and run_name("sft", 2) == "sft-s2"
    assert run_name("sft", 0, train_seed=1) == "sft-t1" and run_name("sft", 2, train_seed=1) == "sft-t1-s2"
    with pytest.raises(SacaError, match=r"missing input .*/sft-s1/val_unseen/metrics.json"):
        comparison(paper_numbers(PAPER), "table2", tmp_path, BENCH, built=["sft", "saca"], seeds=[0, 1, 2])
    for seed, sr in ((1, 0.12), (2, 0.14)):
        for d in ("mini_r2r", "mini_rxr"):
            p = tmp_path / d / "eval" / f"sft-s{seed}" / "val_unseen" / "metrics.json"
            p.parent.mkdir(parents=True)
            p.write_text(json.dumps({"SR": sr}))
    rows = comparison(paper_numbers(PAPER), "table2", tmp_path, BENCH, built=["sft", "saca"], seeds=[0, 1, 2])
    by = {(r["variant"], r["benchmark"], r["metric"]): r for r in rows}
    r = by[("saca", "R2R-CE", "SR")]
    assert r["reproduced"] == pytest.approx(13.0) and r["spread"] == pytest.approx(2.6457513) and r["seeds"] == 3
    assert by[("saca", "RxR-CE", "NE")]["reproduced"] == pytest.approx(7.0)
    assert by[("saca", "RxR-CE", "NE")]["spread"] == pytest.approx(1.0)
    sft = by[("sft", "R2R-CE", "SR")]  # 10, 12, 14 %: mean 12, sample sd 2
    assert sft["seeds"] == 3 and sft["reproduced"] == pytest.approx(12.0) and sft["spread"] == pytest.approx(2.0)
    with pytest.raises(SacaError, match=r"missing input .*/sft-s3/val_unseen/metrics.json"):  # the SFT row comes first
        comparison(paper_numbers(PAPER), "table2", tmp_path, BENCH, built=["sft", "saca"], seeds=[0, 3])
    # Fig. 5: the seeds' curves averaged at the updates every seed validated
    for seed, sr in ((0, 0.2), (1, 0.4)):
        log = tmp_path / "rft" / "saca" / f"s{seed}" / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        rows = [{"event": "val", "step": 0, "val_sr": {"mini_r2r": sr, "mini_rxr": 0.0}}]
        if seed == 0:
            rows.append({"event": "val", "step": 4, "val_sr": {"mini_r2r": 1.0, "mini_rxr": 1.0}})
        log.write_text("\n".join(json.dumps(r) for r in rows))
    curve = fig5_curves(tmp_path, ["saca"], seeds=[0, 1])["saca"]
    assert [(s, round(m, 3)) for s, m, _, _ in curve] == [(0, 0.15)]
    assert curve[0][2] == pytest.approx({"mini_r2r": 0.3, "mini_rxr": 0.0})
    assert curve[0][3] == pytest.approx([0.1, 0.2])  # each seed's mean over the datasets: (0.2 + 0) / 2, (0.4 + 0) / 2


def test_table1_shows_other_methods_as_the_papers_numbers_only(tmp_path):
    res = fake_results(tmp_path, ("saca", "vlnr1"))
    rows = comparison(paper_numbers(PAPER), "table1", res, BENCH, built=["saca", "vlnr1"])
    others = [r for r in rows if not r["variant"]]
    assert others and all(r["status"] == "paper only" and r["reproduced"] is None for r in others)
    assert any(r["variant"] == "saca" and r["status"] == "reproduced" for r in rows)


def test_fig5_and_appendix_a_read_their_inputs(tmp_path):
    log = tmp_path / "rft" / "grpo" / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(json.dumps(r) for r in [
        {"event": "val", "step": 0, "val_sr": {"mini_r2r": 0.2, "mini_rxr": 0.1}},
        {"event": "train", "step": 1},
        {"event": "val", "step": 4, "val_sr": {"mini_r2r": 0.3, "mini_rxr": 0.3}}]))
    c = fig5_curves(tmp_path, ["grpo"])["grpo"]
    assert [(s, round(m, 3)) for s, m, _, _ in c] == [(0, 0.15), (4, 0.3)]
    assert [by_seed for *_, by_seed in c] == [pytest.approx([0.15]), pytest.approx([0.3])]
    with pytest.raises(SacaError, match=r"missing input .*rft/saca/train_log.jsonl"):
        fig5_curves(tmp_path, ["saca"])
    s = tmp_path / "mini_r2r" / "audit" / "sft" / "val_unseen" / "summary.json"
    s.parent.mkdir(parents=True)
    s.write_text(json.dumps({"appendix_a": {"share": 0.25, "near_miss": 3, "failed": 12}}))
    assert appendix_a(tmp_path, ["mini_r2r"]) == {"mini_r2r": {"share": 0.25, "near_miss": 3, "failed": 12}}


def test_training_curves_read_the_sft_and_rft_journals(tmp_path):
    sft = tmp_path / "sft" / "mix" / "train_log.jsonl"
    sft.parent.mkdir(parents=True)
    sft.write_text("\n".join(json.dumps(r) for r in [
        {"event": "start", "step": 0}, {"event": "val", "step": 0, "val_loss": {"a/val_seen": 6.0, "b/val_seen": 4.0}},
        {"event": "train", "step": 20, "loss": 3.5}, {"event": "train", "step": 40, "loss": 2.5},
        {"event": "val", "step": 40, "val_loss": {"a/val_seen": 2.0, "b/val_seen": 3.0}}]))
    for seed in (0, 1):
        log = tmp_path / "rft" / "saca" / f"s{seed}" / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("\n".join(json.dumps(r) for r in [
            {"event": "val", "step": 0, "val_sr": {"a": 0.1}},
            {"event": "train", "step": 1, "reward_mean": 0.25 + seed, "loss": -0.5}]))
    c = training_curves(tmp_path, ["mix"], ["saca"], seeds=[0, 1])
    assert c["sft"] == {"mix": [(20, 3.5), (40, 2.5)]} and c["sft_val"] == {"mix": [(0, 5.0), (40, 2.5)]}
    assert c["rft"] == {"saca/s0": [(1, 0.25, -0.5)], "saca/s1": [(1, 1.25, -0.5)]}
    with pytest.raises(SacaError, match=r"missing input .*rft/saca/s2/train_log.jsonl"):
        training_curves(tmp_path, ["mix"], ["saca"], seeds=[2])


def write_episodes(root: Path, dataset: str, run: str, sr: list[float], indices=None) -> None:
    p = root / dataset / "eval" / run / "val_unseen" / "episodes.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    idx = range(len(sr)) if indices is None else indices
    p.write_text("".join(json.dumps({"index": i, "metrics": {"SR": v, "NE": 1.0}}) + "\n" for i, v in zip(idx, sr)))


def test_sign_test_is_the_exact_two_sided_binomial_tail():
    assert sign_test([0.1, 0.2, 0.3]) == 0.25            # 3 of 3: 2 * 1/8, the smallest p of 3 seeds
    assert sign_test([1, 1, 1, 1, 1]) == 0.0625          # 2 * 1/32
    assert sign_test([1, 1, 1, 1, -1]) == 0.375          # 2 * (1 + 5)/32
    assert sign_test([1, -1, 0.5]) == 1.0                # 2 * (1 + 3)/8, capped
    assert sign_test([0.0, 0.0]) == 1.0 and sign_test([1, 0, 0]) == 1.0   # ties dropped: 1 of 1 gives 2 * 1/2


def test_paired_comparison_pairs_episodes_and_seeds(tmp_path):
    # seed 0: variant [1,1,0,0] vs grpo [0,1,0,0]; seed 1: [1,0,1,0] vs [1,0,0,0]
    write_episodes(tmp_path, "d", "rft-saca-s0", [1, 1, 0, 0])
    write_episodes(tmp_path, "d", "rft-grpo-s0", [0, 1, 0, 0])
    write_episodes(tmp_path, "d", "rft-saca-s1", [1, 0, 1, 0])
    write_episodes(tmp_path, "d", "rft-grpo-s1", [1, 0, 0, 0])
    c = paired_comparison(tmp_path, "d", "saca", "grpo", [0, 1], n_boot=20000)
    # per-episode differences averaged over the seeds: [0.5, 0, 0.5, 0]
    assert c["diff"] == 0.25 and c["per_seed"] == [0.25, 0.25] and c["wins"] == 2 and c["episodes"] == 4
    assert c["p_sign"] == 0.5
    # a resample is <= 0 only when it draws the two zero episodes only: (1/2)^4 = 1/16, so p = 2/16
    assert abs(c["p_boot"] - 0.125) < 0.015
    assert c["ci"][0] == 0.0 and 0.375 <= c["ci"][1] <= 0.5
    # the same seed gives the same resamples
    assert paired_comparison(tmp_path, "d", "saca", "grpo", [0, 1], n_boot=20000) == c
    # a constant difference has a point interval and p 0
    write_episodes(tmp_path, "d", "rft-ss-s0", [1, 1, 1, 1])
    c = paired_comparison(tmp_path, "d", "ss", "grpo", [0])
    assert c["diff"] == 0.75 and c["wins"] == 1 and c["p_sign"] == 1.0   # differences [1, 0, 1, 1]
    write_episodes(tmp_path, "d", "rft-ss_afr-s0", [1, 2, 1, 1])
    c = paired_comparison(tmp_path, "d", "ss_afr", "grpo", [0])
    assert c["diff"] == 1.0 and c["ci"] == (1.0, 1.0) and c["p_boot"] == 0.0 and c["p_sign"] == 1.0


def test_paired_bootstrap_compares_runs_of_any_name_and_directory(tmp_path):
    # two sweep points' evaluations (runs of other names, in other results directories) over the same episodes
    write_episodes(tmp_path / "x3", "d", "sft-r0-seed0", [1, 1, 0, 1])
    write_episodes(tmp_path / "x1", "d", "sft-r0-seed0", [0, 1, 0, 0])

    def read(point):
        return episode_metrics_file(tmp_path / point / "d" / "eval" / "sft-r0-seed0" / "val_unseen" / "episodes.jsonl")
    assert read("x3") == {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    c = paired_bootstrap([(read("x3"), read("x1"))], n_boot=20000)
    # differences [1, 0, 0, 1]: mean 0.5; a resample is <= 0 only when it draws episodes 1 and 2 only: p = 2/16
    assert c["diff"] == 0.5 and c["per_seed"] == [0.5] and c["wins"] == 1 and c["episodes"] == 4
    assert abs(c["p_boot"] - 0.125) < 0.015 and c["p_sign"] == 1.0
    assert c["ci"][0] == 0.0 and c["ci"][1] == 1.0
    with pytest.raises(SacaError, match="evaluated different episodes"):
        paired_bootstrap([(read("x3"), {0: 1.0})])
    with pytest.raises(SacaError, match="no seeds"):
        paired_bootstrap([])


def test_paired_comparison_refuses_different_episodes_and_names_missing_files(tmp_path):
    write_episodes(tmp_path, "d", "rft-saca-s0", [1, 0, 1])
    write_episodes(tmp_path, "d", "rft-grpo-s0", [1, 0, 1], indices=[0, 1, 5])
    with pytest.raises(SacaError, match=r"runs 'rft-saca-s0' and 'rft-grpo-s0' evaluated different episodes"):
        paired_comparison(tmp_path, "d", "saca", "grpo", [0])
    with pytest.raises(SacaError, match=r"missing input .*rft-saca-s1/val_unseen/episodes.jsonl"):
        paired_comparison(tmp_path, "d", "saca", "grpo", [1])
    write_episodes(tmp_path, "d", "rft-ss-s0", [1, 0, 1])
    with pytest.raises(SacaError, match=r"episodes.jsonl:1: no metric 'nDTW'"):
        paired_comparison(tmp_path, "d", "ss", "saca", [0], metric="nDTW")


def test_wall_collision_share_counts_forward_steps_that_did_not_move(tmp_path):
    p = tmp_path / "episodes.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        # forward (moved), left, forward (blocked: stays), forward (blocked: 1 cm to the contact point), stop
        {"actions": [1, 2, 1, 1, 0], "positions": [[0, 0, 0], [0.25, 0, 0], [0.25, 0, 0], [0.25, 0, 0],
                                                   [0.26, 0, 0], [0.26, 0, 0]]},
        {"actions": [1, 0], "positions": [[1, 0, 0], [1, 0, 0.25], [1, 0, 0.25]]},   # moved along z
        {"actions": [0], "positions": [[0, 0, 0], [0, 0, 0]]}]) + "\n")
    assert wall_collision_share(p) == {"forward": 4, "blocked": 2, "share": 0.5}
    assert wall_collision_share(p, forward_step=0.5)["blocked"] == 4   # a 0.25 m move is short of a 0.5 m step
    stop = json.dumps({"actions": [0], "positions": [[0, 0, 0], [0, 0, 0]]})
    p.write_text(stop + "\n")
    assert wall_collision_share(p) == {"forward": 0, "blocked": 0, "share": None}
    p.write_text(stop + "\n" + json.dumps({"actions": [1, 1], "positions": [[0, 0, 0], [0, 0, 0]]}))
    with pytest.raises(SacaError, match=r"episodes.jsonl:2: 2 actions need 3 positions, not 2"):
        wall_collision_share(p)


def test_mechanism_counts_total_the_journal(tmp_path):
    log = tmp_path / "rft" / "saca" / "s0" / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join(json.dumps(r) for r in [
        {"event": "start", "step": 0},
        {"event": "train", "step": 1, "repair_attempts": 6, "repair_successes": 1, "afr_groups": 2,
         "afr_zero_spread": 1, "con_pairs": 2, "appendix_a_share": 0.5, "success_rate": 0.25},
        {"event": "val", "step": 1, "val_sr": {"a": 0.1}},
        {"event": "train", "step": 2, "repair_attempts": 2, "repair_successes": 1, "afr_groups": 2,
         "afr_zero_spread": 0, "con_pairs": 0, "appendix_a_share": None, "success_rate": 0.75}]))
    (m,) = mechanism_counts(tmp_path, ["saca"], seeds=[0])
    assert m["updates"] == 2 and m["repair_attempts"] == 8 and m["repair_successes"] == 2
    assert m["repair_success_rate"] == 0.25 and m["afr_spread_share"] == 0.75 and m["con_every_update"] == 0.5
    assert m["appendix_a_share"] == 0.5 and m["rollout_sr"] == 0.5 and m["con_pairs"] == 2
    log2 = tmp_path / "rft" / "grpo" / "s0" / "train_log.jsonl"
    log2.parent.mkdir(parents=True)
    log2.write_text(json.dumps({"event": "train", "step": 1, "success_rate": 0.0}))
    (g,) = mechanism_counts(tmp_path, ["grpo"], seeds=[0])
    assert g["repair_success_rate"] is None and g["afr_spread_share"] is None and g["con_every_update"] == 0.0
    with pytest.raises(SacaError, match=r"missing input .*rft/ss/s0/train_log.jsonl"):
        mechanism_counts(tmp_path, ["ss"], seeds=[0])
    # a run still going: read from its partial journal only when asked, and marked
    going = tmp_path / "rft" / "ss" / "s0" / "train_log.partial.jsonl"
    going.parent.mkdir(parents=True)
    going.write_text(json.dumps({"event": "train", "step": 1, "success_rate": 0.5, "groups_mixed": 2}))
    with pytest.raises(SacaError, match=r"missing input .*rft/ss/s0/train_log.jsonl"):
        mechanism_counts(tmp_path, ["ss"], seeds=[0])
    (s,) = mechanism_counts(tmp_path, ["ss"], seeds=[0], partial=True)
    assert s["partial"] and s["updates"] == 1 and s["groups_mixed"] == 2 and not m["partial"]


@pytest.mark.slow
def test_the_table_notebook_renders_html_beside_the_paper(tmp_path):
    res = fake_results(tmp_path / "results")
    out = tmp_path / "reports" / "table2.html"
    params = {"table": "table2", "results": str(res), "paper_csv": str(PAPER), "benchmarks": BENCH,
              "built": ["sft", "grpo", "ss", "ss_afr", "saca"], "title": "Table 2"}
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/table.ipynb"),
                        "--parameters", json.dumps(params), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    html = out.read_text()
    assert "paper, for reference" in html and "+SS +AFR +RR (SACA)" in html and "60.3" in html and "14.0" in html
    assert "import pandas" not in html  # code cells hidden
    assert out.with_suffix(".ipynb").is_file()
    # the same notebook and parameters give the same bytes (issue 25: papermill's cell ids and times differed)
    again = tmp_path / "again" / "table2.html"
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/table.ipynb"),
                        "--parameters", json.dumps(params), "--out", str(again)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert again.read_bytes() == out.read_bytes()
    assert again.with_suffix(".ipynb").read_bytes() == out.with_suffix(".ipynb").read_bytes()
    # a missing input is named, and nothing is written
    (res / "mini_r2r" / "eval" / "rft-ss" / "val_unseen" / "metrics.json").unlink()
    bad = tmp_path / "reports" / "bad.html"
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/table.ipynb"),
                        "--parameters", json.dumps(params), "--out", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "rft-ss/val_unseen/metrics.json" in r.stderr and not bad.exists()


@pytest.mark.slow
def test_seeded_reports_show_the_paired_comparison_and_the_mechanisms(tmp_path):
    res = tmp_path / "results"
    fake_results(res, variants=("sft",))
    for d in ("mini_r2r", "mini_rxr"):  # the SFT checkpoint's evaluation with seed 1
        shutil.copytree(res / d / "eval" / "sft", res / d / "eval" / "sft-s1")
    for seed in (0, 1):
        for k, v in enumerate(("grpo", "ss", "ss_afr", "saca")):
            sr = [1.0] * (k + seed) + [0.0] * (10 - k - seed)   # saca/s0 succeeds on 3 more episodes than grpo/s0
            for d in ("mini_r2r", "mini_rxr"):
                run = res / d / "eval" / f"rft-{v}-s{seed}" / "val_unseen"
                run.mkdir(parents=True)
                (run / "metrics.json").write_text(json.dumps({"SR": sum(sr) / 10, "OS": 0.2, "SPL": 0.05, "NE": 6.0,
                                                              "nDTW": 0.4, "SDTW": 0.1, "TL": 5.0}))
                run.joinpath("episodes.jsonl").write_text("".join(
                    json.dumps({"index": i, "metrics": {"SR": x, "SPL": x / 2}}) + "\n" for i, x in enumerate(sr)))
            log = res / "rft" / v / f"s{seed}" / "train_log.jsonl"
            log.parent.mkdir(parents=True)
            log.write_text("\n".join(json.dumps(r) for r in [
                {"event": "val", "step": 0, "val_sr": {"mini_r2r": 0.1}},
                {"event": "train", "step": 1, "reward_mean": 0.5, "loss": 0.1, "success_rate": 0.25,
                 "repair_attempts": 4 * (v == "saca"), "repair_successes": 1 * (v == "saca"),
                 "afr_groups": 2, "afr_zero_spread": 1, "con_pairs": 3 * (v == "saca"), "groups_mixed": 1}]))
    sft = res / "sft" / "mix" / "train_log.jsonl"
    sft.parent.mkdir(parents=True)
    sft.write_text(json.dumps({"event": "train", "step": 1, "loss": 1.0}))
    params = {"table": "table2", "results": str(res), "paper_csv": str(PAPER), "benchmarks": BENCH,
              "built": ["sft", "grpo", "ss", "ss_afr", "saca"], "seeds": [0, 1], "baseline": "grpo", "title": "Table 2"}
    out = tmp_path / "reports" / "table2.html"
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/table.ipynb"),
                        "--parameters", json.dumps(params), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    html = out.read_text()
    assert "Paired comparison against <code>grpo</code>" in html
    assert "+30.0" in html and "+15.0" in html   # saca - grpo: SR +3 of 10 episodes, SPL +1.5 of 10
    assert "2 of 2" in html and "0.500" in html   # both seeds higher; sign test 2 * 1/4
    params = {"results": str(res), "mixes": ["mix"], "variants": ["grpo", "ss", "ss_afr", "saca"], "seeds": [0, 1]}
    out = tmp_path / "reports" / "training.html"
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/training.ipynb"),
                        "--parameters", json.dumps(params), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    html = out.read_text()
    assert "SACA&#x27;s mechanisms" in html or "SACA's mechanisms" in html
    assert "1 / 4 (25%)" in html and "1 / 2 (50%)" in html and "3 (100%)" in html and "saca/s1" in html


def test_the_fig5_notebook_draws_the_seed_band_only_with_several_seeds(tmp_path):
    res = tmp_path / "results"
    for v in ("grpo", "saca"):
        for seed in (0, 1):
            log = res / "rft" / v / f"s{seed}" / "train_log.jsonl"
            log.parent.mkdir(parents=True)
            log.write_text("\n".join(json.dumps({"event": "val", "step": step, "val_sr": {"mini_r2r": 0.1 * (seed + step)}})
                                     for step in (0, 1)))
    log = res / "rft" / "grpo" / "train_log.jsonl"  # an unseeded run (seeds None)
    log.write_text(json.dumps({"event": "val", "step": 0, "val_sr": {"mini_r2r": 0.2}}))
    for seeds, band in (([0, 1], True), (None, False)):
        variants = ["grpo", "saca"] if seeds else ["grpo"]
        out = tmp_path / "reports" / f"fig5-{band}.html"
        params = {"results": str(res), "variants": variants, "seeds": seeds}
        r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/fig5.ipynb"),
                            "--parameters", json.dumps(params), "--out", str(out)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        html = out.read_text()
        assert "data:image/png;base64" in html
        assert ("one sample standard deviation over the seeds" in html) == band
        assert ("(one run)" in html) == (not band)


@pytest.mark.parametrize("name", ["a b", "x=__import__('os').system('touch PWNED')#", "class", "1st", ""])
def test_a_notebook_parameter_name_must_be_an_identifier(tmp_path, name):
    # issue 25: papermill writes `name = value` into the notebook, so a name was code
    from saca.report import check_parameters

    with pytest.raises(SacaError, match=r"--parameters: .* is not a notebook parameter name \(a Python identifier\)"):
        check_parameters({"results": "r", name: 1})
    out = tmp_path / "x.html"
    r = subprocess.run([sys.executable, "-m", "saca", "report", "--notebook", str(REPO / "workflow/notebooks/table.ipynb"),
                        "--parameters", json.dumps({name: 1}), "--out", str(out)], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a notebook parameter name" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_notebook_parameter_values_are_data():
    from papermill.translators import PythonTranslator

    from saca.report import check_parameters

    params = check_parameters({"results": "res $(touch X)'\"\\\n; import os", "seeds": [0, 3], "b": {"x": None}})
    ns = {}
    exec(PythonTranslator.codify(params), ns)  # what papermill injects into the parameters cell
    assert {k: ns[k] for k in params} == params


def test_an_executed_notebook_has_numbered_cell_ids_and_no_times():
    import nbformat

    from saca.report import normalize_notebook

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("# t")]
    nb.metadata["papermill"] = {"start_time": "2026-12-06T12:00:00", "end_time": "t", "duration": 1.5,
                                "output_path": "/tmp/.t.ipynb.tmp-h.1.abc", "input_path": "nb.ipynb",
                                "parameters": {"a": 1}}
    nb.cells[0].metadata["papermill"] = {"start_time": "t", "end_time": "t", "duration": 0.1, "status": "completed"}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-12-06T12:00:00.1Z"}
    assert nb.cells[0].id != nb.cells[1].id  # random
    normalize_notebook(nb)
    assert [c.id for c in nb.cells] == ["cell-0", "cell-1"]
    assert nb.metadata["papermill"] == {"input_path": "nb.ipynb", "parameters": {"a": 1}}
    assert nb.cells[0].metadata == {"papermill": {"status": "completed"}}
    nbformat.validate(nb)


def test_behaviour_counts_stops_step_limits_undone_turns_and_stops_at_the_goal(tmp_path):
    p = tmp_path / "episodes.jsonl"
    ok, near, far = {"SR": 1.0, "OS": 1.0}, {"SR": 0.0, "OS": 1.0}, {"SR": 0.0, "OS": 0.0}
    p.write_text("\n".join(json.dumps(r) for r in [
        # left, right (undone), forward, right, right, forward, stop: 2 of 4 turns undone; success
        {"actions": [2, 3, 1, 3, 3, 1, 0], "metrics": ok},
        # left right left right then the step limit (5): all 4 turns undone; came near, no STOP
        {"actions": [2, 3, 2, 3, 1], "metrics": near},
        # left left right: the right undoes one left; wrong STOP far from the goal
        {"actions": [2, 2, 3, 0], "metrics": far}]) + "\n")
    assert behaviour(p, max_steps=5) == {
        "episodes": 3, "stopped": 2 / 3, "at_limit": 1 / 3, "steps": 16 / 3, "success_steps": 7, "turn_share": 11 / 16,
        "undone_turns": 8 / 11, "stop_at_goal": 1 / 2}
    # a longer step limit: the second episode ran out of nothing
    assert behaviour(p, max_steps=6)["at_limit"] == 0
    p.write_text(json.dumps({"actions": [1, 0], "metrics": far}) + "\n")
    assert behaviour(p)["undone_turns"] is None and behaviour(p)["stop_at_goal"] is None
    assert behaviour(p)["success_steps"] is None  # no success
    p.write_text(json.dumps({"actions": [1, 0], "metrics": {"SR": 0.0}}) + "\n")
    with pytest.raises(SacaError, match=r"episodes.jsonl:1: a record needs 'actions' and 'metrics' with SR and OS"):
        behaviour(p)

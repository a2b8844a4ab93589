"""Reports: the paper's numbers beside the reproduced ones, executed notebooks rendered to HTML (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saca import SacaError
from saca.report import appendix_a, comparison, fig5_curves, paper_numbers, table_variants, training_curves

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
    rows = comparison(paper_numbers(PAPER), "table2", tmp_path, BENCH, built=["sft", "saca"], seeds=[0, 1, 2])
    by = {(r["variant"], r["benchmark"], r["metric"]): r for r in rows}
    r = by[("saca", "R2R-CE", "SR")]
    assert r["reproduced"] == pytest.approx(13.0) and r["spread"] == pytest.approx(2.6457513) and r["seeds"] == 3
    assert by[("saca", "RxR-CE", "NE")]["reproduced"] == pytest.approx(7.0)
    assert by[("saca", "RxR-CE", "NE")]["spread"] == pytest.approx(1.0)
    sft = by[("sft", "R2R-CE", "SR")]  # the one SFT run: no spread
    assert sft["seeds"] == 1 and sft["spread"] is None and sft["reproduced"] == pytest.approx(10.0)
    with pytest.raises(SacaError, match=r"missing input .*rft-saca-s3/val_unseen/metrics.json"):
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
    assert [(s, round(m, 3)) for s, m, _ in curve] == [(0, 0.15)]
    assert curve[0][2] == pytest.approx({"mini_r2r": 0.3, "mini_rxr": 0.0})


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
    assert [(s, round(m, 3)) for s, m, _ in c] == [(0, 0.15), (4, 0.3)]
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

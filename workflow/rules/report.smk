# Rules: reports (see src/saca/report.py, src/saca/commands/report.py and workflow/notebooks/).
#
# report        results/reports/{name}.html (+ the executed .ipynb): table1..table5 (the paper's numbers beside
#               this workflow's, config/paper-numbers.csv), fig5 (validation SR against the RL update),
#               appendix_a (the share of failed episodes with rho > 0.5); a papermill-executed notebook each
# report_index  results/reports/index.html
# table1 ... table5, fig5, appendix_a, reports: per-table targets (each builds what its report shows)
# Include after rft.smk and auditor.smk.

from saca.report import TABLES, paper_numbers, table_variants

REPORTS = config.get("reports", {})
PAPER_CSV = REPORTS.get("paper_numbers", "config/paper-numbers.csv")
try:
    PAPER = paper_numbers(PAPER_CSV)
except SacaError as err:
    sys.exit(f"config error: reports.paper_numbers: {err}")
BENCHMARKS = REPORTS.get("benchmarks", {})
for _b, _d in BENCHMARKS.items():
    if _d not in DATASETS:
        sys.exit(f"config error: reports.benchmarks.{_b}: '{_d}' is not in 'datasets'")
FIG5 = REPORTS.get("fig5", ["grpo", "ss", "saca"])
REPORT_NAMES = {**{t: f"Table {t[-1]}" for t in TABLES}, "fig5": "Fig. 5", "appendix_a": "Appendix A"}
for _n in REPORTS.get("build", []):
    if _n not in REPORT_NAMES:
        sys.exit(f"config error: reports.build: '{_n}' is not a report ({', '.join(REPORT_NAMES)})")


def table_rows(table):
    """The variants of a table's rows this config defines (others are shown as the paper's numbers only)."""
    return [v for v in table_variants(PAPER, table) if v == "sft" or v in RFT_VARIANTS]


def report_inputs(wildcards):
    name = wildcards.name
    inputs = {"notebook": f"workflow/notebooks/{'table' if name in TABLES else name}.ipynb",
              "paper": PAPER_CSV, "code": code("report")}
    if name in TABLES:
        inputs["metrics"] = [f"{RESULTS}/{d}/eval/{'sft' if v == 'sft' else 'rft-' + v}/val_unseen/metrics.json"
                             for v in table_rows(name) for d in BENCHMARKS.values()]
    elif name == "fig5":
        inputs["runs"] = [f"{RESULTS}/rft/{v}/final" for v in FIG5]
    elif name == "appendix_a":
        inputs["audits"] = [f"{RESULTS}/{d}/audit/sft/val_unseen/summary.json" for d in DATASETS]
    return inputs


def report_params(wildcards):
    name = wildcards.name
    if name in TABLES:
        return {"table": name, "results": RESULTS, "paper_csv": PAPER_CSV, "benchmarks": BENCHMARKS,
                "split": "val_unseen", "built": table_rows(name), "title": REPORT_NAMES[name],
                "paper_label": "paper, for reference" if config["datasets"][DATASETS[0]]["backend"] == "embedded"
                else "paper"}
    if name == "fig5":
        return {"results": RESULTS, "variants": FIG5}
    return {"results": RESULTS, "datasets": DATASETS, "run": "sft", "split": "val_unseen"}


rule report:
    input:
        unpack(report_inputs),
    output:
        report(f"{RESULTS}/reports/{{name}}.html", category="Reports", labels={"report": "{name}"}),
    params:
        cfg=lambda w: as_json(report_params(w)),
    log:
        f"{RESULTS}/logs/reports/{{name}}.log",
    wildcard_constraints:
        name="|".join(REPORT_NAMES),
    conda:
        "../../envs/saca.yaml"
    shell:
        "python -m saca report --notebook {input.notebook} --params {params.cfg} --out {output} > {log} 2>&1"


BUILT_REPORTS = REPORTS.get("build", ["table2", "fig5", "appendix_a"])


rule report_index:
    input:
        [f"{RESULTS}/reports/{n}.html" for n in BUILT_REPORTS],
    output:
        report(f"{RESULTS}/reports/index.html", category="Reports"),
    params:
        entries=" ".join(shlex.quote(f"{n}.html={REPORT_NAMES[n]}") for n in BUILT_REPORTS),
    log:
        f"{RESULTS}/logs/reports/index.log",
    conda:
        "../../envs/saca.yaml"
    shell:
        "python -m saca report-index --reports {params.entries} --out {output} > {log} 2>&1"


for _n in REPORT_NAMES:

    rule:
        name:
            _n
        input:
            f"{RESULTS}/reports/{_n}.html",
        localrule: True


TARGETS += [f"{RESULTS}/reports/index.html"]

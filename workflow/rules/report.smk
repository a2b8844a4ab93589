# Rules: reports (see src/saca/report.py, src/saca/commands/report.py and workflow/notebooks/).
#
# report        results/reports/{name}.html (+ the executed .ipynb): table1..table5 (the paper's numbers beside
#               this workflow's, config/paper-numbers.csv), fig5 (validation SR against the RL update),
#               appendix_a (the share of failed episodes with rho > 0.5, the PGSA figures), training (SFT and RFT
#               curves from the journals); a papermill-executed notebook each
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
REPORT_NAMES = {
    **{t: f"Table {t[-1]}" for t in TABLES},
    "fig5": "Fig. 5",
    "appendix_a": "Appendix A",
    "training": "Training curves",
}
for _n in REPORTS.get("build", []):
    if _n not in REPORT_NAMES:
        sys.exit(f"config error: reports.build: '{_n}' is not a report ({', '.join(REPORT_NAMES)})")


rule report:
    input:
        unpack(report_inputs),
    output:
        report(f"{RESULTS}/reports/{{name}}.html", category="Reports", labels={"report": "{name}"}),
    log:
        f"{RESULTS}/logs/reports/{{name}}.log",
    wildcard_constraints:
        name="|".join(REPORT_NAMES),
    conda:
        "../../envs/saca.yaml"
    params:
        cfg=lambda w: as_json(report_params(w)),
    shell:
        "python -m saca report --notebook {input.notebook:q} --parameters {params.cfg} --out {output:q} > {log:q} 2>&1"


BUILT_REPORTS = REPORTS.get("build", ["table2", "fig5", "appendix_a", "training"])


rule report_index:
    input:
        [f"{RESULTS}/reports/{n}.html" for n in BUILT_REPORTS],
    output:
        report(f"{RESULTS}/reports/index.html", category="Reports"),
    log:
        f"{RESULTS}/logs/reports/index.log",
    conda:
        "../../envs/saca.yaml"
    params:
        entries=" ".join(shlex.quote(f"{n}.html={REPORT_NAMES[n]}") for n in BUILT_REPORTS),
    shell:
        "python -m saca report-index --reports {params.entries} --out {output:q} > {log:q} 2>&1"


for _n in REPORT_NAMES:

    rule:
        name:
            _n
        input:
            f"{RESULTS}/reports/{_n}.html",
        localrule: True


TARGETS += [f"{RESULTS}/reports/index.html"]

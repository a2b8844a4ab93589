# Rules: auditor (see src/saca/commands/auditor.py and docs/auditor.md).
#
# landmarks:    results/{dataset}/landmarks/{split}.jsonl, one row per episode (none dropped).
# audit:        an evaluation run's trajectories, replayed and audited:
#               results/{dataset}/audit/{run}/{split}/audit.jsonl + summary.json (Appendix-A statistic).
# audit_figure: a Fig. 6-style figure of the most telling failed episode of that run.

AUDITOR = config["auditor"]
# keys of the auditor section that steer the workflow, not the auditor itself
AUDITOR_WORKFLOW_KEYS = ("runs", "splits", "group_size")
AUDIT_DIR = RESULTS + "/{dataset}/audit/{run}/{split}"


def auditor_params():
    return as_json({k: v for k, v in AUDITOR.items() if k not in AUDITOR_WORKFLOW_KEYS})


rule landmarks:
    input:
        episodes=RESULTS + "/{dataset}/episodes/{split}.json.gz",
        src=SACA_SRC,
    output:
        RESULTS + "/{dataset}/landmarks/{split}.jsonl",
    params:
        cfg=as_json(config["landmarks"]),
    log:
        RESULTS + "/logs/{dataset}/landmarks_{split}.log",
    benchmark:
        RESULTS + "/benchmarks/{dataset}/landmarks_{split}.tsv"
    threads: 1
    shell:
        "{SACA} landmarks --episodes {RESULTS}/{wildcards.dataset}/episodes --split {wildcards.split}"
        " --params {params.cfg} --out {output} > {log} 2>&1"


AUDIT_INPUTS = dict(
    eval=RESULTS + "/{dataset}/eval/{run}/{split}/episodes.jsonl",
    landmarks=RESULTS + "/{dataset}/landmarks/{split}.jsonl",
    episodes=RESULTS + "/{dataset}/episodes/{split}.json.gz",
    scenes=RESULTS + "/scenes/index.json",
    src=SACA_SRC,
)
AUDIT_PARAMS = dict(
    eval_dir=RESULTS + "/{dataset}/eval/{run}/{split}",
    sim=as_json(config["sim"]),
    ds=lambda wc: as_json(dataset_cfg(wc)),
    cfg=lambda wc: auditor_params(),  # a function: the prompt's {l} is no wildcard
)
AUDIT_ARGS = (
    " --episodes {RESULTS}/{wildcards.dataset}/episodes --split {wildcards.split} --eval-dir {params.eval_dir}"
    " --landmarks {input.landmarks} --scenes {RESULTS}/scenes --sim {params.sim} --dataset-config {params.ds}"
    " --params {params.cfg}"
)


rule audit:
    input:
        **AUDIT_INPUTS,
    output:
        audit=AUDIT_DIR + "/audit.jsonl",
        summary=AUDIT_DIR + "/summary.json",
    params:
        **AUDIT_PARAMS,
        out=AUDIT_DIR,
        group=AUDITOR["group_size"],
    log:
        RESULTS + "/logs/audit/{dataset}/{run}/{split}.log",
    benchmark:
        RESULTS + "/benchmarks/audit/{dataset}/{run}/{split}.tsv"
    threads: 2
    shell:
        "OMP_NUM_THREADS={threads} {SACA} audit" + AUDIT_ARGS + " --group-size {params.group} --out {params.out}"
        " > {log} 2>&1"


rule audit_figure:
    input:
        **AUDIT_INPUTS,
        audit=AUDIT_DIR + "/audit.jsonl",
    output:
        AUDIT_DIR + "/figure.png",
    params:
        **AUDIT_PARAMS,
    log:
        RESULTS + "/logs/audit/{dataset}/{run}/{split}.figure.log",
    threads: 1
    shell:
        "{SACA} audit-figure" + AUDIT_ARGS + " --audit {input.audit} --out {output} > {log} 2>&1"


TARGETS += expand(RESULTS + "/{dataset}/landmarks/{split}.jsonl", dataset=DATASETS, split=SPLITS)
TARGETS += expand(
    AUDIT_DIR + "/{file}",
    dataset=DATASETS,
    run=AUDITOR["runs"],
    split=AUDITOR["splits"],
    file=["summary.json", "figure.png"],
)

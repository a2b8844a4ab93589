# Rules: auditor (see src/saca/commands/auditor.py and docs/auditor.md).
#
# landmarks:    results/{dataset}/landmarks/{split}.jsonl, one row per episode (none dropped).
# audit:        an evaluation run's trajectories, replayed and audited:
#               results/{dataset}/audit/{run}/{split}/audit.jsonl + summary.json (Appendix-A statistic).
# audit_figure: a Fig. 6-style figure of the most telling failed episode of that run.
# The runs audited are auditor.runs (run names of evaluate.smk's RUN_AGENTS), on auditor.splits.

AUDITOR = config["auditor"]
# the foundation backend's model folders that a download rule makes: inputs of the audits (and of SACA's RFT)
FOUNDATION_MODELS = (
    downloaded(*(AUDITOR["foundation"].get(k) for k in ("clip_path", "gdino_path", "sam3_path", "sam_path")))
    if AUDITOR["backend"] == "foundation"
    else []
)
AUDIT_DIR = f"{RESULTS}/{{dataset}}/audit/{{run}}/{{split}}"


rule landmarks:
    input:
        downloaded(config["landmarks"]["model_path"]) if config["landmarks"]["extractor"] == "llm" else [],
        episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
        code=code("landmarks"),
    output:
        f"{RESULTS}/{{dataset}}/landmarks/{{split}}.jsonl",
    log:
        f"{RESULTS}/logs/{{dataset}}/landmarks_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/landmarks_{{split}}.tsv"
    conda:
        "../../envs/saca.yaml"
    threads: 1
    resources:
        **rule_resources("landmarks", gpu=config["landmarks"]["extractor"] == "llm"),
    params:
        cfg=as_json(config["landmarks"]),
        episodes=lambda wc, input: Path(input.episodes).parent,
    shell:
        "python -m saca landmarks --episodes {params.episodes:q} --split {wildcards.split:q}"
        " --params {params.cfg} --out {output:q} > {log:q} 2>&1"


AUDIT_INPUTS = dict(
    eval=f"{RESULTS}/{{dataset}}/eval/{{run}}/{{split}}/episodes.jsonl",
    landmarks=f"{RESULTS}/{{dataset}}/landmarks/{{split}}.jsonl",
    episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
    scenes=f"{RESULTS}/scenes/index.json",
    code=code("audit"),
    models=FOUNDATION_MODELS,
)
AUDIT_PARAMS = dict(
    eval_dir=lambda wc, input: Path(input.eval).parent,
    episodes=lambda wc, input: Path(input.episodes).parent,
    scenes=lambda wc, input: Path(input.scenes).parent,
    sim=as_json(config["sim"]),
    ds=lambda wc: as_json(dataset_cfg(wc)),
    # the auditor's settings without the workflow's keys (which runs and splits, the batching): editing those
    # reruns no audit; a function, as the prompt's {l} is no wildcard
    cfg=lambda wc: as_json({k: v for k, v in AUDITOR.items() if k not in ("runs", "splits", "group_size")}),
)
AUDIT_ARGS = (
    " --episodes {params.episodes:q} --split {wildcards.split:q} --eval-dir {params.eval_dir:q}"
    " --landmarks {input.landmarks:q} --scenes {params.scenes:q} --sim {params.sim} --dataset-config {params.ds}"
    " --params {params.cfg}"
)


rule audit:
    input:
        **AUDIT_INPUTS,
    output:
        audit=f"{AUDIT_DIR}/audit.jsonl",
        summary=f"{AUDIT_DIR}/summary.json",
    log:
        f"{RESULTS}/logs/audit/{{dataset}}/{{run}}/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/audit/{{dataset}}/{{run}}/{{split}}.tsv"
    conda:
        "../../envs/saca.yaml"
    threads: 2
    resources:
        **(rule_resources("audit") if AUDITOR["backend"] == "foundation" else render_resources()),
        # how many episodes one batched audit holds: batching only (the results do not depend on it), so it is a
        # resource, which Snakemake does not compare when deciding what to rerun, not a param
        audit_group=AUDITOR["group_size"],
    params:
        **AUDIT_PARAMS,
        out=lambda wc, output: Path(output.summary).parent,
    shell:
        f"OMP_NUM_THREADS={{threads}} python -m saca audit{AUDIT_ARGS} --group-size {{resources.audit_group}}"
        " --out {params.out:q} > {log:q} 2>&1"


rule audit_figure:
    input:
        **{**AUDIT_INPUTS, "code": code("audit-figure")},
        audit=f"{AUDIT_DIR}/audit.jsonl",
    output:
        report(
            f"{AUDIT_DIR}/figure.png",
            category="PGSA auditor",
            subcategory="{dataset}",
            labels={"run": "{run}", "split": "{split}"},
        ),
    log:
        f"{RESULTS}/logs/audit/{{dataset}}/{{run}}/{{split}}.figure.log",
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        **AUDIT_PARAMS,
    shell:
        f"python -m saca audit-figure{AUDIT_ARGS} --audit {{input.audit:q}} --out {{output:q}} > {{log:q}} 2>&1"


TARGETS += expand(f"{RESULTS}/{{dataset}}/landmarks/{{split}}.jsonl", dataset=DATASETS, split=SPLITS)
TARGETS += expand(
    f"{AUDIT_DIR}/{{file}}",
    dataset=DATASETS,
    run=AUDITOR["runs"],
    split=AUDITOR["splits"],
    file=["summary.json", "figure.png"],
)

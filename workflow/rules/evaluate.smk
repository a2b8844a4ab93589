# Rules: evaluate (see src/saca/commands/evaluate.py and docs/evaluation.md).
#
# One evaluation = {run} x {dataset} x {split}, in results/{dataset}/eval/{run}/{split}/.
# RUN_AGENTS maps a run name to its agent spec: a reference agent name, or a function of the
# wildcards that returns a policy checkpoint path (which then becomes an input of the rule).
# Other rules files register their runs, e.g. in policy.smk:
#     RUN_AGENTS["sft"] = lambda w: f"{RESULTS}/{w.dataset}/policy/sft/checkpoint"
# and add their metrics paths to TARGETS (eval_targets(run) gives them).

EVAL = config["evaluation"]
# what an evaluation job reads: the section without the workflow's keys (which runs and splits, how many plots,
# how many shards, which agents from elsewhere), so that editing them reruns nothing but what they select (plots: eval_plots only)
EVAL_JOB = {k: v for k, v in EVAL.items() if k not in ("runs", "splits", "plots", "shards", "agents")}
REFERENCE_AGENTS = ("random", "forward", "oracle")
RUN_AGENTS = {name: name for name in REFERENCE_AGENTS}
# evaluation.agents: policies trained elsewhere (another results folder, a copied checkpoint), evaluated on this
# config's episodes as run {name}; the agent spec path may hold {dataset}. The schema keeps their names apart
# from the workflow's own runs (random, forward, oracle, sft..., rft-...).
for _name, _spec in EVAL.get("agents", {}).items():
    RUN_AGENTS[_name] = lambda w, _spec=_spec: _spec.format(dataset=w.dataset)
EVAL_DIR = f"{RESULTS}/{{dataset}}/eval/{{run}}/{{split}}"


wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",


EVAL_CMD = (
    "OMP_NUM_THREADS={threads} python -m saca evaluate --dataset-dir {params.dataset_dir:q}"
    " --split {wildcards.split:q} --agent {params.agent:q} --run {wildcards.run:q} --scenes {params.scenes:q}"
    " --sim {params.sim} --dataset-config {params.ds} --params {params.cfg} --out {params.out:q}"
)
# a policy's evaluation runs on a GPU where resources.evaluate asks for one; a reference agent's only to render
# (and on a habitat dataset every evaluation renders on a GPU: resources.render)
EVAL_RESOURCES = render_resources(gpu_if=lambda w: w.run not in REFERENCE_AGENTS)
EVAL_PARAMS = dict(
    out=eval_dir,
    dataset_dir=lambda w, input: Path(input.episodes).parent.parent,
    scenes=lambda w, input: Path(input.scenes).parent,
    agent=run_agent,
    sim=as_json(config["sim"]),
    ds=lambda w: as_json(dataset_cfg(w)),
    cfg=lambda w: as_json(eval_job(w)),
)

if EVAL["shards"] == 1:

    rule evaluate:
        input:
            unpack(eval_inputs),
        output:
            metrics=report(
                f"{EVAL_DIR}/metrics.json",
                category="Metrics",
                subcategory="{dataset}",
                labels={"run": "{run}", "split": "{split}"},
            ),
            episodes=f"{EVAL_DIR}/episodes.jsonl",
        log:
            f"{RESULTS}/logs/evaluate/{{dataset}}/{{run}}/{{split}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/evaluate/{{dataset}}/{{run}}/{{split}}.tsv"
        conda:
            "../../envs/saca.yaml"
        threads: 1  # a second thread does not speed up an evaluation; two evaluations at once do (README, Benchmarks)
        resources:
            **EVAL_RESOURCES,
        params:
            **EVAL_PARAMS,
        shell:
            f"{EVAL_CMD} > {{log:q}} 2>&1"

else:

    rule evaluate_shard:
        input:
            unpack(eval_inputs),
        output:
            metrics=f"{EVAL_DIR}/shards/{{shard}}-of-{{nshards}}/metrics.json",
            episodes=f"{EVAL_DIR}/shards/{{shard}}-of-{{nshards}}/episodes.jsonl",
        log:
            f"{RESULTS}/logs/evaluate/{{dataset}}/{{run}}/{{split}}.{{shard}}-of-{{nshards}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/evaluate/{{dataset}}/{{run}}/{{split}}.{{shard}}-of-{{nshards}}.tsv"
        wildcard_constraints:
            shard=r"\d+",
            nshards=r"\d+",
        conda:
            "../../envs/saca.yaml"
        threads: 1  # a second thread does not speed up an evaluation; two evaluations at once do (README, Benchmarks)
        resources:
            **EVAL_RESOURCES,
        params:
            **EVAL_PARAMS,
        shell:
            f"{EVAL_CMD} --shard {{wildcards.shard:q}}/{{wildcards.nshards:q}} > {{log:q}} 2>&1"

    rule evaluate:
        input:
            expand(
                f"{EVAL_DIR}/shards/{{shard}}-of-{{nshards}}/metrics.json",
                shard=range(EVAL["shards"]),
                nshards=EVAL["shards"],
                allow_missing=True,
            ),
        output:
            metrics=report(
                f"{EVAL_DIR}/metrics.json",
                category="Metrics",
                subcategory="{dataset}",
                labels={"run": "{run}", "split": "{split}"},
            ),
            episodes=f"{EVAL_DIR}/episodes.jsonl",
        log:
            f"{RESULTS}/logs/evaluate/{{dataset}}/{{run}}/{{split}}.merge.log",
        conda:
            "../../envs/saca.yaml"
        params:
            out=eval_dir,
        shell:
            "python -m saca eval-merge --out {params.out:q} > {log:q} 2>&1"


rule eval_plots:
    input:
        eval_episodes=f"{EVAL_DIR}/episodes.jsonl",
        episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
        scenes=f"{RESULTS}/scenes/index.json",
        src=code("plot-episodes"),
    output:
        directory(f"{EVAL_DIR}/plots"),
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{run}}/{{split}}.plots.log",
    conda:
        "../../envs/saca.yaml"
    params:
        **EVAL_PARAMS,
        n=EVAL["plots"],
    shell:
        "python -m saca plot-episodes --dataset-dir {params.dataset_dir:q} --split {wildcards.split:q}"
        " --scenes {params.scenes:q} --sim {params.sim} --dataset-config {params.ds} --params {params.cfg}"
        " --eval-dir {params.out:q} --n {params.n:q} --out {output:q} > {log:q} 2>&1"


for _run in [*EVAL["runs"], *EVAL.get("agents", {})]:
    TARGETS += eval_targets(_run)

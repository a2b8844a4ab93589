# Rules: reinforcement fine-tuning (see src/saca/train/rft/, src/saca/commands/train.py and docs/rft.md).
#
# rft        results/rft/{variant}/s{seed}/final/     SACA / GRPO / VLN-R1 RFT from the SFT checkpoint of mix
#                                                    rft.sft_mix; the variant is a named override of the rft base
#                                                    section (rft.variants, the paper's Tables 2-5), the seed one
#                                                    of the top-level `seeds`; SACA variants also read the
#                                                    landmarks rule's train split (src/saca/train/saca.py: Eq. 4-13)
# rft_agent  results/rft/{variant}/s{seed}/agent.json agent spec (checkpoint + agent settings) for evaluation,
#                                                    sampling as the rollouts did (rft.eval_sampling)
# and the evaluation run "rft-{variant}-s{seed}": results/{dataset}/eval/rft-{variant}-s{seed}/{split}/metrics.json
# (evaluated with the same seed).
# Include after policy.smk.

from saca.train.rft import check_variant, eval_agent_settings, resolve_variant

RFT = config["rft"]
RFT_VARIANTS = list(RFT.get("variants") or {})
# the variants `all` trains and evaluates; every other variant is built on request (its eval metrics.json or
# results/rft/{variant}/s{seed}/final), so editing one ablation reruns that ablation only
RFT_RUNS = RFT.get("runs", RFT_VARIANTS)
for _v in RFT_RUNS:
    if _v not in RFT_VARIANTS:
        sys.exit(f"config error: rft.runs: '{_v}' is not a variant in rft.variants ({', '.join(RFT_VARIANTS)})")
# every variant is a valid rft config, checked now: a misspelled key fails naming the variant, before any job runs
for _v in RFT_VARIANTS:
    try:
        check_variant(RFT, _v, config["auditor"])
    except SacaError as err:
        sys.exit(f"config error: {err}")
RFT_DATASETS = RFT.get("datasets") or DATASETS
for _d in RFT_DATASETS:
    if _d not in DATASETS:
        sys.exit(f"config error: rft.datasets: '{_d}' is not in 'datasets'")


rule rft:
    input:
        unpack(rft_inputs),
    output:
        directory(f"{RESULTS}/rft/{{variant}}/s{{seed}}/final"),
    log:
        f"{RESULTS}/logs/rft/{{variant}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rft/{{variant}}/s{{seed}}.tsv"
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        seed=r"\d+",
    conda:
        "../../envs/train.yaml"
    # one thread: a mini-world SACA run took 158 s with one and 166 s with two (2 cores), so on a laptop
    # it runs beside an evaluation; on a cluster resources.cpus_per_gpu sizes the job
    threads: 1
    resources:
        **rule_resources("rft"),
    params:
        cfg=lambda w: as_json(rft_variant(w)),
        agent=as_json(AGENT_PARAMS),
        sim=as_json(config["sim"]),
        # what the simulator needs of each dataset (the episode counts reach the job as its input files)
        datasets=as_json(
            {
                d: {k: v for k, v in config["datasets"][d].items() if k in ("backend", "turn_angle", "sim")}
                for d in RFT_DATASETS
            }
        ),
        # lists, so that {params.data:q} quotes each word (a results path may hold spaces)
        data=[f"{d}={RESULTS}/{d}" for d in RFT_DATASETS],
        vln_ego=lambda w, input: list(input.vln_ego) if hasattr(input, "vln_ego") else [],
        landmarks=lambda w, input: (
            [f"{d}={f}" for d, f in zip(RFT_DATASETS, input.landmarks)] if hasattr(input, "landmarks") else []
        ),
        scenes=lambda w, input: Path(input.scenes).parent,
        run=f"{RESULTS}/rft/{{variant}}/s{{seed}}",
    shell:
        # resumes from {params.run}/checkpoints when a previous attempt was killed
        f"OMP_NUM_THREADS={{threads}} {launcher('rft')} -m saca rft --init {{input.init:q}} --out {{params.run:q}}"
        " --data {params.data:q}"
        " --datasets {params.datasets} --scenes {params.scenes:q} --sim {params.sim} --agent {params.agent}"
        " --vln-ego {params.vln_ego:q} --landmarks {params.landmarks:q} --params {params.cfg} > {log:q} 2>&1"


rule rft_agent:
    input:
        ckpt=f"{RESULTS}/rft/{{variant}}/s{{seed}}/final",
        src=code("policy-agent"),
    output:
        f"{RESULTS}/rft/{{variant}}/s{{seed}}/agent.json",
    log:
        f"{RESULTS}/logs/rft/{{variant}}/s{{seed}}.agent.log",
    wildcard_constraints:
        variant=r"[A-Za-z0-9_]+",
        seed=r"\d+",
    conda:
        "../../envs/saca.yaml"
    params:
        # sampled as RL sampled it (rft.eval_sampling: rollout) or as the SFT policy (agent)
        cfg=lambda w: as_json(eval_agent_settings(rft_variant(w), AGENT_PARAMS)),
    shell:
        "python -m saca policy-agent --checkpoint {input.ckpt:q} --out {output:q} --params {params.cfg} > {log:q} 2>&1"


# Evaluation of each variant and seed as run "rft-{variant}-s{seed}" (rule evaluate, workflow/rules/evaluate.smk).
for _v in RFT_VARIANTS:
    for _s in SEEDS:
        RUN_AGENTS[f"rft-{_v}-s{_s}"] = lambda w, _v=_v, _s=_s: f"{RESULTS}/rft/{_v}/s{_s}/agent.json"
        if _v in RFT_RUNS:
            TARGETS += eval_targets(f"rft-{_v}-s{_s}")

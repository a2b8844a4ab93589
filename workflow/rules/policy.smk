# Rules: policy (see src/saca/commands/policy.py and docs/policy.md).
#
# policy_init   results/policy/init/                the embedded tiny VLM (random weights, offline tokenizer)
# vision_pretrain results/policy/init_vision/       its vision tower pretrained on rendered train-house frames
#                                                   (only when policy.vision_pretrain.frames > 0)
# sft           results/sft/{mix}/final/            SFT on the VLN-Ego train split of every dataset of the mix
#                                                   (results/sft/{mix}/dagger/r0/final/ with DAgger: dagger.smk)
# policy_agent  results/sft/{mix}/agent.json        agent spec (checkpoint + agent settings) for evaluation
# and the evaluation run "sft": results/{dataset}/eval/sft/{split}/metrics.json, through the
# evaluation rule of evaluate.smk (RUN_AGENTS["sft"] -> the agent spec of sft.eval_mix[dataset]).
# Include after evaluate.smk.

POLICY = config["policy"]
SFT = config["sft"]
VLN_EGO = config["vln_ego"]
POLICY_INIT = f"{RESULTS}/policy/init"
POLICY_VISION = f"{RESULTS}/policy/init_vision"
SFT_MIXES = list(SFT["mixes"])
SFT_TRAIN_SEEDS = [int(t) for t in SFT.get("train_seeds", [])]
if int(SFT.get("seed", 0)) in SFT_TRAIN_SEEDS:  # (the schema refuses a repeated seed)
    raise ValueError(
        f"sft.train_seeds {SFT_TRAIN_SEEDS}: each further training seed must differ from sft.seed "
        f"({SFT.get('seed', 0)}), which trains the plain mix"
    )


# the sft section without the workflow keys (changing eval_mix must not retrain), plus the VLN-Ego answer length
SFT_PARAMS = {k: v for k, v in SFT.items() if k not in ("mixes", "eval_mix", "val_splits", "dagger", "train_seeds")}
SFT_PARAMS["n_actions"] = VLN_EGO["n_actions"]
# the agent settings plus what must match the VLN-Ego data the policy was trained on
AGENT_PARAMS = {
    **POLICY["agent"],
    "n_actions": VLN_EGO["n_actions"],
    "memory": VLN_EGO["memory"],
    "image_format": VLN_EGO["image_format"],
    "jpeg_quality": VLN_EGO["jpeg_quality"],
}


rule policy_init:
    input:
        code("policy-init"),
    output:
        directory(POLICY_INIT),
    log:
        f"{RESULTS}/logs/policy/init.log",
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        cfg=as_json(POLICY.get("init", {})),
    shell:
        "OMP_NUM_THREADS={threads} python -m saca policy-init --params {params.cfg} --out {output:q} > {log:q} 2>&1"


rule vision_pretrain:
    input:
        init=POLICY_INIT,
        scenes=rules.scenes.output.index,
        src=code("vision-pretrain"),
    output:
        directory(POLICY_VISION),
    log:
        f"{RESULTS}/logs/policy/vision_pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/policy/vision_pretrain.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        cfg=as_json(POLICY.get("vision_pretrain", {})),
        sim=as_json(config["sim"]),
        scenes=lambda wc, input: Path(input.scenes).parent,
        image_format=VLN_EGO["image_format"],
        quality=VLN_EGO["jpeg_quality"],
    shell:
        "OMP_NUM_THREADS={threads} python -m saca vision-pretrain --init {input.init:q} --scenes {params.scenes:q}"
        " --sim {params.sim} --image-format {params.image_format:q} --jpeg-quality {params.quality:q}"
        " --params {params.cfg} --out {output:q} > {log:q} 2>&1"


# with DAgger (sft.dagger.rounds > 0; workflow/rules/dagger.smk) plain SFT is round 0 and the last round's
# policy is the mix's final one
DAGGER_ROUNDS = int(SFT.get("dagger", {}).get("rounds", 0))
SFT_RUN = f"{RESULTS}/sft/{{mix}}/dagger/r0" if DAGGER_ROUNDS else f"{RESULTS}/sft/{{mix}}"


rule sft:
    input:
        unpack(sft_inputs),
    output:
        directory(f"{SFT_RUN}/final"),
    log:
        f"{RESULTS}/logs/sft/{{mix}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sft/{{mix}}.tsv"
    wildcard_constraints:
        mix=mix_pattern(),
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **rule_resources("sft"),
    params:
        init=policy_base(),
        val=sft_val_args,
        cfg=lambda wc: as_json(with_train_seed(SFT_PARAMS, wc.mix)),
        run=SFT_RUN,
    shell:
        # resumes from {params.run}/checkpoints when a previous attempt was killed
        f"OMP_NUM_THREADS={{threads}} {launcher('sft')} -m saca sft --init {{params.init:q}} --train {{input.train:q}}"
        " --val {params.val:q}"
        " --out {params.run:q} --params {params.cfg} > {log:q} 2>&1"


rule policy_agent:
    input:
        ckpt=f"{RESULTS}/sft/{{mix}}/final",
        src=code("policy-agent"),
    output:
        f"{RESULTS}/sft/{{mix}}/agent.json",
    log:
        f"{RESULTS}/logs/sft/{{mix}}.agent.log",
    wildcard_constraints:
        mix=mix_pattern(),
    conda:
        "../../envs/saca.yaml"
    params:
        cfg=as_json(AGENT_PARAMS),
    shell:
        "python -m saca policy-agent --checkpoint {input.ckpt:q} --out {output:q} --params {params.cfg} > {log:q} 2>&1"


# Evaluation of the SFT policy as run "sft" (rule evaluate, workflow/rules/evaluate.smk), with evaluation.seed;
# with several `seeds`, also as run "sft-s{seed}" for each non-zero seed (the same checkpoint sampled with that
# seed: the spread of the tables' SFT row, which counts run "sft" as seed 0).
if "RUN_AGENTS" in globals():
    RUN_AGENTS["sft"] = lambda w: f"{RESULTS}/sft/{eval_mix(w.dataset)}/agent.json"
    if "sft" not in EVAL["runs"]:
        TARGETS += eval_targets("sft")
    if any(SEEDS) and int(EVAL.get("seed", 0)) != 0:
        raise ValueError(
            f"evaluation.seed is {EVAL['seed']}, but with seeds {SEEDS} the tables' SFT row counts run 'sft' as "
            "evaluation seed 0 (its other seeds are runs sft-s{seed}): set evaluation.seed: 0"
        )
    # sft.train_seeds: each mix trained again with SFT seed t as mix "{mix}-t{t}" (results/sft/{mix}-t{t}/, its own
    # DAgger rounds), evaluated as runs "sft-t{t}" and "sft-t{t}-s{seed}": the SFT table's spread over training
    # seeds. RFT and the tables' SFT row use the plain mix (seed sft.seed). Run names: saca.report.run_name.
    for _t in [0, *SFT_TRAIN_SEEDS]:
        _agent = lambda w, _t=_t: f"{RESULTS}/sft/{seeded_mix(eval_mix(w.dataset), _t)}/agent.json"
        for _s in dict.fromkeys([0, *SEEDS]):
            _run = run_name("sft", _s, _t)
            if _run != "sft":
                RUN_AGENTS[_run] = _agent
                TARGETS += eval_targets(_run, with_plots=False)

TARGETS += [f"{RESULTS}/sft/{m}/final" for m in sorted({eval_mix(d) for d in DATASETS} | set(SFT_MIXES))]
TARGETS += [
    f"{RESULTS}/sft/{seeded_mix(m, t)}/final" for m in sorted({eval_mix(d) for d in DATASETS}) for t in SFT_TRAIN_SEEDS
]

# Rules: DAgger after SFT (issue 29; saca.vln_ego.dagger, docs/policy.md), only when sft.dagger.rounds > 0.
#
# dagger_agent     results/sft/{mix}/dagger/r{stage}/agent.json   agent spec of round {stage}'s policy
# dagger_rollouts  results/{dataset}/dagger/{mix}/r{round}/        that policy (round - 1) rolled out on the train
#                                                                 episodes, every frame labelled by the expert
# sft_dagger       results/sft/{mix}/dagger/r{round}/final/, the last round results/sft/{mix}/final/:
#                  the previous round's policy trained on the VLN-Ego train splits plus rounds 1..round's rollouts
# Include after policy.smk.

DAGGER = SFT.get("dagger", {})


# each retraining round: the SFT settings, its own step budget (0: sft's)
SFT_DAGGER_PARAMS = {**SFT_PARAMS, "max_steps": int(DAGGER.get("max_steps", 0)) or SFT_PARAMS.get("max_steps", 0)}


if DAGGER_ROUNDS:

    rule dagger_agent:
        input:
            ckpt=lambda wc: dagger_stage_dir(wc.mix, int(wc.stage)),
            src=code("policy-agent"),
        output:
            f"{RESULTS}/sft/{{mix}}/dagger/r{{stage}}/agent.json",
        log:
            f"{RESULTS}/logs/sft/{{mix}}.dagger_r{{stage}}.agent.log",
        wildcard_constraints:
            mix=mix_pattern(),
            stage=r"\d+",
        conda:
            "../../envs/saca.yaml"
        params:
            cfg=as_json(AGENT_PARAMS),
        shell:
            "python -m saca policy-agent --checkpoint {input.ckpt} --out {output} --params {params.cfg} > {log} 2>&1"

    rule dagger_rollouts:
        input:
            agent=lambda wc: f"{RESULTS}/sft/{wc.mix}/dagger/r{int(wc.round) - 1}/agent.json",
            episodes=f"{RESULTS}/{{dataset}}/episodes/train.json.gz",
            gt=f"{RESULTS}/{{dataset}}/episodes/train_gt.json.gz",
            scenes=rules.scenes.output.index,
            src=code("dagger-rollouts"),
        output:
            directory(f"{RESULTS}/{{dataset}}/dagger/{{mix}}/r{{round}}"),
        log:
            f"{RESULTS}/logs/{{dataset}}/dagger_{{mix}}_r{{round}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{{dataset}}/dagger_{{mix}}_r{{round}}.tsv"
        wildcard_constraints:
            mix=mix_pattern(),
            round=r"\d+",
        conda:
            "../../envs/train.yaml"
        threads: 1
        params:
            sim=as_json(config["sim"]),
            ds=lambda wc: as_json(dataset_cfg(wc, "train")),
            vln_ego=as_json(VLN_EGO),
            dagger=lambda wc: as_json(with_train_seed(DAGGER, wc.mix)),
            scenes=lambda wc, input: Path(input.scenes).parent,
            episodes=lambda wc, input: Path(input.episodes).parent,
        shell:
            "OMP_NUM_THREADS={threads} python -m saca dagger-rollouts --episodes {params.episodes} --split train"
            " --scenes {params.scenes} --sim {params.sim} --dataset-config {params.ds} --params {params.vln_ego}"
            " --dagger {params.dagger} --agent {input.agent} --round {wildcards.round} --out {output} > {log} 2>&1"

    rule sft_dagger:
        input:
            unpack(sft_dagger_inputs),
        output:
            directory(f"{RESULTS}/sft/{{mix}}/{{stage}}"),
        log:
            f"{RESULTS}/logs/sft/{{mix}}.{{stage}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/sft/{{mix}}.{{stage}}.tsv"
        wildcard_constraints:
            mix=mix_pattern(),
            stage=r"final|dagger/r[1-9][0-9]*/final",
        conda:
            "../../envs/train.yaml"
        threads: 2
        resources:
            **rule_resources("sft"),
        params:
            val=sft_val_args,
            cfg=lambda wc: as_json(with_train_seed(SFT_DAGGER_PARAMS, wc.mix)),
            run=lambda wc, output: Path(output[0]).parent,
        shell:
            f"OMP_NUM_THREADS={{threads}} {launcher('sft')} -m saca sft --init {{input.init}} --train {{input.train}}"
            " --val {params.val} --out {params.run} --params {params.cfg} > {log} 2>&1"

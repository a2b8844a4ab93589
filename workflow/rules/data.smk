# Data: embedded scenes, VLN-CE episodes, VLN-Ego samples, previews.


rule scenes:
    output:
        index=f"{RESULTS}/scenes/index.json",
        scenes=expand(f"{RESULTS}/scenes/{{scene}}.json", scene=scene_ids()),
    input:
        code("sim", "commands/data.py"),
    params:
        cfg=as_json(config["scenes"]),
    log:
        f"{RESULTS}/logs/scenes.log",
    benchmark:
        f"{RESULTS}/benchmarks/scenes.tsv"
    threads: 1
    shell:
        "{SACA} scenes --params {params.cfg} --out {RESULTS}/scenes > {log} 2>&1"


rule episodes:
    output:
        episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
        gt=f"{RESULTS}/{{dataset}}/episodes/{{split}}_gt.json.gz",
    input:
        rules.scenes.output.index,
        SIM_SRC,
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc)),
    log:
        f"{RESULTS}/logs/{{dataset}}/episodes_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/episodes_{{split}}.tsv"
    threads: 1
    shell:
        "{SACA} episodes --dataset {wildcards.dataset} --split {wildcards.split} "
        "--scenes {RESULTS}/scenes --sim {params.sim} --dataset-config {params.ds} "
        "--out {RESULTS}/{wildcards.dataset}/episodes > {log} 2>&1"


rule vln_ego:
    output:
        directory(f"{RESULTS}/{{dataset}}/vln_ego/{{split}}"),
    input:
        rules.episodes.output,
        rules.scenes.output.index,
        SIM_SRC + code("vln_ego", "action_text.py"),
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc)),
        cfg=as_json(config["vln_ego"]),
    log:
        f"{RESULTS}/logs/{{dataset}}/vln_ego_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/vln_ego_{{split}}.tsv"
    threads: 1
    shell:
        "{SACA} vln-ego --episodes {RESULTS}/{wildcards.dataset}/episodes --split {wildcards.split} "
        "--scenes {RESULTS}/scenes --sim {params.sim} --dataset-config {params.ds} "
        "--params {params.cfg} --out {output} > {log} 2>&1"


rule preview:
    output:
        f"{RESULTS}/{{dataset}}/preview.png",
    input:
        expand(f"{RESULTS}/{{{{dataset}}}}/episodes/{{split}}.json.gz", split=["val_unseen"]),
        rules.scenes.output.index,
        SIM_SRC + code("vln_ego", "viz.py"),
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc)),
    log:
        f"{RESULTS}/logs/{{dataset}}/preview.log",
    threads: 1
    shell:
        "{SACA} preview --episodes {RESULTS}/{wildcards.dataset}/episodes --split val_unseen "
        "--scenes {RESULTS}/scenes --sim {params.sim} --dataset-config {params.ds} --out {output} > {log} 2>&1"


rule vln_ego_all:
    input:
        expand(f"{RESULTS}/{{dataset}}/vln_ego/{{split}}", dataset=DATASETS, split=config["vln_ego"]["splits"]),
        expand(f"{RESULTS}/{{dataset}}/preview.png", dataset=DATASETS),


TARGETS.extend(rules.vln_ego_all.input)

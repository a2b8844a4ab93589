# Data: scenes (embedded houses, or the downloaded MP3D scenes linked), VLN-CE episodes (generated in the embedded
# world, or imported from the R2R-CE / RxR-CE archives: datasets.NAME.source), VLN-Ego samples, previews.

SCENES = config["scenes"]
# datasets whose episodes are imported from a download (saca episodes-import) and those generated (saca episodes)
IMPORTED = [d for d in DATASETS if config["datasets"][d].get("source")]
GENERATED = [d for d in DATASETS if d not in IMPORTED]


rule scenes:
    input:
        # habitat: the downloaded scene datasets, linked (saca scenes); embedded: none, the houses are generated
        downloaded(f"{SCENES['dir']}/mp3d") if SCENES["backend"] == "habitat" else [],
        code=code("scenes"),
    output:
        index=f"{RESULTS}/scenes/index.json",
        scenes=expand(f"{RESULTS}/scenes/{{scene}}.json", scene=scene_ids()),
    log:
        f"{RESULTS}/logs/scenes.log",
    benchmark:
        f"{RESULTS}/benchmarks/scenes.tsv"
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        cfg=as_json(SCENES),
        out=lambda wc, output: Path(output.index).parent,
    shell:
        "python -m saca scenes --params {params.cfg} --out {params.out:q} > {log:q} 2>&1"


rule episodes:
    input:
        scenes=rules.scenes.output.index,
        code=code("episodes"),
    output:
        episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
        gt=f"{RESULTS}/{{dataset}}/episodes/{{split}}_gt.json.gz",
    log:
        f"{RESULTS}/logs/{{dataset}}/episodes_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/episodes_{{split}}.tsv"
    wildcard_constraints:
        dataset=one_of(GENERATED),
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc)),
        scenes=lambda wc, input: Path(input.scenes).parent,
        out=lambda wc, output: Path(output.episodes).parent,
    shell:
        "python -m saca episodes --dataset {wildcards.dataset:q} --split {wildcards.split:q} "
        "--scenes {params.scenes:q} --sim {params.sim} --dataset-config {params.ds} "
        "--out {params.out:q} > {log:q} 2>&1"


rule episodes_import:
    input:
        lambda wc: downloaded(episode_source(wc)["dir"]),
        code=code("episodes-import"),
    output:
        episodes=f"{RESULTS}/{{dataset}}/episodes/{{split}}.json.gz",
        gt=f"{RESULTS}/{{dataset}}/episodes/{{split}}_gt.json.gz",
    log:
        f"{RESULTS}/logs/{{dataset}}/episodes_{{split}}.log",
    wildcard_constraints:
        dataset=one_of(IMPORTED),
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        src=lambda wc: episode_source(wc)["dir"],
        fmt=lambda wc: episode_source(wc)["format"],
        out=lambda wc, output: Path(output.episodes).parent,
        opts=lambda wc: " ".join(
            f"--{k} {shlex.quote(v if isinstance(v, str) else ','.join(v))}"
            for k, v in ((k, episode_source(wc).get(k)) for k in ("role", "languages"))
            if v
        ),
    shell:
        "python -m saca episodes-import --format {params.fmt:q} --src {params.src:q} --split {wildcards.split:q}"
        " --out {params.out:q} {params.opts} > {log:q} 2>&1"


rule vln_ego:
    input:
        episodes=rules.episodes.output.episodes,
        gt=rules.episodes.output.gt,
        scenes=rules.scenes.output.index,
        code=code("vln-ego"),
    output:
        directory(f"{RESULTS}/{{dataset}}/vln_ego/{{split}}"),
    log:
        f"{RESULTS}/logs/{{dataset}}/vln_ego_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{dataset}}/vln_ego_{{split}}.tsv"
    conda:
        "../../envs/saca.yaml"
    threads: 1
    resources:
        **render_resources(),
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc)),
        cfg=as_json(config["vln_ego"]),
        scenes=lambda wc, input: Path(input.scenes).parent,
        episodes=lambda wc, input: Path(input.episodes).parent,
    shell:
        "python -m saca vln-ego --episodes {params.episodes:q} --split {wildcards.split:q} "
        "--scenes {params.scenes:q} --sim {params.sim} --dataset-config {params.ds} "
        "--params {params.cfg} --out {output:q} > {log:q} 2>&1"


rule preview:
    input:
        episodes=f"{RESULTS}/{{dataset}}/episodes/val_unseen.json.gz",
        gt=f"{RESULTS}/{{dataset}}/episodes/val_unseen_gt.json.gz",
        scenes=rules.scenes.output.index,
        code=code("preview"),
    output:
        f"{RESULTS}/{{dataset}}/preview.png",
    log:
        f"{RESULTS}/logs/{{dataset}}/preview.log",
    conda:
        "../../envs/saca.yaml"
    threads: 1
    resources:
        **render_resources(),
    params:
        sim=as_json(config["sim"]),
        ds=lambda wc: as_json(dataset_cfg(wc, "val_unseen")),
        scenes=lambda wc, input: Path(input.scenes).parent,
        episodes=lambda wc, input: Path(input.episodes).parent,
    shell:
        "python -m saca preview --episodes {params.episodes:q} --split val_unseen "
        "--scenes {params.scenes:q} --sim {params.sim} --dataset-config {params.ds} --out {output:q} > {log:q} 2>&1"


rule vln_ego_all:
    input:
        expand(f"{RESULTS}/{{dataset}}/vln_ego/{{split}}", dataset=DATASETS, split=config["vln_ego"]["splits"]),
        expand(f"{RESULTS}/{{dataset}}/preview.png", dataset=DATASETS),


TARGETS.extend(rules.vln_ego_all.input)

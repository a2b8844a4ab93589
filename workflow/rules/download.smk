# Downloads of the real-data runs (src/saca/download.py, docs/downloads.md): MP3D habitat scenes through the
# licensee's download_mp.py, the VLN-CE episode archives, the model weights. Each rule's output is the
# MANIFEST.sha256 written last into its directory (sha256sum format): Snakemake deletes only that file before a
# rerun, so a half-done download (ARCHIVE.part, a partial snapshot) is resumed, not thrown away.
#
# download_scenes:   {data_dir}/scene_datasets/mp3d/MANIFEST.sha256 ({scene}/{scene}.glb, .navmesh, ...)
# download_episodes: {data_dir}/datasets/{name}/MANIFEST.sha256, name in downloads.episodes
#                    (archive kept in {data_dir}/downloads/{name}.zip with {name}.zip.sha256)
# download_model:    {models_dir}/{name}/MANIFEST.sha256, name in downloads.models
# download_all:      all of them.
#
# Local rules: they run on the login node (compute nodes of many clusters have no internet). Credentials come
# from the environment of the snakemake process only: MP3D_DOWNLOAD_SCRIPT + MP3D_TERMS_ACCEPTED (+ MP3D_PYTHON),
# HF_TOKEN (gated models), the variable an archive names in auth_env; a missing one fails the job, naming it,
# before anything is fetched. The code of saca.download is deliberately not an input: editing it must not fetch
# 15 GB again; what is downloaded is pinned by the params (URL, sha256, revision), which do rerun the job.

# DOWNLOADS, DL_* and the helpers (downloaded, _dl_opt, _dl_entry) are in common.smk.


localrules:
    download_scenes,
    download_episodes,
    download_model,
    download_all,


rule download_scenes:
    output:
        f"{MP3D_DIR}/{DL_MANIFEST}",
    log:
        f"{RESULTS}/logs/download/mp3d.log",
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        download_dir=f"{DL_DATA}/downloads/mp3d",
        out=lambda w, output: os.path.dirname(output[0]),
        opts=" ".join(
            o
            for o in (
                _dl_opt("--interpreter", DL_MP3D.get("interpreter", "python2.7")),
                _dl_opt("--root", DL_MP3D.get("root", "mp3d")),
                _dl_opt("--scenes", DL_MP3D.get("scenes", [])),
                _dl_opt("--sha256", DL_MP3D.get("sha256", "")),
                _dl_opt("--pinned-manifest", DL_MP3D.get("manifest", "")),
                _dl_opt("--remove-archive", not DL_MP3D.get("keep_archive", True)),
            )
            if o
        ),
    shell:
        "python -m saca download-mp3d --download-dir {params.download_dir:q} --out {params.out:q} {params.opts} "
        "> {log:q} 2>&1"


rule download_episodes:
    output:
        f"{DL_DATA}/datasets/{{name}}/{DL_MANIFEST}",
    log:
        f"{RESULTS}/logs/download/{{name}}.log",
    wildcard_constraints:
        name=one_of(DL_EPISODES),
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        url=lambda wc: _dl_entry("episodes", wc.name)["url"],
        archive=lambda wc: f"{DL_DATA}/downloads/{wc.name}.zip",
        out=lambda wc: f"{DL_DATA}/datasets/{wc.name}",
        opts=lambda wc: " ".join(
            o
            for o in (
                _dl_opt("--root", _dl_entry("episodes", wc.name).get("root", wc.name)),
                _dl_opt("--sha256", _dl_entry("episodes", wc.name).get("sha256", "")),
                _dl_opt("--pinned-manifest", _dl_entry("episodes", wc.name).get("manifest", "")),
                _dl_opt("--auth-env", _dl_entry("episodes", wc.name).get("auth_env", "")),
                _dl_opt("--remove-archive", not _dl_entry("episodes", wc.name).get("keep_archive", True)),
            )
            if o
        ),
    shell:
        "python -m saca download-archive --url {params.url:q} --archive {params.archive:q} --out {params.out:q} "
        "{params.opts} > {log:q} 2>&1"


rule download_model:
    output:
        f"{DL_MODELS}/{{name}}/{DL_MANIFEST}",
    log:
        f"{RESULTS}/logs/download/model_{{name}}.log",
    wildcard_constraints:
        name=one_of(DL_MODEL_SPECS),
    conda:
        "../../envs/saca.yaml"
    threads: 1
    params:
        repo_id=lambda wc: _dl_entry("models", wc.name)["repo_id"],
        out=lambda wc: f"{DL_MODELS}/{wc.name}",
        opts=lambda wc: " ".join(
            o
            for o in (
                _dl_opt("--revision", _dl_entry("models", wc.name).get("revision", "main")),
                _dl_opt("--gated", bool(_dl_entry("models", wc.name).get("gated", False))),
                _dl_opt("--allow-patterns", _dl_entry("models", wc.name).get("allow_patterns", [])),
                _dl_opt("--ignore-patterns", _dl_entry("models", wc.name).get("ignore_patterns", [])),
                _dl_opt("--pinned-manifest", _dl_entry("models", wc.name).get("manifest", "")),
            )
            if o
        ),
    shell:
        "python -m saca download-model --repo-id {params.repo_id:q} --out {params.out:q} {params.opts} > {log:q} 2>&1"


rule download_all:
    input:
        ([rules.download_scenes.output[0]] if DL_MP3D else []),
        expand(f"{DL_DATA}/datasets/{{name}}/{DL_MANIFEST}", name=list(DL_EPISODES)),
        expand(f"{DL_MODELS}/{{name}}/{DL_MANIFEST}", name=list(DL_MODEL_SPECS)),

"""External paths a configuration depends on: checked before any job starts.

A checkpoint or model directory named in the config is neither made by the
workflow nor (in general) an input of a rule, so Snakemake cannot see that it
is missing: it would start the job, delete the job's outputs (a finished SFT
model, say) and only then fail. :func:`check_config_paths` checks every such
path when the workflow is parsed (``workflow/rules/common.smk``), and the
commands load the same paths through the same functions, so a typo fails the
same way, naming the key, from the workflow and from the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from saca import SacaError
from saca.io import check_model_dir

_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_policy_reference(ref: str, key: str = "policy.model") -> str:
    """A policy checkpoint: a local ``save_pretrained`` directory (fully checked) or a hub id.

    A hub id cannot be checked without the network; with ``HF_HUB_OFFLINE`` set it must
    already be in the local Hugging Face cache.
    """
    from saca.policy.model import check_checkpoint_dir, is_local_reference

    ref = str(ref)
    if is_local_reference(ref):
        try:
            check_checkpoint_dir(ref)
        except SacaError as err:
            raise SacaError(f"{key}: {err}") from err
        return ref
    if hub_offline():
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
            return ref
        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            raise SacaError(
                f"{key}: '{ref}' is not a local directory, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
            )
    return ref


def check_deepspeed_config(path: str | os.PathLike, key: str = "sft.deepspeed") -> dict:
    """A DeepSpeed config file: exists and holds a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise SacaError(f"{key}: DeepSpeed config file '{p}' {'is not a file' if p.exists() else 'does not exist'}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SacaError(f"{key}: '{p}': malformed DeepSpeed config ({err})") from err
    if not isinstance(data, dict):
        raise SacaError(f"{key}: '{p}': a DeepSpeed config must be a JSON object")
    return data


def check_foundation_paths(foundation: dict, modules, key: str = "auditor.foundation", made=None) -> None:
    """The model directories the foundation auditor backend loads for ``modules``; ``made(path)``: true for a
    folder a workflow rule makes (a download), which is not checked."""
    get = lambda name, default="": foundation.get(name, default)  # noqa: E731
    from saca.auditor.config import FoundationConfig

    def check(path, name):
        if not (made is not None and path and made(path)):
            check_model_dir(path, f"{key}.{name}")

    defaults = FoundationConfig()
    check(get("clip_path", defaults.clip_path), "clip_path")
    if "box" in modules or "mask" in modules:
        check(get("gdino_path", defaults.gdino_path), "gdino_path")
    if "mask" in modules:
        sam3, sam = get("sam3_path", defaults.sam3_path), get("sam_path", defaults.sam_path)
        if sam3 and (Path(sam3).is_dir() or not sam or (made is not None and made(sam3))):
            check(sam3, "sam3_path")
        elif sam:
            check(sam, "sam_path")
        else:
            raise SacaError(f"{key}: the mask module needs sam3_path or sam_path (or drop 'mask' from auditor.modules)")


def _inside(path: str, root: str | None) -> bool:
    if not root:
        return False
    p, r = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return p == r or r in p.parents


def download_targets(config: dict) -> list[str]:
    """The folders the download rules of ``config`` make (``workflow/rules/download.smk``): the MP3D scenes, the
    episode archives' folders and each model's folder."""
    dl = config.get("downloads") or {}
    data, models = dl.get("data_dir", "data"), dl.get("models_dir", "models")
    out = [f"{data}/scene_datasets/mp3d"]  # rule download_scenes exists in every config
    out += [f"{data}/datasets/{n}" for n in dl.get("episodes") or {}]
    out += [f"{models}/{n}" for n in dl.get("models") or {}]
    return out


def check_config_paths(config: dict, produced_under: str | None = None) -> None:
    """Check every external path of a (schema-valid) workflow config; SacaError naming the first bad key.

    Paths under ``produced_under`` (the results directory) and the folders of the config's download rules
    (:func:`download_targets`) are made by the workflow's own rules, which then are inputs of the rules that read
    them, and are not checked.
    """
    produced = ([str(produced_under)] if produced_under else []) + download_targets(config)
    made = lambda path: any(_inside(str(path), root) for root in produced)  # noqa: E731
    policy = config.get("policy", {})
    model = policy.get("model", "embedded")
    if model != "embedded" and not made(model):
        check_policy_reference(model, "policy.model")
    deepspeed = config.get("sft", {}).get("deepspeed")
    if deepspeed:
        check_deepspeed_config(deepspeed, "sft.deepspeed")
    landmarks = config.get("landmarks", {})
    if landmarks.get("extractor") == "llm":
        from saca.landmarks import LandmarkConfig

        path = landmarks.get("model_path", LandmarkConfig().model_path)
        if not made(path):
            if landmarks.get("gguf_file"):  # one GGUF file in the folder (no config.json)
                from saca.landmarks import check_gguf_file

                check_gguf_file(path, landmarks["gguf_file"])
            else:
                check_model_dir(path, "landmarks.model_path")
    auditor = config.get("auditor", {})
    if auditor.get("backend") == "foundation":
        from saca.auditor.config import AuditorConfig

        check_foundation_paths(auditor.get("foundation", {}), auditor.get("modules", AuditorConfig().modules),
                               made=made)

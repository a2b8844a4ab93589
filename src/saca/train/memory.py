"""Per-GPU memory model of SFT and RFT: what one GPU holds at each phase of a step (docs/memory.md).

    python -m saca memory --config config/paper.yaml            # SFT and every RFT variant, 8 GPUs
    python -m saca memory --config config/paper.yaml --world 1 --sharding none

A step's peak is the largest of its phases; each phase is a sum of terms in bytes:

* **model states** (:func:`model_states`): master weights, gradients and AdamW's two
  moments under the sharding strategy at world size ``W``:

  - ``none``: what ``RftTrainer`` does today (every GPU a full replica): fp32 weights
    ``4N``, fp32 gradients ``4N``, AdamW moments ``8N``; torch's foreach AdamW step adds
    one fp32 temporary the size of the parameters (``sqrt(v)``, ``4N``); under bf16
    autocast the forward caches a bf16 copy of every weight (``2N``) until it exits;
  - ``fsdp``: torch FSDP2 (``fully_shard`` per decoder layer / vision block /
    embedding / head, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``):
    the same fp32 states divided by ``W`` (``16N / W``, step temporary ``4N / W``), plus
    the bf16 all-gathered units in flight (the current and the prefetched one) and one
    unit's unsharded bf16 gradient;
  - ``zero0`` ... ``zero3``: DeepSpeed's bf16 layouts with DeepSpeed's own estimates
    (``estimate_zero2_model_states_mem_needs``: ``2N + 18N / W``;
    ``estimate_zero3_model_states_mem_needs``: ``4 * largest layer + 18N / W``;
    ZeRO-1: bf16 weights and gradients whole, fp32 states partitioned, ``4N + 16N / W``;
    ZeRO-0: bf16 weights, fp32 gradients and states whole, ``18N``).

* **reference**: the frozen KL reference in bf16, ``2N`` (``2N / W`` when sharded);
* **activations** of one micro batch (:func:`activation_bytes`), per token and decoder
  layer ``40 H + 8 I + 6 kv`` bytes (H hidden, I MLP width, kv the key/value width; the
  fp32 residual stream and RMSNorm intermediates of autocast, bf16 projections, the
  SwiGLU MLP's four ``I``-wide tensors; attention scores are not stored: SDPA's fused
  kernels), the same form per image patch in the vision tower; with gradient
  checkpointing only each layer's input (4 bytes per hidden unit) plus one layer's
  activations and their gradients; the LM head only at answer / generated positions
  (fp32 logits, log-softmax and its gradient);
* **rollouts** (RFT): the KV cache of ``rows`` sequences of ``S + T`` tokens
  (``rows`` = generate rows at once: ``B * G`` or the cap), the prefill's transient
  activations of ``prefill_rows`` rows, and the bf16 weights generation runs on
  (gathered from the shards for ``fsdp`` / ``zero3``; the fp32 master weights
  themselves for the unsharded trainer).

Phases: ``train`` (forward + backward of a micro batch), ``step`` (clip + AdamW),
``rollout`` (generation), ``reference`` (log-probs of the old policy and the reference).
Gradients are freed after each step (``zero_grad(set_to_none=True)``), so rollouts hold
none. Numbers are estimates; the 2B calibration against a measured peak is in
docs/memory.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from saca import SacaError

STRATEGIES = ("none", "fsdp", "zero0", "zero1", "zero2", "zero3")
GB = 1e9
GIB = 2**30

# Hub models of config/paper.yaml, as transformers configs (values of their config.json), for machines that have not
# downloaded them: the memory model needs only the shapes.
PRESETS = {
    "LLaVA-Video-7B-Qwen2-hf": {  # llava-hf/LLaVA-Video-7B-Qwen2-hf: Qwen2-7B + SigLIP-so400m (LLaVA-OneVision class)
        "model_type": "llava_onevision",
        "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128,
                        "tie_word_embeddings": False, "max_position_embeddings": 32768},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                          "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
        "vision_feature_select_strategy": "full", "vision_feature_layer": -1, "tie_word_embeddings": False,
    },
    "Qwen2-VL-2B-Instruct": {
        "model_type": "qwen2_vl",
        "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                        "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536},
        "tie_word_embeddings": True,
    },
    "Qwen2-VL-7B-Instruct": {
        "model_type": "qwen2_vl",
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 3584},
        "tie_word_embeddings": False,
    },
}


@dataclass(frozen=True)
class ModelDims:
    """What the memory model needs of a policy: parameter counts and the shapes activations scale with."""

    name: str
    params: int  # all parameters (vision tower + projector + LM)
    largest_unit: int  # parameters of the largest sharding unit (decoder layer, vision block, embedding, head)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head dim
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int
    patches_per_frame: int  # vision-tower tokens per frame
    tokens_per_frame: int  # LM tokens per frame


def transformers_config(model: str):
    """The transformers config of ``model``: a local folder with config.json, or a preset name (the folder's last part)."""
    from pathlib import Path

    from transformers import AutoConfig

    path = Path(model)
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path))
    preset = PRESETS.get(path.name)
    if preset is None:
        raise SacaError(f"policy.model {model!r}: no config.json there and no preset of that name "
                        f"(known: {', '.join(sorted(PRESETS))})")
    d = dict(preset)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def dims_of(config, frame_hw: tuple[int, int] = (480, 640), name: str = "") -> ModelDims:
    """:class:`ModelDims` of a transformers config; parameters counted on the meta device (no weights allocated)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    units = [sum(p.numel() for p in m.parameters()) for m in model.modules()
             if type(m).__name__.endswith(("DecoderLayer", "EncoderLayer", "VisionBlock")) or isinstance(m, torch.nn.Embedding)]
    head = model.get_output_embeddings()
    if head is not None:
        units.append(head.weight.numel())
    t = config.text_config
    v = config.vision_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    h, w = frame_hw
    if config.model_type == "llava_onevision":
        patches = (v.image_size // v.patch_size) ** 2
        tokens = patches + 1 if getattr(config, "vision_feature_select_strategy", "full") == "full" else patches
        vl, vh, vi = v.num_hidden_layers, v.hidden_size, v.intermediate_size
    elif config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        factor = 28  # patch 14 x spatial merge 2: Qwen2-VL's smart_resize rounds each side to it
        patches = 4 * max(1, round(h / factor)) * max(1, round(w / factor))
        tokens = patches // 4
        vl, vh = v.depth, v.embed_dim
        vi = int(getattr(v, "mlp_ratio", 4) * vh)
    else:
        raise SacaError(f"memory model: model type {config.model_type!r} is not covered (llava_onevision, qwen2_vl)")
    return ModelDims(name=name or config.model_type, params=params, largest_unit=max(units), layers=t.num_hidden_layers,
                     hidden=t.hidden_size, intermediate=t.intermediate_size, kv_dim=t.num_key_value_heads * head_dim,
                     vocab=t.vocab_size, vision_layers=vl, vision_hidden=vh, vision_intermediate=vi,
                     patches_per_frame=patches, tokens_per_frame=tokens)


@dataclass(frozen=True)
class Setup:
    """One job's settings that memory depends on."""

    job: str = "rft"  # sft | rft
    world: int = 8
    sharding: str = "fsdp"
    bf16: bool = True
    gradient_checkpointing: bool = True
    micro_batch: int = 1  # sequences per forward / backward
    frames: int = 16
    text_tokens: int = 320  # prompt text (system, instruction, options) + answer
    gen_tokens: int = 48  # generated tokens (RFT) / answer tokens (SFT)
    reference: bool = True  # RFT with beta > 0
    shard_reference: bool = True  # the reference's bf16 weights sharded like the policy (fsdp / zero3)
    G: int = 8
    groups: int = 4  # groups per step per GPU (rft.groups_per_step)
    gen_rows: int = 0  # rows per generate call (policy.agent.max_batch; 0: all G * groups)
    prefill_rows: int = 0  # rows per prefill pass (0: all rows of the call at once)
    extra_bytes: int = 0  # anything else resident (e.g. a benchmark's own copy of the model)
    first_step: bool = False  # AdamW's moments are created by the first step: absent before it

    def validate(self) -> None:
        if self.sharding not in STRATEGIES:
            raise SacaError(f"sharding {self.sharding!r}: expected one of {', '.join(STRATEGIES)}")
        if self.job not in ("sft", "rft"):
            raise SacaError(f"job {self.job!r}: expected sft or rft")
        if self.world < 1 or self.micro_batch < 1:
            raise SacaError("world and micro_batch must be at least 1")

    @property
    def sharded_params(self) -> bool:
        return self.sharding in ("fsdp", "zero3")

    @property
    def rows(self) -> int:
        allrows = self.G * self.groups
        return min(allrows, self.gen_rows) if self.gen_rows else allrows


def seq_len(dims: ModelDims, setup: Setup) -> int:
    """Prompt tokens of one decision: every frame's image tokens and the text."""
    return setup.frames * dims.tokens_per_frame + setup.text_tokens


def model_states(dims: ModelDims, s: Setup) -> dict:
    """Bytes of the model states per GPU: ``weights`` (what the optimizer updates, and the compute copy where it is
    separate), ``grads``, ``optimizer`` (AdamW's moments, fp32 master weights of DeepSpeed), ``step_temp``
    (the optimizer step's temporary), ``compute`` (bf16 copies in flight during forward / backward)."""
    N, W, P = dims.params, s.world, 2 if s.bf16 else 4
    if s.sharding == "none":
        return {"weights": 4 * N, "grads": 4 * N, "optimizer": 8 * N, "step_temp": 4 * N,
                "compute": 2 * N if s.bf16 else 0}  # autocast's cache of bf16 weight casts
    if s.sharding == "fsdp":
        # two units gathered (current + prefetch) and one unit's unsharded gradient, in the compute dtype
        return {"weights": 4 * N // W, "grads": 4 * N // W, "optimizer": 8 * N // W, "step_temp": 4 * N // W,
                "compute": 3 * P * dims.largest_unit}
    if not s.bf16:
        raise SacaError(f"sharding {s.sharding}: the DeepSpeed layouts are modelled for bf16 only")
    if s.sharding == "zero0":
        return {"weights": 2 * N, "grads": 4 * N, "optimizer": 12 * N, "step_temp": 0, "compute": 0}
    if s.sharding == "zero1":
        return {"weights": 2 * N, "grads": 2 * N, "optimizer": 16 * N // W, "step_temp": 0, "compute": 0}
    if s.sharding == "zero2":  # deepspeed estimate_zero2_model_states_mem_needs (no offload): 2N + 18N / W
        return {"weights": 2 * N, "grads": 2 * N // W + 4 * N // W, "optimizer": 12 * N // W, "step_temp": 0,
                "compute": 0}
    # zero3: deepspeed estimate_zero3_model_states_mem_needs (no offload): 4 * largest layer + 18N / W
    return {"weights": 2 * N // W, "grads": 6 * N // W, "optimizer": 10 * N // W, "step_temp": 0,
            "compute": 4 * dims.largest_unit}


def layer_activation_bytes(hidden: int, intermediate: int, kv: int) -> int:
    """Stored activations of one transformer layer per token (bytes), bf16 autocast: ``40 H + 8 I + 6 kv``."""
    return 40 * hidden + 8 * intermediate + 6 * kv


def activation_bytes(dims: ModelDims, s: Setup) -> int:
    """Activations of one micro batch's forward + backward (bytes)."""
    scale = 1 if s.bf16 else 2
    tokens = s.micro_batch * seq_len(dims, s)
    patches = s.micro_batch * s.frames * dims.patches_per_frame
    per_tok = layer_activation_bytes(dims.hidden, dims.intermediate, dims.kv_dim)
    per_patch = layer_activation_bytes(dims.vision_hidden, dims.vision_intermediate, dims.vision_hidden)
    if s.gradient_checkpointing:
        # each layer's input kept (fp32 residual stream), one layer recomputed with its gradients in flight
        text = tokens * (4 * dims.hidden * dims.layers + 2 * per_tok)
        vision = patches * (4 * dims.vision_hidden * dims.vision_layers + 2 * per_patch)
        act = max(text + patches * 4 * dims.vision_hidden * dims.vision_layers, vision)
    else:
        act = tokens * per_tok * dims.layers + patches * per_patch * dims.vision_layers
    logits = 3 * 4 * s.micro_batch * s.gen_tokens * dims.vocab  # fp32 logits, log-softmax, gradient
    return int(act * scale + logits)


def inference_bytes(dims: ModelDims, s: Setup, rows: int) -> int:
    """Transient activations of a no-grad forward of ``rows`` prompts (one layer at a time)."""
    scale = 1 if s.bf16 else 2
    tokens = rows * seq_len(dims, s)
    text = tokens * 2 * (4 * dims.hidden + 3 * dims.intermediate + 2 * dims.kv_dim)
    vision = rows * s.frames * dims.patches_per_frame * 2 * (4 * dims.vision_hidden + 2 * dims.vision_intermediate)
    return int(max(text, vision) * scale)


def kv_cache_bytes(dims: ModelDims, s: Setup) -> int:
    """The rollouts' KV cache: ``rows x (S + T) x layers x 2 x kv x bytes``."""
    per = 2 if (s.bf16 and s.sharding != "none") else 4  # the unsharded trainer generates with its fp32 weights
    return s.rows * (seq_len(dims, s) + s.gen_tokens) * dims.layers * 2 * dims.kv_dim * per


def phases(dims: ModelDims, s: Setup) -> dict:
    """Bytes per GPU at each phase of a step, with the terms that make them up."""
    s.validate()
    st = model_states(dims, s)
    N, W = dims.params, s.world
    ref = 0
    if s.job == "rft" and s.reference:
        ref = (2 if s.bf16 else 4) * N
        if s.shard_reference and s.sharded_params:
            ref //= W
    act = activation_bytes(dims, s)
    if s.first_step:
        st = {**st, "optimizer": 0 if s.sharding in ("none", "fsdp") else st["optimizer"]}
    moments_at_step = model_states(dims, s)["optimizer"]
    out = {
        "train": {"weights": st["weights"], "optimizer": st["optimizer"], "reference": ref, "grads": st["grads"],
                  "compute": st["compute"], "activations": act, "extra": s.extra_bytes},
        "step": {"weights": st["weights"], "optimizer": moments_at_step, "reference": ref, "grads": st["grads"],
                 "step_temp": st["step_temp"], "extra": s.extra_bytes},
    }
    if s.job == "rft":
        gen_weights = 2 * N if s.sharded_params else 0
        prefill = s.prefill_rows or s.rows
        out["rollout"] = {"weights": st["weights"], "optimizer": st["optimizer"], "reference": ref,
                          "generation_weights": gen_weights, "kv_cache": kv_cache_bytes(dims, s),
                          "prefill": inference_bytes(dims, s, min(prefill, s.rows)), "extra": s.extra_bytes}
        ref_gather = 3 * 2 * dims.largest_unit if s.sharded_params else 0
        out["reference"] = {"weights": st["weights"], "optimizer": st["optimizer"], "reference": ref,
                            "compute": ref_gather, "activations": inference_bytes(dims, s, s.micro_batch),
                            "extra": s.extra_bytes}
    for terms in out.values():
        terms["total"] = sum(terms.values())
    return out


def peak(dims: ModelDims, s: Setup) -> tuple[str, int]:
    """The phase with the most bytes and its total."""
    ph = phases(dims, s)
    name = max(ph, key=lambda k: ph[k]["total"])
    return name, ph[name]["total"]


# --- from a project config ----------------------------------------------------------------------------------------

@dataclass
class Job:
    name: str
    setup: Setup


def sft_strategy(sft: dict, base: str = ".") -> str:
    """SFT's sharding: ``sft.sharding`` when set, else the ZeRO stage of ``sft.deepspeed``'s file, else none."""
    import json
    from pathlib import Path

    if sft.get("sharding") and sft["sharding"] != "none":
        return str(sft["sharding"])
    if sft.get("deepspeed"):
        path = Path(sft["deepspeed"])
        path = path if path.is_absolute() else Path(base) / path
        try:
            stage = json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0)
        except (OSError, ValueError) as err:
            raise SacaError(f"sft.deepspeed {sft['deepspeed']}: cannot read its ZeRO stage ({err})") from err
        return f"zero{int(stage)}"
    return "none"


def jobs_from_config(cfg: dict, world: int | None = None, text_tokens: int = 320, answer_tokens: int = 16,
                     base: str = ".") -> list[Job]:
    """The SFT job and every RFT variant of a project config (sizes from its sections), as :class:`Setup` s.

    World sizes are ``resources.sft.gpu`` / ``resources.rft.gpu`` unless ``world`` is given; frames per
    decision are ``vln_ego.memory.max_frames``; rows per generate call are ``policy.agent.max_batch``."""
    from saca.train.rft import check_variant

    res = cfg.get("resources") or {}
    frames = int(((cfg.get("vln_ego") or {}).get("memory") or {}).get("max_frames", 16))
    agent = ((cfg.get("policy") or {}).get("agent") or {})
    sft = cfg.get("sft") or {}
    jobs = [Job("sft", Setup(job="sft", world=world or int((res.get("sft") or {}).get("gpu", 1)),
                             sharding=sft_strategy(sft, base), bf16=bool(sft.get("bf16", False)),
                             gradient_checkpointing=bool(sft.get("gradient_checkpointing", False)),
                             micro_batch=int(sft.get("per_device_train_batch_size", 1)), frames=frames,
                             text_tokens=text_tokens, gen_tokens=answer_tokens, reference=False))]
    rft = cfg.get("rft") or {}
    names = list(rft.get("variants") or {}) or [None]
    for name in names:
        if name:
            v = check_variant(rft, name, cfg.get("auditor"))
        else:
            from saca.config import from_dict
            from saca.train.rft import RftConfig

            v = from_dict(RftConfig, {k: x for k, x in rft.items() if k not in ("variants", "runs", "datasets", "sft_mix")},
                          "rft")
        jobs.append(Job(f"rft {name or ''}".strip(), Setup(
            job="rft", world=world or int((res.get("rft") or {}).get("gpu", 1)), sharding=v.sharding, bf16=v.bf16,
            gradient_checkpointing=v.gradient_checkpointing, micro_batch=v.micro_batch_size, frames=frames,
            text_tokens=text_tokens, gen_tokens=v.generation.max_new_tokens, reference=v.beta > 0, G=v.G,
            groups=v.groups_per_step, gen_rows=int(agent.get("max_batch", 0)))))
    return jobs


def table(dims: ModelDims, jobs: list[Job], gpu_gb: float) -> str:
    """A markdown table: per job the peak phase, its terms in GB and whether it fits ``gpu_gb``."""
    cols = ["weights", "grads", "optimizer", "reference", "compute", "activations", "step_temp",
            "generation_weights", "kv_cache", "prefill"]
    head = ("| job | W | sharding | micro | rows | peak phase | " + " | ".join(cols) + " | peak GB | peak GiB | fits "
            f"{gpu_gb:g} GB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for job in jobs:
        ph = phases(dims, job.setup)
        name = max(ph, key=lambda k: ph[k]["total"])
        t = ph[name]
        s = job.setup
        cells = [f"{t[c] / GB:.1f}" if c in t else "" for c in cols]
        rows = str(s.rows) if s.job == "rft" else ""
        lines.append(f"| {job.name} | {s.world} | {s.sharding} | {s.micro_batch} | {rows} | {name} | " + " | ".join(cells)
                     + f" | {t['total'] / GB:.1f} | {t['total'] / GIB:.1f} | {'yes' if t['total'] <= gpu_gb * GB else 'NO'} |")
    return "\n".join(lines)


def phase_table(dims: ModelDims, jobs: list[Job]) -> str:
    """A markdown table: per job the total of every phase in GB (the peak is the largest)."""
    names = ["train", "step", "rollout", "reference"]
    lines = ["| job | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for job in jobs:
        ph = phases(dims, job.setup)
        lines.append(f"| {job.name} | " + " | ".join(f"{ph[n]['total'] / GB:.1f}" if n in ph else "" for n in names) + " |")
    return "\n".join(lines)


__all__ = ["ModelDims", "Setup", "dims_of", "model_states", "activation_bytes", "kv_cache_bytes", "phases", "peak",
           "jobs_from_config", "table", "phase_table", "transformers_config", "seq_len"]

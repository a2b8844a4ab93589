"""SFT throughput: samples/s and tokens/s of the real SFT step (saca.train.sft.sft_loss + AdamW).

    python benchmarks/sft_throughput.py                       # tiny embedded model, CPU
    python benchmarks/sft_throughput.py --config-size 2b      # Qwen2-VL-2B-shaped model, random weights (GPU)
    python benchmarks/sft_throughput.py --config-size 2b --bf16 --gradient-checkpointing --batch-size 1

Data are synthetic VLN-Ego samples (saca.policy.synthetic) written with the real
store, read and encoded by the real PolicyData / PolicyProcessor path, so that
a step costs what an SFT step costs: encoding (frame decode + image processing
+ tokenization), collation, forward + backward of Eq. 8, clipping, AdamW.

``--config-size 2b`` builds Qwen2-VL-2B's shapes (text: 28 layers, hidden 1536,
12 heads, 2 KV heads, MLP 8960, vocabulary 151936; vision: 32 layers, width
1280, 16 heads) with random weights. Its tokenizer is the tiny offline one
(ids beyond it are simply unused), so token counts are those of our prompt
under a byte-level BPE, close to Qwen's for this English text. Full fine-tuning
of 2B parameters with AdamW needs ~35 GB (fp32 master weights + moments +
gradients): on a machine without CUDA the script only counts the parameters
(on the meta device) and reports that the GPU number could not be measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from saca.policy.data import PolicyData  # noqa: E402
from saca.policy.processor import PolicyProcessor  # noqa: E402
from saca.train.sft import answer_tokens, sft_loss  # noqa: E402
from saca.train.state import make_scheduler, param_groups  # noqa: E402
from saca.policy.synthetic import make_vln_ego  # noqa: E402
from saca.policy.tiny import TinyConfig, build_tokenizer, image_processor, model_config  # noqa: E402
from saca.vln_ego.samplers import MemoryConfig  # noqa: E402

QWEN2_VL_2B = dict(
    hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
    vision_depth=32, vision_embed_dim=1280, vision_heads=16, vocab_size=151936,
)


def build(size: str, image_size: int):
    tcfg = TinyConfig(image_size=image_size)
    tok = build_tokenizer(tcfg.vocab_size)
    mcfg = model_config(tcfg, tok)
    if size == "2b":
        big = QWEN2_VL_2B
        t = mcfg.text_config
        t.hidden_size, t.intermediate_size = big["hidden_size"], big["intermediate_size"]
        t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads = big["num_layers"], big["num_heads"], big["num_kv_heads"]
        t.head_dim = big["hidden_size"] // big["num_heads"]
        t.vocab_size = big["vocab_size"]
        t.layer_types = ["full_attention"] * big["num_layers"]
        t.rope_parameters["mrope_section"] = [16, 24, 24]
        t.tie_word_embeddings = True
        mcfg.tie_word_embeddings = True
        v = mcfg.vision_config
        v.depth, v.embed_dim, v.num_heads, v.mlp_ratio, v.hidden_size = big["vision_depth"], big["vision_embed_dim"], big["vision_heads"], 4, big["hidden_size"]
    return tok, mcfg, image_processor(tcfg)


def count_parameters(mcfg) -> int:
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(mcfg)
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-size", choices=["tiny", "2b"], default="tiny")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch-size", type=int, default=8, help="samples per step (one micro batch)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--image-size", type=int, default=None, help="frame side after resizing (tiny: 56, 2b: 224)")
    ap.add_argument("--frames", type=int, default=16, help="max_frames of the memory sampler (history + current)")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (fp32 master weights)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    image_size = args.image_size or (56 if args.config_size == "tiny" else 224)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    tok, mcfg, ip = build(args.config_size, image_size)
    n_params = count_parameters(mcfg)
    result = {
        "config_size": args.config_size, "parameters": n_params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "image_size": image_size,
        "max_frames": args.frames, "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
    }
    if args.config_size == "2b" and device.type != "cuda":
        result["measured"] = False
        result["note"] = "no CUDA device: a 2B-parameter full fine-tuning step was not measured (GPU number unavailable)"
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    from transformers import AutoModelForImageTextToText

    torch.manual_seed(args.seed)
    model = AutoModelForImageTextToText.from_config(mcfg).to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    proc = PolicyProcessor(tok, ip, model.config, source=f"<{args.config_size}>")
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-5, betas=(0.9, 0.999))
    total = args.warmup + args.steps
    sched = make_scheduler(opt, "cosine", total, 1)
    with tempfile.TemporaryDirectory() as tmp:
        split = make_vln_ego(Path(tmp) / "ego", episodes=max(4, math.ceil(total * args.batch_size / 40)), steps=40,
                             size=128, seed=args.seed, memory=MemoryConfig(max_frames=args.frames))
        data = PolicyData([split], frame_cache=0)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed)).tolist()
        times = {"encode": 0.0, "step": 0.0}
        counted = {"samples": 0, "tokens": 0, "answer_tokens": 0}
        for step in range(total):
            idx = [order[(step * args.batch_size + j) % len(order)] for j in range(args.batch_size)]
            t0 = time.perf_counter()
            encs = [data.encode(proc, i) for i in idx]
            batch = {k: v.to(device) for k, v in proc.collate(encs).items()}
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            n_ans = sum(answer_tokens(e) for e in encs)
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)
            with ctx:
                nll, _ = sft_loss(model, batch)
            (nll / max(n_ans, 1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if step >= args.warmup:
                times["encode"] += t1 - t0
                times["step"] += t2 - t1
                counted["samples"] += len(idx)
                counted["tokens"] += int(batch["attention_mask"].sum())
                counted["answer_tokens"] += n_ans
    wall = times["encode"] + times["step"]
    result.update({
        "measured": True,
        "steps": args.steps,
        "samples_per_s": counted["samples"] / wall,
        "tokens_per_s": counted["tokens"] / wall,
        "answer_tokens_per_s": counted["answer_tokens"] / wall,
        "model_samples_per_s": counted["samples"] / times["step"],
        "model_tokens_per_s": counted["tokens"] / times["step"],
        "encode_share": times["encode"] / wall,
        "tokens_per_sample": counted["tokens"] / counted["samples"],
    })
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

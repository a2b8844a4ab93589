"""Decoding pair: tokens/s of one batched decision round with ``model.generate`` (hf) and saca's static-cache loop.

    PYTHONPATH=src python benchmarks/decode_throughput.py                                   # tiny random policy, CPU
    PYTHONPATH=src python benchmarks/decode_throughput.py --config-size 2b --bf16 --device cuda --rows 8 32

``--rows`` decision inputs (a rollout round of B x G trajectories: prompt with ``--frames`` frames, random
pixels) are generated in one call, sampling at temperature 1 with ``--max-new-tokens``, by both decoders in
alternating order (``--repeats`` times each), in one process: the pair is measured under the same conditions.
Both decoders give the same tokens (tests/test_policy.py); the script checks it on every call. Reported:
generated tokens (up to each row's end of turn) per second of the call, and the ratio static / hf.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=None, help="policy checkpoint (default: random weights of --config-size)")
    ap.add_argument("--config-size", choices=["tiny", "2b"], default="tiny")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--rows", type=int, nargs="+", default=[32])
    ap.add_argument("--frames", type=int, default=4, help="frames per decision (history + current)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from rollout_throughput import make_policy
    from saca.policy.generate import PolicyInput, SamplingConfig, generate_batch
    from saca.prompt import build_prompt

    policy, device = make_policy(args)
    sampling = SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    side = args.image_size or (224 if args.config_size == "2b" else 128)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "policy": policy.source,
               "threads": torch.get_num_threads(), "frames": args.frames, "max_new_tokens": args.max_new_tokens,
               "rows": []}
    warm = [PolicyInput(build_prompt("Warm up.", args.frames - 1, 15),
                        [np.zeros((side, side, 3), dtype=np.uint8)] * args.frames)]
    for dec in ("hf", "static"):  # kernels, compilation of the decode step
        generate_batch(policy, warm * 2, sampling, decoder=dec)
    for rows in args.rows:
        inputs = [PolicyInput(build_prompt(f"Walk past sofa {i} and stop at the door.", args.frames - 1, 15),
                              [np.random.default_rng([i, f]).integers(0, 256, (side, side, 3), dtype=np.uint8)
                               for f in range(args.frames)]) for i in range(rows)]
        acc = {"hf": [0, 0.0], "static": [0, 0.0]}
        tokens = {}
        for rep in range(args.repeats):
            for dec in (("hf", "static") if rep % 2 == 0 else ("static", "hf")):
                sync()
                t0 = time.perf_counter()
                gen = generate_batch(policy, inputs, sampling, seed=args.seed + rep, decoder=dec, return_tokens=True)
                sync()
                dt = time.perf_counter() - t0
                tokens.setdefault(rep, {})[dec] = gen.token_ids
                acc[dec][0] += sum(len(t) for t in gen.token_ids)
                acc[dec][1] += dt
        row = {"rows": rows, "same_tokens": all(t["hf"] == t["static"] for t in tokens.values())}
        for dec, (n, s) in acc.items():
            row[f"{dec}_tokens"] = n
            row[f"{dec}_seconds"] = round(s, 2)
            row[f"{dec}_tokens_per_s"] = round(n / s, 1)
        row["static_over_hf"] = round(row["static_tokens_per_s"] / row["hf_tokens_per_s"], 2)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

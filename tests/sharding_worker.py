"""A few AdamW steps of SFT's loss on the tiny policy, unsharded (1 process) or FSDP-sharded (torchrun, gloo):
the worker of tests/test_sharding.py (not a test module itself).

    torchrun --nproc_per_node 2 tests/sharding_worker.py --init TINY --out OUT --steps 4 --shard [--kill-at 3]

Every step trains on 4 of 8 fixed synthetic decisions (chosen by the step's seed), split over the ranks; the
loss is the summed answer NLL over the global answer-token count, so the sum over ranks is the global mean. A
sharded checkpoint follows every step (OUT/checkpoints/step-N); a run resumes from the newest one.
``--kill-at N``: rank 0 SIGKILLs itself during step N, after its backward and before the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--shard", action="store_true")
    ap.add_argument("--kill-at", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch

    from saca.policy.model import load_policy
    from saca.prompt import build_prompt
    from saca.train import sharding
    from saca.train.sft import sft_loss
    from saca.train.state import Dist, make_scheduler, seed_everything

    torch.set_num_threads(1)
    dist = Dist()
    dist.init("cpu")
    seed_everything(0)
    policy = load_policy(args.init)
    model, proc = policy.model, policy.processor
    model.config.use_cache = False
    model.train()
    answer = "A. Move forward 25 cm, B. Turn left 15 degrees, C. Turn right 15 degrees, D. Stop"
    samples = []
    for i in range(8):
        rng = np.random.default_rng(i)
        n = i % 3
        images = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(n + 1)]
        samples.append(proc.encode(build_prompt(f"Walk to chair {i}.", n, 15), images, answer=answer))
    if args.shard:
        sharding.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = make_scheduler(opt, "cosine", args.steps, 1)
    ckpts = Path(args.out) / "checkpoints"
    start = 0
    done = sorted(ckpts.glob("step-*")) if ckpts.exists() else []
    if done:
        start = sharding.load_checkpoint(done[-1], model, opt, sched)["step"]
    else:
        # a rollout's decisions with the gathered weights (every rank generates; rank 0 prints)
        from saca.policy.generate import PolicyInput, SamplingConfig, generate_batch

        inputs = [PolicyInput(build_prompt(f"Walk to chair {i}.", 0, 15),
                              [np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8)]) for i in range(3)]
        model.eval()
        with torch.no_grad(), sharding.gathered_for_generation(model):
            gen = generate_batch(policy, inputs, SamplingConfig(do_sample=True, max_new_tokens=8, seed=1), return_tokens=True)
        model.train()
        if dist.rank == 0:
            print("generated", gen.token_ids, flush=True)
    for step in range(start, args.steps):
        pick = np.random.default_rng([7, step]).choice(len(samples), 4, replace=False).tolist()
        local = [samples[i] for i in pick][dist.rank :: dist.world]
        batch = proc.collate(local)
        nll, n = sft_loss(model, batch)
        n_global = dist.all_reduce_sum([n])[0]
        (nll / n_global).backward()
        if args.kill_at == step + 1 and dist.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = dist.all_reduce_sum([float(nll.detach())])[0] / n_global
        if dist.rank == 0:
            print(f"step {step + 1} loss {loss:.8f} grad_norm {float(norm.full_tensor() if hasattr(norm, 'full_tensor') else norm):.8f}",
                  flush=True)
        sharding.save_checkpoint(ckpts / f"step-{step + 1:06d}", model, opt, sched, {"step": step + 1})
    sharding.save_final(Path(args.out) / "final", model, proc)
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

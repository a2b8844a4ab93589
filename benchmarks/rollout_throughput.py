"""Rollout throughput of the RL engine (saca.train.rollout): env steps/s and decisions/s of group rollouts.

    PYTHONPATH=src python benchmarks/rollout_throughput.py --policy results/sft/r2r_rxr/final   # a trained policy, CPU
    PYTHONPATH=src python benchmarks/rollout_throughput.py --config-size 2b --bf16 --device cuda   # Qwen2-VL-2B shapes, random weights

For each B (instructions at once) with G trajectories each, one rollout with the
engine as RFT runs it (one batched ``generate`` call per round of decisions over
every active trajectory), then, measured in the same process:

* **one-at-a-time**: the first ``--single`` decision inputs of that rollout (prompt
  and frames) encoded and generated one by one, as the evaluation agent does without
  batching: the policy's decisions/s without batching;
* **render-only**: every trajectory's actions replayed in a fresh simulator with
  one rendered frame per step and nothing else: the embedded world's physical limit
  for the same episodes.

Reported: env steps/s and decisions/s of the whole rollout; decisions/s of the
policy's own time (encoding + generate, rendering excluded) against one-at-a-time
generation; the rollout's env steps/s as a share of the render-only rate.
``--update`` also times one RFT update (rollout, reference log-probs,
forward/backward, optimizer and the rest) with the real trainer.

``--decode both`` is the decoding pair: for each B the same rollout (same seed, so the
same trajectories: the two decoders give the same tokens) with ``model.generate``
(``hf``, the old path) and with saca's static-cache decode loop (``static``), in
alternating order ``--repeats`` times, in one process; reported: generated tokens/s
of the generate calls (encoding excluded) and of the policy's time, and the ratio.

    PYTHONPATH=src python benchmarks/rollout_throughput.py --sim stub --B 4 --G 8 --max-steps 24 --decode both --single 0

A random-weight policy names no action: such output counts as invalid and
``--invalid-action forward`` (default for random weights) keeps the agent moving,
one step per decision. ``--max-steps`` caps episodes (random agents never stop).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_policy(args):
    import torch
    from transformers import AutoModelForImageTextToText

    from saca.policy.model import Policy, load_policy, torch_dtype
    from saca.policy.processor import PolicyProcessor

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if args.policy:
        return load_policy(args.policy, dtype="bfloat16" if args.bf16 else "float32", device=device), device
    from sft_throughput import build

    tok, mcfg, improc = build(args.config_size, args.image_size or (224 if args.config_size == "2b" else 56))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(mcfg, dtype=torch_dtype("bfloat16" if args.bf16 else "float32"))
    model.to(device).eval()
    return Policy(model, PolicyProcessor(tok, improc, model.config), "qwen2_vl", f"random {args.config_size}"), device


class StubSim:
    """A stand-in world for machines without pybullet (``--sim stub``): open floor, a noise frame per pose.

    Only the policy's side is then measured (the GPU numbers); the render-only comparison needs ``--sim embedded``."""

    def __new__(cls, sim_cfg, turn_angle):
        import numpy as np

        from saca.sim.base import Observation, Simulator

        class _Stub(Simulator):
            backend = "stub"

            def load_scene(self, scene_id):
                pass

            def render(self, position, heading):
                seed = abs(hash((round(position[0], 3), round(position[2], 3), round(heading, 3)))) % 2**32
                rgb = np.random.default_rng(seed).integers(0, 256, (self.config.height, self.config.width, 3), dtype=np.uint8)
                return Observation(rgb=rgb)

            def move_to(self, start, target):
                return tuple(float(v) for v in target)

            def snap_to_floor(self, position):
                return tuple(float(v) for v in position)

            def geodesic_distance(self, a, b):
                return float(np.hypot(a[0] - b[0], a[2] - b[2]))

            def shortest_path(self, a, b):
                return [tuple(a), tuple(b)]

        return _Stub(sim_cfg, turn_angle)


def stub_episodes(n):
    from saca.episodes import Episode

    return [Episode(episode_id=i, trajectory_id=i, scene_id="stub", start_position=[0.0, 0.0, 0.0],
                    start_rotation=[0.0, 0.0, 0.0, 1.0], goals=[{"position": [2.0 + i, 0.0, -6.0], "radius": 3.0}],
                    reference_path=[[0.0, 0.0, 0.0], [2.0 + i, 0.0, -6.0]],
                    instruction_text="Walk past the sofa, turn left at the lamp and stop next to the green chair.")
            for i in range(n)]


def render_only(trajs, make_sim) -> tuple[int, float]:
    """Replay every trajectory's actions with one rendered frame per step (no policy)."""
    frames, t0 = 0, time.perf_counter()
    sim = None
    for tr in trajs:
        sim = sim or make_sim(tr.episode)
        sim.reset(tr.episode)
        sim.observe().rgb
        frames += 1
        for a in tr.actions:
            sim.step(a)
            if not sim.episode_over:
                sim.observe().rgb
                frames += 1
    return frames, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default=None, help="policy checkpoint (default: random weights of --config-size)")
    ap.add_argument("--config-size", choices=["tiny", "2b"], default="tiny")
    ap.add_argument("--image-size", type=int, default=None, help="frame side the policy sees (random policies)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--B", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--single", type=int, default=32, help="decisions generated one at a time for the baseline")
    ap.add_argument("--max-steps", type=int, default=500, help="episode step cap")
    ap.add_argument("--invalid-action", choices=["stop", "forward"], default=None)
    ap.add_argument("--sim", choices=["embedded", "stub"], default="embedded", help="stub: no pybullet (GPU machines)")
    ap.add_argument("--dataset-dir", type=Path, default=None, help="existing dataset root (default: build a mini world)")
    ap.add_argument("--split", default="val_unseen")
    ap.add_argument("--turn-angle", type=float, default=15.0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--update", action="store_true", help="also time one RFT update (B = the largest --B)")
    ap.add_argument("--micro-batch-size", type=int, default=16, help="rft.micro_batch_size of the timed update")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="rft.gradient_checkpointing of the timed update")
    ap.add_argument("--decode", choices=["hf", "static", "both"], default="static",
                    help="decoder of the rollouts (policy.agent.decoder); both: the paired comparison")
    ap.add_argument("--repeats", type=int, default=2, help="rollouts per decoder with --decode both (alternating)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from saca.episodes import load_split
    from saca.policy.agent import PolicyAgentConfig
    from saca.policy.generate import PolicyInput, SamplingConfig, generate_batch
    from saca.sim import make_simulator
    from saca.sim.base import SimConfig
    from saca.train.rollout import RolloutEngine

    policy, device = make_policy(args)
    invalid = args.invalid_action or ("stop" if args.policy else "forward")
    sim_cfg = SimConfig(width=args.width, height=args.width, depth=False, instance=False, max_steps=args.max_steps)
    sampling = SamplingConfig(do_sample=True, temperature=1.0, max_new_tokens=48, seed=args.seed)
    cfg = PolicyAgentConfig(generation=sampling, invalid_action=invalid, device=device,
                            decoder="static" if args.decode == "both" else args.decode)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
               "policy": policy.source, "G": args.G, "invalid_action": invalid, "max_steps": args.max_steps,
               "threads": torch.get_num_threads(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="saca-rollout-bench-") as tmp:
        tmp = Path(tmp)
        if args.sim == "stub":
            episodes, scenes = stub_episodes(max(args.B)), None

            def make_sim(_ep=None):
                return StubSim(sim_cfg, args.turn_angle)
        else:
            from eval_throughput import build_world

            ds = args.dataset_dir or build_world(tmp, max(args.B), args.turn_angle, args.seed)
            episodes = load_split(ds / "episodes", args.split)
            scenes = ds.parent / "scenes"

            def make_sim(_ep=None):
                return make_simulator("embedded", sim_cfg, args.turn_angle, scenes)

        # warm-up: one short group (model kernels, scene caches)
        RolloutEngine(policy, replace(cfg, generation=replace(sampling, max_new_tokens=8)), make_sim, seed=99).rollout(episodes[:1], 2)
        if args.decode == "both":
            results["decode_pairs"] = [decode_pair(args, policy, cfg, make_sim, episodes[:B], device) for B in args.B]
            for r in results["decode_pairs"]:
                print(json.dumps(r), flush=True)
        for B in (args.B if args.decode != "both" else []):
            eps = episodes[:B]
            engine = RolloutEngine(policy, cfg, make_sim, seed=args.seed)
            if device == "cuda":
                torch.cuda.synchronize()
            trajs = engine.rollout(eps, args.G)
            st = engine.stats.as_dict()
            # the same decision inputs, encoded and generated one at a time (as the evaluation agent does)
            decisions = [PolicyInput(d.prompt, [tr.frames[i] for i in d.history + [d.step]])
                         for tr in trajs for d in tr.decisions][: args.single]
            t0 = time.perf_counter()
            for k, x in enumerate(decisions):
                generate_batch(policy, [x], sampling, seed=1000 + k)
            if device == "cuda":
                torch.cuda.synchronize()
            single_s = time.perf_counter() - t0
            frames, render_s = render_only(trajs, make_sim)
            row = {
                "B": B, "trajectories": len(trajs), "env_steps": st["env_steps"], "decisions": st["decisions"],
                "generate_calls": st["generate_calls"], "rows_per_generate": round(st["rows_per_generate"], 2),
                "seconds": round(st["time_total"], 2), "policy_seconds": round(st["time_generate"], 2), "encode_seconds": round(st["time_encode"], 2),
                "env_seconds": round(st["time_env"], 2),
                "env_steps_per_s": round(st["env_steps_per_s"], 1),
                "decisions_per_s": round(st["decisions"] / st["time_total"], 2),
                "decisions_per_s_policy": round(st["decisions_per_s_policy"], 2),
                "decisions_per_s_one_at_a_time": round(len(decisions) / single_s, 2),
                "render_only_frames_per_s": round(frames / render_s, 1),
                "success": sum(tr.success for tr in trajs),
            }
            row["batched_over_one_at_a_time"] = round(row["decisions_per_s_policy"] / row["decisions_per_s_one_at_a_time"], 2)
            row["rollout_over_render_only"] = round(row["env_steps_per_s"] / row["render_only_frames_per_s"], 3)
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
        if args.update:
            results["update"] = time_update(args, policy, cfg, sim_cfg, episodes, make_sim, tmp)
            print(json.dumps(results["update"]), flush=True)
    print(f"# rollout throughput, G={args.G} ({results['device']}, {policy.source}, invalid -> {invalid})")
    print(f"{'B':>3} {'steps':>6} {'dec':>5} {'rows/gen':>8} {'steps/s':>8} {'dec/s pol':>9} {'dec/s 1x1':>9} {'ratio':>6} "
          f"{'render/s':>8} {'share':>6}")
    for r in results["rows"]:
        print(f"{r['B']:>3} {r['env_steps']:>6} {r['decisions']:>5} {r['rows_per_generate']:>8} {r['env_steps_per_s']:>8} "
              f"{r['decisions_per_s_policy']:>9} {r['decisions_per_s_one_at_a_time']:>9} {r['batched_over_one_at_a_time']:>6} "
              f"{r['render_only_frames_per_s']:>8} {r['rollout_over_render_only']:>6}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def decode_pair(args, policy, cfg, make_sim, eps, device) -> dict:
    """The same rollout with model.generate and with the static-cache loop, alternating, ``--repeats`` times each."""
    import torch

    from saca.train.rollout import RolloutEngine

    out = {"B": len(eps), "G": args.G}
    actions = {}
    for rep in range(args.repeats):
        for decoder in (("hf", "static") if rep % 2 == 0 else ("static", "hf")):
            engine = RolloutEngine(policy, replace(cfg, decoder=decoder), make_sim, seed=args.seed)
            if device == "cuda":
                torch.cuda.synchronize()
            trajs = engine.rollout(eps, args.G)
            st = engine.stats.as_dict()
            acts = [list(tr.actions) for tr in trajs]
            assert actions.setdefault(decoder, acts) == acts, "a decoder's rollout changed between repeats"
            d = out.setdefault(decoder, {"tokens": 0, "generate_s": 0.0, "policy_s": 0.0, "calls": 0, "decisions": 0})
            d["tokens"] += st["generated_tokens"]
            d["generate_s"] += st["time_generate"] - st["time_encode"]
            d["policy_s"] += st["time_generate"]
            d["calls"] += st["generate_calls"]
            d["decisions"] += st["decisions"]
    for decoder in ("hf", "static"):
        d = out[decoder]
        d["tokens_per_s_generate"] = round(d["tokens"] / d["generate_s"], 1)
        d["tokens_per_s_policy"] = round(d["tokens"] / d["policy_s"], 1)
        d["rows_per_call"] = round(d["decisions"] / max(d["calls"], 1), 1)
        d["generate_s"], d["policy_s"] = round(d["generate_s"], 2), round(d["policy_s"], 2)
    out["same_trajectories"] = actions["hf"] == actions["static"]
    out["static_over_hf_generate"] = round(out["static"]["tokens_per_s_generate"] / out["hf"]["tokens_per_s_generate"], 2)
    out["static_over_hf_policy"] = round(out["static"]["tokens_per_s_policy"] / out["hf"]["tokens_per_s_policy"], 2)
    return out


def time_update(args, policy, cfg, sim_cfg, episodes, make_sim, tmp):
    """One online GRPO update of the real trainer (SACA's switches off: the auditor's cost is benchmarks/saca_cost.py's);
    where its time goes."""
    from saca.train.rft import RftConfig, RftTrainer

    ckpt = tmp / "policy"
    policy.save_pretrained(ckpt)
    B = max(args.B)
    rcfg = RftConfig(G=args.G, groups_per_step=B, max_steps=1, eval_steps=0, eval_episodes=0, save_steps=0,
                     micro_batch_size=args.micro_batch_size, gradient_checkpointing=args.gradient_checkpointing,
                     device=args.device, bf16=args.bf16, learning_rate=1e-6, seed=args.seed, generation=cfg.generation,
                     soft_score=False, afr=False, rr=False, audit_rollouts=False)  # plain GRPO: no auditor, no landmarks
    # rewards of a random policy are all 0 (no gradient): time the loss as if every group were mixed
    tr = RftTrainer(ckpt, None, tmp / "rft", rcfg, cfg, {"bench": episodes[:B]}, {}, {},
                    reward=lambda batch: [float(k % 2) for k in range(len(batch.samples_of))])
    tr.setup()
    tr._sim = lambda dataset, slot, instance=False: make_sim()
    import torch

    cuda = tr.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    row = tr.update(0)
    total = time.perf_counter() - t0
    return {
        "micro_batch_size": args.micro_batch_size, "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "seconds": round(total, 2), "rollout": round(row["time_rollout"], 2),
        "ref_logprobs": round(row["time_ref_logprobs"], 2), "forward_backward": round(row["time_forward_backward"], 2),
        "optimizer_and_other": round(total - row["time_rollout"] - row["time_ref_logprobs"] - row["time_forward_backward"], 2),
        "samples": row["samples"], "tokens_trained": row["tokens_trained"], "collapsed_share": row["collapsed_share"],
    }


if __name__ == "__main__":
    raise SystemExit(main())

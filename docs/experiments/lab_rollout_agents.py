"""Re-sample the lab's finished RFT policies as their rollouts did (``rft.eval_sampling: rollout``).

The lab run of 2026-12-06/07 (results-lab/) trained its RFT policies before ``rft.eval_sampling`` existed, so rule
rft_agent wrote their agent specs with the SFT policy's sampling (``policy.agent.generation``, temperature 0.7).
This script rewrites each finished run's ``agent.json`` as rule rft_agent writes it now
(:func:`saca.train.rft.config.eval_agent_settings` with the run's own ``rft.generation``, read from its
``finished/rft_summary.json``) and moves the evaluations and benchmark files made with the old spec out of the
way (to ``{results}/agent-sampling/``, kept for the record), so that the workflow evaluates the run again:

    PYTHONPATH=src python docs/experiments/lab_rollout_agents.py --results results-lab
    snakemake results-lab/mini_r2r/eval/rft-grpo-s0/val_unseen/metrics.json ... --configfile config/lab.yaml

A run whose spec already samples as its rollouts is left alone; the script prints what it did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from saca.io import write_json  # noqa: E402  (atomic)
from saca.train.rft.config import eval_agent_settings  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results-lab")
    args = ap.parse_args(argv)
    res = Path(args.results)
    old = res / "agent-sampling"
    for summary in sorted(res.glob("rft/*/s*/finished/rft_summary.json")):
        run_dir = summary.parents[1]
        variant, seed = run_dir.parent.name, run_dir.name
        spec_path = run_dir / "agent.json"
        if not spec_path.is_file():
            print(f"{variant}/{seed}: no agent.json yet (rule rft_agent writes it)")
            continue
        spec = json.loads(spec_path.read_text())
        rollout = json.loads(summary.read_text())["config"]["generation"]
        options = eval_agent_settings({"generation": rollout, "eval_sampling": "rollout"}, spec["options"])
        if options == spec["options"]:
            print(f"{variant}/{seed}: already samples as its rollouts")
            continue
        run = f"rft-{variant}-{seed}"
        for ev in sorted(res.glob(f"*/eval/{run}")) + sorted(res.glob(f"benchmarks/evaluate/*/{run}")):
            dest = old / ev.relative_to(res)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(ev), str(dest))
            print(f"{variant}/{seed}: moved {ev} -> {dest}")
        kept = old / "rft" / variant / seed / "agent.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec_path, kept)
        write_json(spec_path, {**spec, "options": options})
        print(f"{variant}/{seed}: agent.json now samples with {options['generation']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

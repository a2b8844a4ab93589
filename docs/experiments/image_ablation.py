"""Does the SFT policy use its frames? Answer NLL with the real frames against blanked frames (docs/policy.md).

    python docs/experiments/image_ablation.py --checkpoint results/sft/r2r_rxr/final \
        --vln-ego results/mini_r2r/vln_ego/val_seen --samples 256

For evenly spaced VLN-Ego samples, the token-mean negative log-likelihood of the answer (VLN-R1 Eq. 8,
``saca.train.sft.sft_loss``) with (a) the sample's own frames, (b) every frame replaced by a uniform grey
image of the same size, (c) the frames of another sample of the split (a random permutation, same number
of history frames where possible). Also the NLL of the action letters alone (the tokens that differ
between answers). A policy that reads its frames loses clearly more on (b) and (c) than on (a).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

from saca.policy.data import PolicyData, evenly_spaced  # noqa: E402
from saca.policy.model import load_policy  # noqa: E402
from saca.policy.processor import IGNORE_INDEX  # noqa: E402


def letter_positions(tokenizer, labels: torch.Tensor) -> torch.Tensor:
    """Mask of the answer tokens that spell an option letter (A-D)."""
    letters = {tokenizer.convert_tokens_to_ids(t) for t in ("A", "B", "C", "D", "ĠA", "ĠB", "ĠC", "ĠD")}
    letters.discard(tokenizer.unk_token_id)
    return torch.isin(labels, torch.tensor(sorted(x for x in letters if x is not None)))


def nll(policy, data: PolicyData, idx, images_of) -> tuple[float, float]:
    model, proc = policy.model, policy.processor
    tot = n = tot_l = n_l = 0.0
    for i in idx:
        s = data.sample(i)
        enc = proc.encode(data.prompt(s), images_of(i), answer=s["answer"])
        batch = proc.collate([enc])
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch, use_cache=False).logits[0, :-1]
        target = labels[0, 1:]
        mask = target != IGNORE_INDEX
        lp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp(min=0)[:, None])[:, 0]
        tot += float(-lp[mask].sum())
        n += int(mask.sum())
        lm = mask & letter_positions(proc.tokenizer, target)
        tot_l += float(-lp[lm].sum())
        n_l += int(lm.sum())
    return tot / max(n, 1), tot_l / max(n_l, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--vln-ego", required=True)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    policy = load_policy(args.checkpoint)
    policy.model.eval()
    data = PolicyData([args.vln_ego], 6)
    idx = evenly_spaced(len(data), args.samples)
    rng = np.random.default_rng(args.seed)
    other = dict(zip(idx, rng.permutation(idx)))

    def real(i):
        return data.policy_input(i).images

    def grey(i):
        return [np.full_like(np.asarray(im), 128) for im in real(i)]

    def shuffled(i):
        mine, theirs = real(i), data.policy_input(int(other[i])).images
        return [theirs[min(k, len(theirs) - 1)] for k in range(len(mine) - 1)] + [theirs[-1]]

    out = {name: dict(zip(("answer_nll", "letter_nll"), nll(policy, data, idx, f)))
           for name, f in (("real", real), ("grey", grey), ("shuffled", shuffled))}
    out["samples"] = len(idx)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

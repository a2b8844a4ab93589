#!/usr/bin/env bash
# Does a change of the RFT code change any result? The mini world's `grpo`, `saca` and `vlnr1` RFT runs (seed 0,
# one thread, the workflow's exact `python -m saca rft` command lines) with the code of A and of B, and the sha256
# of each run's final weights (issue 27: the trainer refactor must give the same bits). Also prints, per run, how
# many updates took an optimizer step (a comparison of runs that never step would show nothing).
#
# usage: benchmarks/rft_bitwise.sh A B [RESULTS] [OUT]
#   A, B     commits (checked out as worktrees under OUT) or "." for this checkout's working tree
#   RESULTS  the mini world's inputs (default /tmp/rft-bitwise-base); built once with A's workflow and a short
#            SFT (300 steps, no vision pretraining: the RFT runs need a policy, not a good one) when missing
#   OUT      where the runs go (default /tmp/rft-bitwise): OUT/runs/{commit}/{variant}; a commit's finished run
#            is reused by later calls (the working tree's never is)
# env: VARIANTS (default "grpo saca vlnr1"); PARAMS: JSON merged into every run's --params (e.g. '{"max_steps": 12}';
#      cached runs are only reused with the same PARAMS: give another OUT); NICE (default 10). Needs the project's
#      Python environment (snakemake, torch) active.
set -euo pipefail
a=${1:?usage: benchmarks/rft_bitwise.sh A B [RESULTS] [OUT]}
b=${2:?usage: benchmarks/rft_bitwise.sh A B [RESULTS] [OUT]}
base=${3:-/tmp/rft-bitwise-base}
out=${4:-/tmp/rft-bitwise}
variants=${VARIANTS:-grpo saca vlnr1}
params=${PARAMS:-}
nice_n=${NICE:-10}
repo=$(git rev-parse --show-toplevel)
mkdir -p "$out/runs"

tree() {  # tree REV: the directory holding REV's code ("." = this checkout)
  if [ "$1" = "." ]; then echo "$repo"; return; fi
  local rev dir
  rev=$(git -C "$repo" rev-parse --short "$1")
  dir="$out/trees/$rev"
  [ -d "$dir" ] || git -C "$repo" worktree add --detach "$dir" "$rev" >/dev/null 2>&1
  echo "$dir"
}
label() { if [ "$1" = "." ]; then echo worktree; else git -C "$repo" rev-parse --short "$1"; fi; }

overlay="$out/overlay.yaml"
cmds="$out/commands.$$.txt"  # per call: calls may run side by side
printf 'results: %s\nsft:\n  max_steps: 300\npolicy:\n  vision_pretrain:\n    frames: 0\n' "$base" > "$overlay"
targets=""
for v in $variants; do targets="$targets $base/rft/$v/s0/final"; done
ta=$(tree "$a")
# the inputs of the rft jobs (SFT, episodes, landmarks, VLN-Ego), built with A's workflow; then the rft commands
(cd "$ta" && PYTHONPATH="$ta/src" nice -n "$nice_n" python -m snakemake $targets --cores 1 \
  --configfile config/config.yaml "$overlay" --omit-from rft --nolock) >"$out/build.log" 2>&1
(cd "$ta" && PYTHONPATH="$ta/src" python -m snakemake $targets --cores 1 -n -p --forcerun rft --nolock \
  --configfile config/config.yaml "$overlay") 2>/dev/null | grep -o 'OMP_NUM_THREADS=1 python -m saca rft .*' > "$cmds"

run() {  # run REV VARIANT: the run's directory (made unless a cached commit run exists)
  local dir lab dest cmd
  dir=$(tree "$1"); lab=$(label "$1"); dest="$out/runs/$lab/$2"
  if [ "$lab" != worktree ] && [ -f "$dest/final/model.safetensors" ]; then echo "$dest"; return; fi
  rm -rf "$dest"; mkdir -p "$out/runs/$lab"
  cmd=$(grep -F -- "--out $base/rft/$2/s0 " "$cmds")
  cmd=${cmd//"--out $base/rft/$2/s0 "/"--out $dest "}
  cmd=${cmd%% > *}
  if [ -n "$params" ]; then
    cmd=$(python - "$cmd" "$params" <<'EOF'
import json, shlex, sys
args = shlex.split(sys.argv[1])
i = args.index("--params")
args[i + 1] = json.dumps({**json.loads(args[i + 1]), **json.loads(sys.argv[2])}, sort_keys=True)
print(shlex.join(args))
EOF
)
  fi
  (cd "$dir" && PYTHONPATH="$dir/src" nice -n "$nice_n" bash -c "$cmd" > "$dest.log" 2>&1)
  echo "$dest"
}

steps() {  # updates that took an optimizer step / all updates
  python - "$1" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1] + "/train_log.jsonl")]
train = [r for r in rows if r.get("event") == "train"]
print(f"{sum(not r.get('skipped_step') for r in train)}/{len(train)}")
EOF
}

printf '%-6s %-64s %-64s %-5s %s\n' variant "sha256 A ($(label "$a"))" "sha256 B ($(label "$b"))" same "updates stepped A, B"
for v in $variants; do
  ra=$(run "$a" "$v")
  rb=$(run "$b" "$v")
  ha=$(sha256sum "$ra/final/model.safetensors" | cut -d' ' -f1)
  hb=$(sha256sum "$rb/final/model.safetensors" | cut -d' ' -f1)
  printf '%-6s %-64s %-64s %-5s %s %s\n' "$v" "$ha" "$hb" "$([ "$ha" = "$hb" ] && echo yes || echo NO)" \
    "$(steps "$ra")" "$(steps "$rb")"
done

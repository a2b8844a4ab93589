#!/usr/bin/env bash
# Does a change of the RFT code change any result? The mini world's `grpo`, `saca` and `vlnr1` RFT runs (seed 0,
# one thread, the workflow's exact `python -m saca rft` command lines) with the code of commit OLD and with this
# checkout's code, and the sha256 of each run's final weights (issue 27: the trainer refactor must give the same
# bits). Also prints, per run, how many updates took an optimizer step (a comparison of runs that never step
# would show nothing).
#
# usage: benchmarks/rft_bitwise.sh OLD_COMMIT [RESULTS] [OUT]
#   RESULTS  the mini world's inputs (default /tmp/rft-bitwise-base); built once with OLD's workflow and a short SFT
#            (300 steps, no vision pretraining: the RFT runs only need a policy, not a good one) when missing
#   OUT      where the runs go (default /tmp/rft-bitwise); OUT/{old,new}/{variant}
# env: VARIANTS (default "grpo saca vlnr1"), PARAMS: JSON merged into every run's --params (e.g. '{"max_steps": 12}'),
#      NICE (default 10). Needs the project's Python environment (snakemake, torch) active.
set -euo pipefail
old=${1:?usage: benchmarks/rft_bitwise.sh OLD_COMMIT [RESULTS] [OUT]}
base=${2:-/tmp/rft-bitwise-base}
out=${3:-/tmp/rft-bitwise}
variants=${VARIANTS:-grpo saca vlnr1}
params=${PARAMS:-}
nice_n=${NICE:-10}
repo=$(git rev-parse --show-toplevel)
oldtree="$out/old-tree"
mkdir -p "$out"
if [ ! -d "$oldtree" ]; then
  git -C "$repo" worktree add --detach "$oldtree" "$old" >/dev/null
fi
overlay="$out/overlay.yaml"
printf 'results: %s\nsft:\n  max_steps: 300\npolicy:\n  vision_pretrain:\n    frames: 0\n' "$base" > "$overlay"
targets=""
for v in $variants; do targets="$targets $base/rft/$v/s0/final"; done
# the inputs of the rft jobs (SFT, episodes, landmarks, VLN-Ego), built with the old code; then the rft jobs' commands
(cd "$oldtree" && PYTHONPATH="$oldtree/src" nice -n "$nice_n" python -m snakemake $targets --cores 1 \
  --configfile config/config.yaml "$overlay" --omit-from rft) >"$out/build.log" 2>&1
(cd "$oldtree" && PYTHONPATH="$oldtree/src" python -m snakemake $targets --cores 1 -n -p --forcerun rft \
  --configfile config/config.yaml "$overlay") 2>/dev/null | grep -o 'OMP_NUM_THREADS=1 python -m saca rft .*' > "$out/commands.txt"

run() {  # run CODE_DIR LABEL VARIANT
  local src=$1 label=$2 v=$3 cmd dest
  dest="$out/$label/$v"
  rm -rf "$dest"
  mkdir -p "$out/$label"
  cmd=$(grep -F -- "--out $base/rft/$v/s0 " "$out/commands.txt")
  cmd=${cmd//"--out $base/rft/$v/s0 "/"--out $dest "}
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
  (cd "$src/.." && PYTHONPATH="$src" nice -n "$nice_n" bash -c "$cmd" > "$out/$label/$v.log" 2>&1)
}

steps() {  # updates that took an optimizer step / all updates
  python - "$1" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1] + "/train_log.jsonl")]
train = [r for r in rows if r.get("event") == "train"]
print(f"{sum(not r.get('skipped_step') for r in train)}/{len(train)}")
EOF
}

printf '%-6s %-64s %-64s %-5s %s\n' variant "sha256 old ($old)" "sha256 new (working tree)" same steps
for v in $variants; do
  run "$oldtree/src" old "$v"
  run "$repo/src" new "$v"
  a=$(sha256sum "$out/old/$v/final/model.safetensors" | cut -d' ' -f1)
  b=$(sha256sum "$out/new/$v/final/model.safetensors" | cut -d' ' -f1)
  printf '%-6s %-64s %-64s %-5s old %s new %s\n' "$v" "$a" "$b" "$([ "$a" = "$b" ] && echo yes || echo NO)" \
    "$(steps "$out/old/$v")" "$(steps "$out/new/$v")"
done

#!/usr/bin/env bash
# The CUDA path's checks, run on a GPU machine without pybullet (this project's device machine, one H100/H200):
#
#   1. the SFT, training-state, GRPO and policy tests with `device: auto`, which picks CUDA there: the
#      SFT loop, its kill + resume, bf16 autocast and generation on the GPU (tiny model, synthetic VLN-Ego data);
#   2. one online RFT update at Qwen2-VL-2B shapes (B = 4 instructions x G = 8, random weights, stub world)
#      with the settings docs/rft.md names for 2B: rft.bf16, gradient checkpointing, micro batch 4, and the
#      memory model's prediction for it (saca.train.memory, docs/memory.md; the issue asks for 10 %);
#   3. the decoding pair at 2B shapes: one batched round of 8 and 32 rows, model.generate against saca's
#      static-cache loop (compiled decode step on CUDA), benchmarks/decode_throughput.py (issue 27: >= 3x at 32 rows).
#
#     bash benchmarks/device_checks.sh            # writes logs and JSON under $OUT (default /tmp/device-checks)
#
# transformers 5.23 and jsonschema's chain are not on that machine: put their wheels (Python 3.12, manylinux) in
# .whl/ first (docs/rft.md, "GPU"). Each step has its own time limit so that a slow one cannot starve the other.
set -uo pipefail
OUT=${OUT:-/tmp/device-checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

echo "## 1. tests with device auto -> cuda"
timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider -n 8 -rs \
    tests/test_sft.py tests/test_train_state.py tests/test_grpo.py tests/test_policy.py > "$OUT/pytest_cuda.log" 2>&1
echo "pytest rc=$?"
tail -n 40 "$OUT/pytest_cuda.log"

echo "## 2. one RFT update at 2B shapes (bf16, gradient checkpointing, micro batch 4)"
timeout "${UPDATE_S:-300}" python3 benchmarks/rollout_throughput.py --config-size 2b --bf16 --device cuda --sim stub \
    --B 4 --G 8 --single 8 --max-steps 12 --update --gradient-checkpointing --micro-batch-size 4 \
    --out "$OUT/rft_update_2b.json" > "$OUT/rft_update_2b.log" 2>&1
echo "update rc=$?"
grep -v "Loading weights" "$OUT/rft_update_2b.log" | tail -n 20

echo "## 2b. the memory model's prediction for step 2 (world size 1, no sharding, first update, + the benchmark's bf16 policy)"
python3 - <<'PY'
from saca.train import memory as m
d = m.dims_of(m.transformers_config("Qwen2-VL-2B-Instruct"), (224, 224))
s = m.Setup(job="rft", world=1, sharding="none", bf16=True, gradient_checkpointing=True, micro_batch=4, frames=16,
            text_tokens=120, gen_tokens=48, G=8, groups=4, first_step=True, extra_bytes=2 * d.params)
name, total = m.peak(d, s)
print(f"predicted peak {total / 2**30:.1f} GiB in phase {name}; compare peak_gpu_memory_gib in rft_update_2b.json")
PY

echo "## 3. decoding pair at 2B shapes: model.generate vs the static-cache loop, 8 and 32 rows, 16 frames"
timeout "${DECODE_S:-240}" python3 benchmarks/decode_throughput.py --config-size 2b --bf16 --device cuda --rows 8 32 \
    --frames 16 --repeats 2 --out "$OUT/decode_2b.json" > "$OUT/decode_2b.log" 2>&1
echo "decode rc=$?"
grep -v "Loading weights" "$OUT/decode_2b.log" | tail -n 20

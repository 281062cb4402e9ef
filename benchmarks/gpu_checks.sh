#!/usr/bin/env bash
# Every GPU check of the scale-out work in one command (about 10 minutes on one H100/H200), for a session that is
# lent a GPU: the throughput benchmark, a short trainer=gpu run, a compile on/off pair, and a 1-GPU trainer=fsdp
# run with checkpoint -> consolidate -> reload. Figures go to $OUT (default /tmp/gpu_checks); copy them into
# benchmarks/RESULTS.md with the date and device.
#
# The device image lacks some of the lab's dependencies (hydra-core, omegaconf, ...). Before the session, on this
# machine: pip download --no-deps -d .wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3 schedulefree
# (add whatever `pip install -e . --no-index --find-links .wheels` there reports missing), then run with
# carry: [".wheels"] and the command `bash benchmarks/gpu_checks.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LM_LAB_CACHE=/tmp/lmcache
if [ -d .wheels ]; then pip install -q --no-index --find-links .wheels .wheels/*.whl 2>&1 | tail -2; fi
pip install -q --no-deps -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/device.txt"

GPT2=(tokenizer=bytes model.vocab_size=50257 data.val_split_tokens=200000 train.val_tokens=65536)
step() { echo "== $1"; shift; timeout 900 "$@" 2>&1 | grep -v -i warn | tail -25; }

# 1. the Lightning step against a bare loop: gpt2_small and gpt2_medium, bf16, compile, batch 16 x 1024
step throughput python benchmarks/throughput.py --models gpt2_small,gpt2_medium --steps 60 --warmup 15 \
  | tee "$OUT/throughput.txt"

# 2. a short trainer=gpu run (bf16-mixed, SDPA, compile), and the same without compile
for c in true false; do
  step "gpu compile=$c" python run.py trainer=gpu model=gpt2_small "${GPT2[@]}" train.compile=$c \
    train.max_steps=150 train.val_every=150 train.batch_size=32 hydra.run.dir="/tmp/gpu_compile_$c"
  cp "/tmp/gpu_compile_$c/results.json" "$OUT/gpu_compile_$c.json"
done

# 3. trainer=fsdp on one GPU: sharded checkpoints, kill-free resume, consolidate, reload on a single device
step "fsdp" python run.py trainer=fsdp trainer.devices=1 model=gpt2_small "${GPT2[@]}" train.max_steps=60 \
  train.val_every=30 train.batch_size=32 hydra.run.dir=/tmp/fsdp
cp /tmp/fsdp/results.json "$OUT/fsdp.json"
step "consolidate" lm-lab consolidate /tmp/fsdp /tmp/fsdp/last.ckpt
step "reload" python - <<'PY'
import torch
from lm_lab.checkpoint import load_model
cfg, model = load_model("/tmp/fsdp/last.ckpt")
x = torch.randint(0, 256, (2, 64))
print("reloaded", cfg.name, sum(p.numel() for p in model.parameters()), "params; logits", tuple(model(x).shape))
PY
step "resume the consolidated file on one GPU" python run.py trainer=gpu model=gpt2_small "${GPT2[@]}" \
  train.max_steps=90 train.val_every=30 train.batch_size=32 ckpt_path=/tmp/fsdp/last.ckpt hydra.run.dir=/tmp/fsdp_1gpu
cp /tmp/fsdp_1gpu/results.json "$OUT/fsdp_then_1gpu.json"
python - "$OUT" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    print(f"{f.stem:22} steps {r['steps']:4} val_loss {r['val_loss']:.4f} tokens/s {r['tokens_per_sec'] or 0:,.0f} "
          f"step tokens/s {r['step_tokens_per_sec'] or 0:,.0f} MFU {r['mfu']} step MFU {r['step_mfu']}")
PY

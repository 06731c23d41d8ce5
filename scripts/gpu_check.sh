#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one card): the DistilBERT-sized training benchmark and a short
# bf16 fit of the offline MiniLM on the real data. Writes bench/gpu/*.json and prints the card's name.
#   EMOTIONS_DATA_DIR=../shared/data/emotion bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data="${EMOTIONS_DATA_DIR:-../shared/data/emotion}"
out=bench/gpu
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('card:', torch.cuda.get_device_name(0))" | tee "$out/card.txt"
timeout 300 "$py" -m scripts.bench.train --data "$data" --models distilbert,minilm --samples 4000 --repeats 1 \
  --accelerator gpu --output "$out/train.json"
timeout 180 "$py" -m emotions_pl fit --config configs/experiment/offline.yaml --data.source "$data" \
  --trainer.max_epochs 1 --trainer.limit_train_batches 200 --trainer.default_root_dir "$out/fit" \
  --trainer.enable_progress_bar false 2>&1 | tee "$out/fit.log" | grep -E "precision|checkpoint|metrics:"

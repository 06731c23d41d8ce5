#!/usr/bin/env bash
# A layer-pruned MiniLM, distilled from the 6-layer pipeline model, exported: the recipe of
# docs/results.md#layer-pruning in one command. Needs `dvc repro` first (runs/pipeline/best.ckpt,
# data/emotion) and teachers/teacher.npz (committed: that model's logits on the train split).
#   bash scripts/pruned.sh 4        # -> models/minilm-pruned4 (pruned), runs/pruned4_kd, models/pruned4_kd
set -euo pipefail
cd "$(dirname "$0")/.."
k=${1:?usage: scripts/pruned.sh KEEP_LAYERS}
py=${PYTHON:-.venv/bin/python}
"$py" -m emotions_pl prune --ckpt runs/pipeline/best.ckpt --keep-layers "$k" --strategy alternate \
  --output "models/minilm-pruned$k"
"$py" -m emotions_pl fit --config configs/experiment/pruned4.yaml --model.model_name_or_path "models/minilm-pruned$k" \
  --data.source data/emotion --trainer.default_root_dir "runs/pruned${k}_kd" --trainer.enable_progress_bar false
best=$(ls "runs/pruned${k}_kd"/checkpoints/epoch*.ckpt)
"$py" -m emotions_pl export --ckpt "$best" --output "models/pruned${k}_kd" --data data/emotion --onnx --int8

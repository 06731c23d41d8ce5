#!/usr/bin/env bash
# The main job on the embedded smoke default: fit, test and predict a tiny model on the sample that
# ships in the package, offline, in about a minute on a CPU. Prints where everything went.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${RUN_DIR:-runs/smoke}"
cli=(.venv/bin/python -m emotions_pl)
common=(--config configs/experiment/smoke.yaml --trainer.default_root_dir "$run" --trainer.enable_progress_bar false)
"${cli[@]}" fit "${common[@]}"
"${cli[@]}" test "${common[@]}" --ckpt_path "$run/checkpoints/last.ckpt"
"${cli[@]}" predict "${common[@]}" --ckpt_path "$run/checkpoints/last.ckpt"
echo "done: checkpoints in $run/checkpoints, metrics and configs in $run/logs, predictions in $run/predictions.jsonl"

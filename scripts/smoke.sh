#!/usr/bin/env bash
# The main job on the embedded smoke default, the whole path offline in a couple of minutes on a CPU:
# fit a tiny model on the sample that ships in the package, test and predict, export it (calibrated,
# scored with intervals), serve it on a free loopback port, ask it one question over HTTP, and stop it.
# Prints where every piece went. The real model: docs/results.md (`dvc repro`).
set -euo pipefail
cd "$(dirname "$0")/.."
run="${RUN_DIR:-runs/smoke}"
model="${MODEL_DIR:-models/smoke}"
sample=src/emotions_pl/sample
py=.venv/bin/python
cli=("$py" -m emotions_pl)
common=(--config configs/experiment/smoke.yaml --trainer.default_root_dir "$run" --trainer.enable_progress_bar false)
"${cli[@]}" fit "${common[@]}"
"${cli[@]}" test "${common[@]}" --ckpt_path "$run/checkpoints/last.ckpt"
"${cli[@]}" predict "${common[@]}" --ckpt_path "$run/checkpoints/last.ckpt"
# --force: each smoke run replaces the last one's export, whatever the promotion gate thinks of it
"${cli[@]}" export --ckpt "$run/checkpoints/last.ckpt" --output "$model" --data "$sample" --force

port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${cli[@]}" serve --model "$model" --host 127.0.0.1 --port "$port" > "$run/serve.log" 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' EXIT  # a background server ignores SIGINT: SIGTERM
url="http://127.0.0.1:$port"
"$py" - "$url" <<'EOF'
import json, sys, time, urllib.request

url = sys.argv[1]
for _ in range(240):  # up to 2 min for the workers to start
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit(f"error: {url}/health did not answer; see the serve log")
body = json.dumps({"text": "i am thrilled that we finally won the game"}).encode()
request = urllib.request.Request(f"{url}/predict", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as answer:
    print(f"POST {url}/predict -> {answer.status}: {answer.read().decode()}")
EOF
kill -TERM "$server"
wait "$server" || true
trap - EXIT
echo "done: checkpoints in $run/checkpoints, metrics and configs in $run/logs, predictions in" \
  "$run/predictions.jsonl, export (model card, scores with intervals) in $model, server log in $run/serve.log"
echo "(a random-init tiny model on 48 texts: its predictions are near chance; the real one: docs/results.md)"

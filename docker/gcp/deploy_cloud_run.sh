#!/usr/bin/env bash
# Deploy the serve image (built by cloudbuild.yaml) to Cloud Run, with the exported model mounted
# read-only from Cloud Storage: gs://$MODEL_BUCKET/emotions/ appears at /models/emotions, the path the
# image serves by default.
#   PROJECT_ID=my-project MODEL_BUCKET=my-models docker/gcp/deploy_cloud_run.sh
#   DRY_RUN=1 ... prints the gcloud command instead of running it.
# Optional: API_KEY_SECRET=<Secret Manager secret> exposes it as LIT_SERVER_API_KEY (X-API-Key required).
set -euo pipefail

: "${PROJECT_ID:?set PROJECT_ID}"
: "${MODEL_BUCKET:?set MODEL_BUCKET (the bucket holding the export folder emotions/)}"
REGION="${REGION:-europe-west4}"
REPOSITORY="${REPOSITORY:-emotions-pl}"
TAG="${TAG:-latest}"
SERVICE="${SERVICE:-emotions-serve}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT_ID}/${REPOSITORY}/serve:${TAG}"

# Batching (the server's defaults): each inference worker takes every request queued when it finishes a
# batch, up to MAX_BATCH_SIZE, and never waits for one to fill (BATCH_TIMEOUT 0). Cloud Run's
# per-instance concurrency of 2 x batch x workers keeps one full batch running and the next one queued
# -- more only queues inside the instance (latency), fewer leaves batches half empty. Past that Cloud Run
# adds instances; it also scales on CPU, which a busy instance uses fully (the worker's threads are the
# instance's vCPUs: the server reads the cgroup quota). docker/k8s/serve.yaml uses the same flags.
MAX_BATCH_SIZE="${MAX_BATCH_SIZE:-16}"
BATCH_TIMEOUT="${BATCH_TIMEOUT:-0}"
WORKERS="${WORKERS:-1}"
CONCURRENCY=$((MAX_BATCH_SIZE * WORKERS * 2))
# 2 vCPU / 4 GiB: PyTorch and one fp32 DistilBERT-size model per worker, with room for a second worker.
CPU="${CPU:-2}"
MEMORY="${MEMORY:-4Gi}"
MIN_INSTANCES="${MIN_INSTANCES:-1}"  # one warm instance: loading torch and the model takes seconds
MAX_INSTANCES="${MAX_INSTANCES:-4}"

args=(
  run deploy "$SERVICE"
  --project="$PROJECT_ID"
  --region="$REGION"
  --image="$IMAGE"
  --port=8000
  --cpu="$CPU"
  --memory="$MEMORY"
  --cpu-boost
  --concurrency="$CONCURRENCY"
  --min-instances="$MIN_INSTANCES"
  --max-instances="$MAX_INSTANCES"
  --timeout=60
  --execution-environment=gen2
  --no-allow-unauthenticated
  --add-volume="name=models,type=cloud-storage,bucket=${MODEL_BUCKET},readonly=true"
  --add-volume-mount="volume=models,mount-path=/models"
  --args="serve,--model,/models/emotions,--host,0.0.0.0,--port,8000,--max-batch-size,${MAX_BATCH_SIZE},--batch-timeout,${BATCH_TIMEOUT},--workers-per-device,${WORKERS}"
)
if [[ -n "${API_KEY_SECRET:-}" ]]; then
  args+=(--set-secrets="LIT_SERVER_API_KEY=${API_KEY_SECRET}:latest")
fi

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' gcloud "${args[@]}"
  printf '\n'
else
  gcloud "${args[@]}"
fi

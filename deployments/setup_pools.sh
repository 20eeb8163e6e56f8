#!/usr/bin/env bash
# Create the work pools and the GPU concurrency limit. Safe to run again (idempotent).
#   cpu: orchestration and cache builds     gpu: training (the atft-gpu-stage deployment)
# Needs PREFECT_API_URL pointing at the server (stack.sh sets it).
set -euo pipefail
PREFECT="${PREFECT_BIN:-prefect}"

for pool in cpu gpu; do
  "$PREFECT" --no-prompt work-pool create "$pool" --type process --overwrite >/dev/null
  echo "work pool '$pool' (process) ready"
done
# Tasks tagged `gpu` run one at a time across every worker and process: one GPU, one trainer.
# Creating an existing tag limit updates it in place.
"$PREFECT" --no-prompt concurrency-limit create gpu 1 >/dev/null
echo "concurrency limit 'gpu' = 1 ready"

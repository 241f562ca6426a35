#!/usr/bin/env bash
# meshinfer serve (native, int8) beside llama-server on the default model, interleaved per
# concurrency, streamed 64-token chat answers from load.py (the openai client).
# Usage: serve_side.sh [ROUNDS] [CONCURRENCIES...]   e.g. serve_side.sh 2 1 4 16 64
# Needs llama.cpp's binaries (../shared/tools/install-llama-cpp) in $LLAMA_BIN and the openai
# package for $PY.
ROUNDS=${1:-2}; shift || true
CONCURRENCIES=${*:-1 4 16 64}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=${MODEL:-$HOME/.cache/meshinfer/SmolLM2-135M-Instruct.Q4_1.gguf}
L=${LLAMA_BIN:-/tmp/llama.cpp-0c1e57098/bin}
PY=${PY:-python3}
BIN=$(cd "$ROOT" && swift build -c release -Xswiftc -enable-testing --show-bin-path)/meshinfer
wait_up() { for _ in $(seq 1 100); do curl -sf localhost:$1/health >/dev/null && return; sleep 0.3; done; }
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONCURRENCIES; do
    LD_LIBRARY_PATH=$L $L/llama-server -m "$M" --port 8201 --parallel "$c" -c $((c * 512)) -t 2 >/dev/null 2>&1 & P=$!
    wait_up 8201; printf "round %s llama-server  " "$round"; $PY "$ROOT/scripts/bench/load.py" 8201 "$c" 2; kill $P; wait $P 2>/dev/null
    for w in native int8; do
      "$BIN" serve --model "$M" --port 8202 --weights $w --threads 2 --max-batch $(( c > 16 ? c : 16 )) >/dev/null 2>&1 & P=$!
      wait_up 8202; printf "round %s meshinfer-%s " "$round" "$w"; $PY "$ROOT/scripts/bench/load.py" 8202 "$c" 2; kill $P; wait $P 2>/dev/null
    done
  done
done

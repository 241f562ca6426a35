#!/usr/bin/env bash
# Batched decode (the server's case) beside llama.cpp's llama-batched-bench, interleaved,
# ROUNDS rounds (default 3), 1 and 2 threads:
#   scripts/bench/batched_side.sh MODEL WEIGHTS LLAMA_GGUF [NPL]
# Every sequence gets its own 128-token prompt, then 128 decode steps run for all of them
# together; the line printed per (round, threads, engine, sequences) is the decode rate in
# total tokens/s: llama-batched-bench's S_TG, and meshinfer's `bench -d 128 -p 0 -n 128` (the
# 128-token prompts prefilled untimed). NPL defaults to "1,8,32". Needs $LLAMA_BIN
# (../shared/tools/install-llama-cpp). KV lists meshinfer's KV cache types to run (default
# "f16"; llama.cpp keeps its default f16 cache).
#   KV="f16 q8" scripts/bench/batched_side.sh smollm2-135m int8 "$LLAMA_DIR/SmolLM2-135M-Instruct.Q8_0.gguf"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$1 WEIGHTS=$2 GGUF=$3 NPL=${4:-1,8,32}
L=${LLAMA_BIN:-/tmp/llama.cpp-0c1e57098/bin}
BIN=$(cd "$ROOT" && swift build -c release -Xswiftc -enable-testing --show-bin-path)/meshinfer
MAXB=$(echo "$NPL" | tr ',' '\n' | sort -n | tail -1)
for round in $(seq 1 "${ROUNDS:-3}"); do
  for t in 1 2; do
    LD_LIBRARY_PATH=$L "$L/llama-batched-bench" -m "$GGUF" -t "$t" -c $((MAXB * 256)) -b 2048 -ub 512 \
        -npp 128 -ntg 128 -npl "$NPL" 2>/dev/null \
        | awk -F'|' -v r="$round" -v t="$t" '$2 ~ /^ *128 *$/ {gsub(/ /,"",$4); gsub(/ /,"",$9); print "round " r " t" t " llama.cpp B=" $4 " " $9}'
    for kv in ${KV:-f16}; do
      "$BIN" bench --model "$MODEL" --weights "$WEIGHTS" --kv-cache "$kv" --threads "$t" --batch "$NPL" -d 128 -p 0 -n 128 -r 1 2>/dev/null \
          | awk -v r="$round" -v t="$t" -v kv="$kv" '/tok\/s/ {v = ""; for (i = 1; i < NF; i++) if ($i == "batch") b = $(i + 1); for (i = 1; i < NF; i++) if ($i == "tok/s" && v == "") v = $(i - 1)
                                               print "round " r " t" t " meshinfer kv=" kv " B=" b " " v}'
    done
  done
done

#!/usr/bin/env bash
# llama-bench beside meshinfer bench, interleaved, ROUNDS rounds, 1 and 2 threads.
#   scripts/bench/side.sh MODEL P N "WEIGHTS" LLAMA_GGUF...
# MODEL is meshinfer's --model (a name or a path), P/N the prompt and generated tokens, WEIGHTS
# meshinfer's formats (e.g. "native int8 f32"); every LLAMA_GGUF is run with llama-bench's
# defaults at the same thread count. Prints one line per (round, threads, engine, test): the
# median of that run's repetitions in tokens/s (and, for meshinfer after `meshinfer calibrate`,
# the cost model's predicted tokens/s). Needs llama-bench in $LLAMA_BIN
# (../shared/tools/install-llama-cpp).
#   scripts/bench/side.sh smollm2-135m 512 128 "native int8" "$HOME/.cache/meshinfer/SmolLM2-135M-Instruct.Q4_1.gguf" "$LLAMA_DIR/SmolLM2-135M-Instruct.Q8_0.gguf"
#   scripts/bench/side.sh gemma3-270m 64 32 "native int8 f32" "$HOME/.cache/meshinfer/gemma-3-270m-q4_k_m.gguf"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$1 P=$2 N=$3 WEIGHTS=$4
shift 4
L=${LLAMA_BIN:-/tmp/llama.cpp-0c1e57098/bin}
BIN=$(cd "$ROOT" && swift build -c release -Xswiftc -enable-testing --show-bin-path)/meshinfer
for round in $(seq 1 "${ROUNDS:-3}"); do
  for t in 1 2; do
    for g in "$@"; do
      LD_LIBRARY_PATH=$L "$L/llama-bench" -m "$g" -t "$t" -p "$P" -n "$N" -r 2 2>/dev/null | grep -E "pp$P|tg$N" \
          | awk -F'|' -v r="$round" -v t="$t" -v f="$(basename "$g")" '{gsub(/ /,"",$7); split($8, a, "±"); gsub(/ /,"",a[1]); print "round " r " t" t " llama.cpp:" f " " $7 " " a[1]}'
    done
    for w in $WEIGHTS; do
      "$BIN" bench --model "$MODEL" --weights "$w" --threads "$t" -p "$P" -n "$N" -r 2 2>/dev/null \
          | awk -v r="$round" -v t="$t" -v w="$w" '/tok\/s/ {p = ""; for (i = 1; i < NF; i++) if ($i == "predicted") p = " predicted " $(i + 1)
                                                          print "round " r " t" t " meshinfer:" w " " $1 " " $7 p}'
    done
  done
done

#!/usr/bin/env bash
# Gemma 3 270M: llama-bench beside meshinfer bench (native, int8, f32), 1 and 2 threads,
# pp64 and tg32, interleaved, 3 rounds. Needs llama-bench in $LLAMA_BIN and the model
# (meshinfer pull gemma3-270m).
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
G=$HOME/.cache/meshinfer/gemma-3-270m-q4_k_m.gguf
L=${LLAMA_BIN:-/tmp/llama.cpp-0c1e57098/bin}
BIN=$(cd "$ROOT" && swift build -c release -Xswiftc -enable-testing --show-bin-path)/meshinfer
for round in 1 2 3; do
  for t in 1 2; do
    LD_LIBRARY_PATH=$L $L/llama-bench -m "$G" -t $t -p 64 -n 32 -r 2 2>/dev/null | grep -E "pp64|tg32" \
        | awk -F'|' -v r=$round -v t=$t '{gsub(/ /,"",$7); print "round " r " t" t " llama.cpp " $7 " " $8}'
    for w in native int8 f32; do
      "$BIN" bench --model gemma3-270m --weights $w --threads $t -p 64 -n 32 -r 2 2>/dev/null \
          | awk -v r=$round -v t=$t -v w=$w '/tok\/s/ {print "round " r " t" t " meshinfer-" w " " $1 " " $7}'
    done
  done
done

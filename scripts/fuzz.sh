#!/usr/bin/env bash
# Builds the libFuzzer targets (the package in Fuzzing/, never built by `swift build` or
# `swift test` of the main package) and runs each for SECONDS_PER_TARGET seconds, then prints
# per target: executions, crashes (crash-* files; timeouts, out-of-memory and leaks apart),
# seconds, coverage. Exits non-zero if any target found anything or could not run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 600; targets: gguf bpe spm)
#
# The tokenizer targets read their vocabulary from the model files the tests use (see
# README, "Fuzzing"); a missing file fails that target. Under .fuzz/ (gitignored): corpus/NAME
# (kept and grown from run to run), seeds/NAME (rewritten each run), artifacts/NAME (emptied at
# the start of each run: crash-*, timeout-*, oom-*, leak-* inputs), logs/NAME.log. The build
# goes to .build-fuzz/. Reproduce a finding with `.build-fuzz/debug/FuzzGGUF FILE`.
#
# Build: debug configuration with -O, so the package's release-only -Ounchecked is not applied:
# bounds and overflow checks stay on (a violation traps and counts as a crash), with
# AddressSanitizer and libFuzzer's coverage instrumentation on every Swift and C module.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SECONDS_PER_TARGET="${1:-600}"
[ $# -gt 0 ] && shift
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(gguf bpe spm)
case "$SECONDS_PER_TARGET" in ''|*[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [gguf|bpe|spm ...]" >&2; exit 2 ;; esac

OUT="$ROOT/.fuzz"
SCRATCH="$ROOT/.build-fuzz"
export MESHINFER_NO_MPI=1            # nothing fuzzed here uses MPI: build the stubs
export SWIFT_BACKTRACE=enable=no     # libFuzzer reports crashes and saves the input

BUILD=(swift build --package-path "$ROOT/Fuzzing" --scratch-path "$SCRATCH" -c debug
       -Xswiftc -O -Xswiftc -sanitize=fuzzer --sanitize=address)
echo "== building the fuzz targets"
# gold warns about every AddressSanitizer helper it cannot export; nothing to act on.
set +e
"${BUILD[@]}" 2>&1 | grep -v "Cannot export local symbol"
build_rc=${PIPESTATUS[0]}
set -e
[ "$build_rc" -eq 0 ] || { echo "error: the fuzz targets did not build" >&2; exit 1; }
BIN="$("${BUILD[@]}" --show-bin-path)"

failed=0
summary=()
for name in "${TARGETS[@]}"; do
    case "$name" in
        gguf) exe=FuzzGGUF; max_len=16384 ;;
        bpe)  exe=FuzzBPE; max_len=4096 ;;
        spm)  exe=FuzzSentencePiece; max_len=4096 ;;
        *) echo "unknown target '$name' (gguf, bpe, spm)" >&2; exit 2 ;;
    esac
    corpus="$OUT/corpus/$name" seeds="$OUT/seeds/$name" artifacts="$OUT/artifacts/$name" log="$OUT/logs/$name.log"
    rm -rf "$seeds" "$artifacts"
    mkdir -p "$corpus" "$artifacts" "$OUT/logs"
    extra=()
    if [ "$name" = gguf ]; then
        "$BIN/$exe" --write-seeds "$seeds" --dict "$OUT/gguf.dict"
        extra=(-dict="$OUT/gguf.dict")
    else
        "$BIN/$exe" --write-seeds "$seeds"
    fi
    echo "== $name: $exe for $SECONDS_PER_TARGET s (log: $log)"
    start=$(date +%s)
    rc=0
    "$BIN/$exe" -max_total_time="$SECONDS_PER_TARGET" -max_len="$max_len" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${extra[@]}" "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
    seconds=$(( $(date +%s) - start ))
    count() { find "$artifacts" -maxdepth 1 -name "$1-*" | wc -l; }
    crashes=$(count crash) timeouts=$(count timeout) ooms=$(count oom) leaks=$(count leak) slow=$(count slow-unit)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
    ft=$( (grep -o 'ft: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
    corpus_files=$(find "$corpus" -type f | wc -l)
    status=ok
    if [ $((crashes + timeouts + ooms + leaks)) -gt 0 ]; then
        status=FOUND; failed=1
    elif [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"; failed=1
        tail -5 "$log" >&2
    fi
    summary+=("$(printf '%-5s %12s %8s %9s %5s %6s %9s %6s %7s %7s  %s' "$name" "${execs:-0}" "$crashes" "$timeouts" "$ooms" \
        "$leaks" "$seconds" "${cov:--}" "${ft:--}" "$corpus_files" "$status")")
    if [ "$status" = FOUND ]; then
        for f in "$artifacts"/*; do
            [ -e "$f" ] && [[ "$(basename "$f")" != slow-unit-* ]] && echo "   finding: $f  (reproduce: $BIN/$exe $f)"
        done
    fi
done

echo
printf '%-5s %12s %8s %9s %5s %6s %9s %6s %7s %7s  %s\n' target executions crashes timeouts ooms leaks seconds cov ft corpus status
printf '%s\n' "${summary[@]}"
exit "$failed"

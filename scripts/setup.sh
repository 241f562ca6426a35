#!/usr/bin/env bash
# Sets MeshInfer up on a fresh Debian machine with Swift 6 and runs the main job:
# system packages, the default model (verified), a release build, then a short generation.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
[ -f /usr/share/common-licenses/GPL-3 ] || need+=(base-files)
# Open MPI, for `--transport mpi` (the build finds mpi.h; without it everything else still works).
command -v mpirun >/dev/null || need+=(openmpi-bin)
ls /usr/lib/*/openmpi/include/mpi.h >/dev/null 2>&1 || need+=(libopenmpi-dev)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}"
    touch Package.swift   # SwiftPM re-reads the manifest, which looks for mpi.h
fi
command -v swift >/dev/null || { echo "setup: Swift 6 is required (https://swift.org/install); not found on PATH" >&2; exit 1; }

swift build -c release --product meshinfer
BIN="$(swift build -c release --show-bin-path)/meshinfer"
"$BIN" pull --pip "$(command -v pip || echo pip)" >/dev/null
"$BIN" generate --prompt "${PROMPT:-The three primary colors are}" --max-tokens "${MAX_TOKENS:-48}" --temperature 0 --weights "${WEIGHTS:-int8}"

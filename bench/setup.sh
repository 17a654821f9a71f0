#!/usr/bin/env bash
# Install what the benchmark suite needs besides natrelay itself: a C compiler for the traffic
# generator, Syncthing's relay server and the magic-wormhole transit relay. Safe to run again.
# Missing pieces are not fatal for bench/run.py (subjects are skipped with a note), so each step
# reports its own failure and the script carries on.
set -u
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore

status=0
if command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v strelaysrv >/dev/null 2>&1 || need+=(syncthing-relaysrv)
    command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    if [ ${#need[@]} -gt 0 ]; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"; } \
            || { echo "bench/setup.sh: apt-get install ${need[*]} failed" >&2; status=1; }
    fi
else
    echo "bench/setup.sh: no apt-get; install strelaysrv (syncthing-relaysrv) and a C compiler by hand" >&2
fi

python3 -m pip install -q magic-wormhole-transit-relay \
    || { echo "bench/setup.sh: pip install magic-wormhole-transit-relay failed" >&2; status=1; }
python3 -m pip install -q -e . \
    || { echo "bench/setup.sh: pip install -e . (natrelay's own CLI) failed" >&2; status=1; }
exit $status

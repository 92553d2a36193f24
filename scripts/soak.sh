#!/usr/bin/env bash
# Soak transcast on this machine (loopback only): builds release, raises the open-file limit, and runs
# transcast-bench --soak: bounded rounds of viewer churn, pushes of every kind and source flaps against one
# server, failing when its RSS, open files or threads do not come back after a round. E.g.
#   scripts/soak.sh                                     # 25 rounds: 40000 viewer cycles, 1000 pushes, 1000 flaps
#   scripts/soak.sh --soak 5 --soak-viewers 200         # a short one
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_release_bench
if [ "$#" -eq 0 ]; then
  set -- --soak 25 --soak-viewers 1600 --soak-pushes 40 --soak-flaps 40
fi
exec target/release/transcast-bench "$@"

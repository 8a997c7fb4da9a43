#!/usr/bin/env bash
# Fleet propagation benchmark: three switchyard nodes (debug build unless CARGO_PROFILE says
# otherwise) on a real etcd (/usr/bin/etcd) on loopback. Prints, from the ignored test
# `bench_fleet` in tests/fleet.rs:
#   - propagation from the admin call's answer to every node serving the new version, p50/p99
#     over FLEET_CHANGES (default 200) changes, idle;
#   - the same while wrk loads the data plane of every node;
#   - requests failed (non-200 or transport error) during 100 fleet-wide changes of the route
#     they hit, each change with wait_fleet.
# Usage: bash bench/fleet.sh   (FLEET_CHANGES=500 bash bench/fleet.sh)
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
command -v etcd >/dev/null || { echo "bench/fleet.sh: needs etcd (apt-get install etcd-server)" >&2; exit 1; }
command -v wrk >/dev/null || echo "bench/fleet.sh: wrk not found: the loaded run has no load" >&2
cargo test --test fleet -- --ignored --exact bench_fleet --nocapture 2>&1 | grep -E '^(propagation|100 fleet|wrk)'

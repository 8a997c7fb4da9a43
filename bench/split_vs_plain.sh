#!/usr/bin/env bash
# Whole-system bench for canary routing, all on loopback, all in one run:
#   1. requests/s through a plain route (`to = "legacy"`) vs a canary route
#      (`split = { new = 10, legacy = 90 }`, sticky cookie, fallback), and nginx direct as the
#      ceiling, measured alternately so machine drift hits both the same;
#   2. a backend killed under load: wrk at full speed on `to = "new", fallback = "legacy"`
#      while the new origin is SIGKILLed (listener and open connections gone) and restarted;
#      reports every request wrk saw fail (non-2xx and socket errors).
#
# Origins are nginx (`return 200`), so the proxy is the thing measured. Needs wrk and nginx
# (Debian: apt-get install wrk nginx-light) and a release build of switchyard; set
# SWITCHYARD=path to use another binary. Knobs: DURATION (s, default 10), CONNS (default 32),
# ROUNDS (default 2), PROXY_THREADS (default 1).
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SWITCHYARD:-${CARGO_TARGET_DIR:-$repo/target}/release/switchyard}
duration=${DURATION:-10}
conns=${CONNS:-32}
rounds=${ROUNDS:-2}
threads=${PROXY_THREADS:-1}

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
command -v wrk >/dev/null || die "wrk missing (apt-get install wrk)"
command -v curl >/dev/null || die "curl missing (apt-get install curl)"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || die "nginx missing (apt-get install nginx-light)"
[ -x "$bin" ] || die "no release binary at $bin (cargo build --release)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$work/proxy.log" "$KEEP_LOG"; cleanup' EXIT

# One nginx process per origin (master_process off: SIGKILL really closes every socket).
start_origin() { # name port -> pid on stdout
  local name=$1 port=$2 dir=$work/nginx-$1
  nginx_origin_conf "$dir" "$port" "add_header x-origin $name; return 200 \"$name\\n\";"
  "$nginx" -c "$dir/nginx.conf" -p "$dir" >/dev/null 2>&1 &
  echo $!
}

legacy_port=$(free_port)
new_port=$(free_port)
legacy_pid=$(start_origin legacy "$legacy_port"); pids+=("$legacy_pid")
new_pid=$(start_origin new "$new_port"); pids+=("$new_pid")
wait_port "$legacy_port"; wait_port "$new_port"

proxy_port=$(free_port)
admin_port=$(free_port)
mkdir -p "$work/routes"
cat >"$work/routes/bench.toml" <<EOF
[upstreams.legacy]
addrs = ["127.0.0.1:$legacy_port"]
[upstreams.new]
addrs = ["127.0.0.1:$new_port"]
health = { path = "/healthz", interval_ms = 100, timeout_ms = 200, healthy = 2, unhealthy = 2 }

[[routes]]
id = "plain"
path = "/plain/*"
to = "legacy"

[[routes]]
id = "split"
path = "/split/*"
split = { new = 10, legacy = 90 }
sticky = "cookie:sid"
fallback = "legacy"

[[routes]]
id = "chaos"
path = "/chaos/*"
to = "new"
fallback = "legacy"
EOF
NO_COLOR=1 SWITCHYARD_LOG=${SWITCHYARD_LOG:-warn,switchyard::health=info,pingora_proxy=error,pingora_core=error} "$bin" serve --routes "$work/routes" --listen "127.0.0.1:$proxy_port" \
  --admin "127.0.0.1:$admin_port" --access-log off --threads "$threads" \
  2>"$work/proxy.log" &
pids+=("$!")
wait_port "$proxy_port"; wait_port "$admin_port"

# wrk prints "Requests/sec: N"; keep N.
rps() { # url [header]
  local out
  if [ $# -gt 1 ]; then
    out=$(wrk -t1 -c"$conns" -d"${duration}s" -H "$2" "$1")
  else
    out=$(wrk -t1 -c"$conns" -d"${duration}s" "$1")
  fi
  if grep -q 'Non-2xx' <<<"$out"; then
    printf '%s\n' "$out" >&2
    die "errors while measuring $1"
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

echo "switchyard $("$bin" --version | awk '{print $2}') ($bin), proxy threads $threads," \
  "wrk -t1 -c$conns -d${duration}s, $(nproc) cores, $rounds rounds"
wrk -t1 -c8 -d1s "http://127.0.0.1:$proxy_port/plain/warm" >/dev/null
wrk -t1 -c8 -d1s "http://127.0.0.1:$proxy_port/split/warm" >/dev/null

declare -a plain split sticky direct
for r in $(seq "$rounds"); do
  direct+=("$(rps "http://127.0.0.1:$legacy_port/")")
  plain+=("$(rps "http://127.0.0.1:$proxy_port/plain/x")")
  split+=("$(rps "http://127.0.0.1:$proxy_port/split/x")")
  sticky+=("$(rps "http://127.0.0.1:$proxy_port/split/x" "Cookie: theme=dark; sid=user-$r")")
  echo "round $r: nginx direct ${direct[-1]}, plain ${plain[-1]}, split ${split[-1]}, split+cookie ${sticky[-1]} req/s"
done
mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.0f", s/NR}'; }
m_direct=$(mean "${direct[@]}"); m_plain=$(mean "${plain[@]}")
m_split=$(mean "${split[@]}"); m_sticky=$(mean "${sticky[@]}")
echo "mean req/s: nginx direct $m_direct | plain route $m_plain | split route $m_split | split + sticky cookie $m_sticky"
awk -v p="$m_plain" -v s="$m_split" -v k="$m_sticky" -v d="$m_direct" 'BEGIN {
  printf "ratios: split/plain %.3f, split+cookie/plain %.3f, plain/nginx-direct %.3f\n", s/p, k/p, p/d }'

# --- A backend killed under load ------------------------------------------------------------
chaos_secs=$((duration < 9 ? 9 : duration))
metrics() { curl -fsS "http://127.0.0.1:$admin_port/metrics"; }
served() { # route upstream
  metrics | awk -v r="route=\"$1\"" -v u="upstream=\"$2\"" \
    '/^switchyard_requests_total/ && index($0, r) && index($0, u) {s+=$2} END {print s+0}'
}
echo
echo "kill test: wrk -t1 -c$conns -d${chaos_secs}s on /chaos (to new, fallback legacy);" \
  "new SIGKILLed at 3 s, restarted at 6 s"
wrk -t1 -c"$conns" -d"${chaos_secs}s" "http://127.0.0.1:$proxy_port/chaos/x" >"$work/chaos.txt" &
wrk_pid=$!
sleep 3
new_before=$(served chaos new)
kill -9 "$new_pid"
sleep 3
new_at_restart=$(served chaos new)
new_pid=$(start_origin new "$new_port"); pids+=("$new_pid")
wait "$wrk_pid"
cat "$work/chaos.txt" | sed 's/^/  /'
total=$(awk '/requests in/ {print $1}' "$work/chaos.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/chaos.txt")
sock=$(awk '/Socket errors/ {gsub(/,/, ""); print $4+$6+$8+$10}' "$work/chaos.txt")
new_after=$(served chaos new)
legacy_total=$(served chaos legacy)
echo "kill test: ${total:-?} requests, failed: ${non2xx:-0} non-2xx + ${sock:-0} socket errors;" \
  "new served $new_before before the kill, $((new_at_restart - new_before)) while dead," \
  "$((new_after - new_at_restart)) after the restart; legacy served $legacy_total"
metrics | grep -E '^switchyard_fallbacks_total\{.*route="chaos"' | sed 's/^/  /' || true
echo "proxy log (health and ejection changes):"
sed 's/\x1b\[[0-9;]*m//g' "$work/proxy.log" |
  grep -E 'upstream (healthy|unhealthy|ejected|back in service)' | cut -c1-200 | sed 's/^/  /' || true

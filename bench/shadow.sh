#!/usr/bin/env bash
# Shadow traffic bench, all on loopback, all in one run: requests/s and p99 of the PRIMARY
# through three routes of one switchyard, measured in alternation so drift hits all alike:
#   none  `to = "legacy"`, no shadow;
#   fast  the same plus `shadow = { upstream = "fast", percent = 100 }`, a shadow backend that
#         answers like the primary at once (the proxy does twice the upstream work);
#   slow  the same plus `shadow = { upstream = "slow", percent = 100 }`, a shadow backend
#         that answers after SLOW_MS (default 500 ms): copies pile up to the cap
#         (`[proxy] shadow_max_inflight`, default 128) and the rest are skipped.
# After each run it prints the route's shadow results from /metrics (match, skipped, ...).
#
# The primary and the fast shadow are nginx (`return 200`); the slow shadow is a Python
# asyncio server. Needs wrk, nginx, python3 and a release build of switchyard; set
# SWITCHYARD=path to use another binary. Knobs: DURATION (s, default 10), CONNS (default 50),
# ROUNDS (default 3), PROXY_THREADS (default 1), SLOW_MS (default 500), MAX_INFLIGHT (default
# 128).
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SWITCHYARD:-${CARGO_TARGET_DIR:-$repo/target}/release/switchyard}
duration=${DURATION:-10}
conns=${CONNS:-50}
rounds=${ROUNDS:-3}
threads=${PROXY_THREADS:-1}
slow_ms=${SLOW_MS:-500}
max_inflight=${MAX_INFLIGHT:-128}

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
command -v wrk >/dev/null || die "wrk missing (apt-get install wrk)"
command -v curl >/dev/null || die "curl missing (apt-get install curl)"
command -v python3 >/dev/null || die "python3 missing"
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

start_nginx() { # name port
  local name=$1 port=$2 dir=$work/nginx-$1
  nginx_origin_conf "$dir" "$port" 'return 200 "hello\n";'
  "$nginx" -c "$dir/nginx.conf" -p "$dir" >/dev/null 2>&1 &
  pids+=("$!")
}

# Answers every request with nginx's body after a delay; keep-alive, so the proxy's pooled
# connections stay busy as long as the delay lasts.
start_slow() { # port
  cat >"$work/slow.py" <<'EOF'
import asyncio, sys
port, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000
async def conn(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n")
            await w.drain()
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(conn, "127.0.0.1", port, backlog=4096)
    async with s:
        await s.serve_forever()
asyncio.run(main())
EOF
  python3 "$work/slow.py" "$1" "$slow_ms" &
  pids+=("$!")
}

legacy_port=$(free_port); fast_port=$(free_port); slow_port=$(free_port)
start_nginx legacy "$legacy_port"
start_nginx fast "$fast_port"
start_slow "$slow_port"
wait_port "$legacy_port"; wait_port "$fast_port"; wait_port "$slow_port"

proxy_port=$(free_port)
admin_port=$(free_port)
mkdir -p "$work/routes"
cat >"$work/routes/bench.toml" <<EOF
[proxy]
shadow_max_inflight = $max_inflight

[upstreams.legacy]
addrs = ["127.0.0.1:$legacy_port"]
[upstreams.fast]
addrs = ["127.0.0.1:$fast_port"]
[upstreams.slow]
addrs = ["127.0.0.1:$slow_port"]
read_timeout_ms = 5000

[[routes]]
id = "none"
path = "/none/*"
to = "legacy"

[[routes]]
id = "fast"
path = "/fast/*"
to = "legacy"
shadow = { upstream = "fast", percent = 100 }

[[routes]]
id = "slow"
path = "/slow/*"
to = "legacy"
shadow = { upstream = "slow", percent = 100 }
EOF
"$bin" check "$work/routes" >/dev/null || die "bench routes do not compile"
NO_COLOR=1 SWITCHYARD_LOG=${SWITCHYARD_LOG:-warn,pingora_proxy=error,pingora_core=error} \
  "$bin" serve --routes "$work/routes" --listen "127.0.0.1:$proxy_port" \
  --admin "127.0.0.1:$admin_port" --access-log off --threads "$threads" 2>"$work/proxy.log" &
pids+=("$!")
wait_port "$proxy_port"; wait_port "$admin_port"

# wrk --latency: "Requests/sec: N" and the "99%" line of the latency distribution.
run() { # url -> "rps p99_ms"
  local out
  out=$(wrk -t1 -c"$conns" -d"${duration}s" --latency "$1")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    printf '%s\n' "$out" >&2
    die "errors while measuring $1"
  fi
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/, "", v); v/=1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99"
}

shadow_counts() { # route
  curl -fsS "http://127.0.0.1:$admin_port/metrics" |
    awk -v r="route=\"$1\"" '/^switchyard_shadow_total/ && index($0, r) {
      match($0, /result="[a-z_]+"/); res = substr($0, RSTART + 8, RLENGTH - 9); s[res] += $2 }
      END { out = ""; for (k in s) if (s[k] > 0) out = out k "=" s[k] " "; print out }'
}

echo "switchyard $("$bin" --version | awk '{print $2}') ($bin), proxy threads $threads," \
  "wrk -t1 -c$conns -d${duration}s, $(nproc) cores, $rounds rounds, slow shadow ${slow_ms} ms," \
  "shadow_max_inflight $max_inflight"
for r in none fast slow; do wrk -t1 -c8 -d1s "http://127.0.0.1:$proxy_port/$r/warm" >/dev/null; done

declare -A rps p99
for round in $(seq "$rounds"); do
  line="round $round:"
  for r in none fast slow; do
    read -r a b < <(run "http://127.0.0.1:$proxy_port/$r/x")
    rps[$r]="${rps[$r]:-} $a"
    p99[$r]="${p99[$r]:-} $b"
    line="$line $r ${a} req/s p99 ${b} ms;"
  done
  echo "$line"
done
mean() { printf '%s\n' $@ | awk '{s+=$1} END {printf "%.2f", s/NR}'; }
m_none=$(mean ${rps[none]}); m_fast=$(mean ${rps[fast]}); m_slow=$(mean ${rps[slow]})
echo
echo "| route | req/s (mean) | vs none | p99 ms (mean) | shadow results |"
echo "|---|---|---|---|---|"
for r in none fast slow; do
  m=$(mean ${rps[$r]})
  awk -v m="$m" -v n="$m_none" -v p="$(mean ${p99[$r]})" -v r="$r" -v c="$(shadow_counts "$r")" \
    'BEGIN { printf "| %s | %.0f | %.3f | %.2f | %s |\n", r, m, m/n, p, (c == "" ? "-" : c) }'
done
awk -v f="$m_fast" -v s="$m_slow" -v n="$m_none" 'BEGIN {
  printf "\nthroughput loss: fast shadow %.1f%%, slow shadow %.1f%%\n", (1-f/n)*100, (1-s/n)*100 }'

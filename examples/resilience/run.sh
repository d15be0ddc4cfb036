#!/usr/bin/env bash
# Starts a real service (Python's http.server on :8089) and legate in front of it
# with legate.yaml, sends traffic to the faulted route and to a clean one, and
# shows what happened: status codes, slow requests, and legate's fault stats.
#
#   bash examples/resilience/run.sh            # 200 requests per route
#   REQUESTS=1000 bash examples/resilience/run.sh
#   LEGATE=target/debug/legate bash examples/resilience/run.sh
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
requests=${REQUESTS:-200}
legate=${LEGATE:-}
if [[ -z $legate ]]; then
  cargo build --release -p legate --manifest-path "$root/Cargo.toml" >&2
  legate=$root/target/release/legate
fi

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
echo "hello from the service" > "$work/index.html"
python3 -m http.server 8089 --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
"$legate" -c legate.yaml -l warning >"$work/legate.log" 2>&1 &

# Both must answer within 10 s.
ready=
for _ in $(seq 100); do
  if curl -s -o /dev/null localhost:9902/ready && curl -s -o /dev/null localhost:8089/; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ -z $ready ]]; then
  echo "legate or the service did not start; legate's log:" >&2
  cat "$work/legate.log" >&2
  exit 1
fi

# One line per request: status and seconds taken.
send() {
  for _ in $(seq "$requests"); do
    curl -s -o /dev/null --max-time 5 -w '%{http_code} %{time_total}\n' "localhost:10080$1"
  done
}

report() {
  echo "$1: $requests requests"
  sort -n | awk '{ n[$1]++; if ($2 >= 0.1) slow++ }
    END { for (c in n) printf "  status %s: %d\n", c, n[c]; printf "  slower than 100 ms: %d\n", slow+0 }'
}

send /api | report "GET /api (10% aborts, 25% delayed 100 ms)"
send / | report "GET / (no faults)"
echo "a caller asking for a fault: $(curl -s -o /dev/null -w '%{http_code}' -H 'x-envoy-fault-abort-request: 429' localhost:10080/)"
echo "stats:"
curl -s 'localhost:9902/stats?filter=fault' | sed 's/^/  /'

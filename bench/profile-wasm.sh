#!/usr/bin/env bash
# Where the wasm filter's time goes in legate: runs legate (one worker) under
# valgrind --tool=callgrind twice, with bench/proxy-wasm.yaml and with
# bench/proxy.yaml, and drives the same number of HTTP/1.1 requests through
# each with wrk. Counters are zeroed after a warm-up and dumped after the
# requests, so start-up (module compilation, VM creation) is excluded. Then
# prints instructions per request and the functions that account for the
# difference (bench/callgrind_summary.py).
#
# Usage: bench/profile-wasm.sh [-h]
#
# Environment overrides (defaults in brackets):
#   PROFILE_REQUESTS   requests measured per run (at least; wrk runs in 4 s slices) [20000]
#   PROFILE_OUT        directory for the callgrind files and logs [a new /tmp/legate-profile.XXXXXX]
#   PROFILE_PORT_OFFSET  added to bench/run.sh's ports (upstream 18080, listener
#                      18100, admin 18901) [10000]
#   LEGATE_BIN         legate binary [target/release/legate]; build it with
#                      debug info (the release profile has it) for names and lines
#   BENCH_WASM         the filter [target/wasm/wasm32-wasip1/release/header_filter.wasm]
#
# Needs valgrind, nginx, wrk, curl, python3. Takes about a minute.
set -euo pipefail
export LC_ALL=C

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$bench_dir/.." && pwd -P)

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
esac

REQUESTS="${PROFILE_REQUESTS:-20000}"
OFFSET="${PROFILE_PORT_OFFSET:-10000}"
LEGATE_BIN="${LEGATE_BIN:-$repo_root/target/release/legate}"
WASM_FILE="${BENCH_WASM:-$repo_root/target/wasm/wasm32-wasip1/release/header_filter.wasm}"
[[ "$REQUESTS" =~ ^[1-9][0-9]*$ ]] || { echo "PROFILE_REQUESTS must be a positive integer" >&2; exit 2; }
[[ "$OFFSET" =~ ^[0-9]+$ ]] && (( OFFSET <= 40000 )) || { echo "PROFILE_PORT_OFFSET must be 0..40000" >&2; exit 2; }
for t in valgrind callgrind_control nginx wrk curl python3 setsid timeout; do
    command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done
[[ -x "$LEGATE_BIN" ]] || { echo "no legate binary at $LEGATE_BIN (cargo build --release -p legate)" >&2; exit 1; }
[[ -s "$WASM_FILE" ]] || { echo "no filter at $WASM_FILE (see bench/README.md)" >&2; exit 1; }
WASM_FILE=$(realpath "$WASM_FILE")

UP_PORT=$((18080 + OFFSET)); EL_PORT=$((18100 + OFFSET)); ADMIN_PORT=$((18901 + OFFSET))
out="${PROFILE_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/legate-profile.XXXXXX")}"
mkdir -p "$out/upstream"
log() { printf '[profile %s] %s\n' "$(date +%T)" "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $UP_PORT $EL_PORT $ADMIN_PORT; do
    if port_open "$p"; then log "port $p is in use; set PROFILE_PORT_OFFSET"; exit 1; fi
done

PIDS=()
LOAD_PID=
stop_pid() {
    local pid="$1" i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    [[ -z "$LOAD_PID" ]] || { kill -TERM "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; }
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_load() {   # bounded, interruptible wrk
    timeout 60 "$@" >/dev/null 2>&1 </dev/null &
    LOAD_PID=$!
    wait "$LOAD_PID" || true
    LOAD_PID=
}

shift_ports() {   # FILE: every port_value shifted by OFFSET
    awk -v off="$OFFSET" '{
        while (match($0, /port_value: [0-9]+/)) {
            n = substr($0, RSTART + 12, RLENGTH - 12) + off
            $0 = substr($0, 1, RSTART - 1) "port_value= " n substr($0, RSTART + RLENGTH)
        }
        gsub(/port_value= /, "port_value: "); print }' "$1"
}
shift_ports "$bench_dir/proxy.yaml" >"$out/proxy.yaml"
shift_ports "$bench_dir/proxy-wasm.yaml" | sed "s|filename: \"[^\"]*\"|filename: \"$WASM_FILE\"|" >"$out/proxy-wasm.yaml"

# The same upstream as bench/run.sh: nginx, one worker, return 200 + 20 bytes.
cat >"$out/upstream/nginx.conf" <<EOF
worker_processes 1;
pid $out/upstream/nginx.pid;
error_log $out/upstream/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
setsid nginx -p "$out/upstream" -e "$out/upstream/error.log" -c "$out/upstream/nginx.conf" \
    -g 'daemon off;' >"$out/upstream/stderr.log" 2>&1 </dev/null &
PIDS+=($!)
for i in $(seq 1 50); do port_open "$UP_PORT" && break; sleep 0.1; done

rq_total() {
    curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/stats" | awk '$1 == "http.ingress.downstream_rq_total:" {print $2}'
}

# profile NAME YAML: writes $out/NAME.callgrind and $out/NAME.requests.
profile() {
    local name="$1" yaml="$2" pid before after n i
    log "$name: valgrind --tool=callgrind ${LEGATE_BIN#"$repo_root"/} -c $yaml --concurrency 1"
    setsid valgrind --tool=callgrind --callgrind-out-file="$out/$name.final.callgrind" \
        "$LEGATE_BIN" -c "$yaml" --concurrency 1 >"$out/$name.log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 1 120); do
        curl -s -o /dev/null -m 2 "http://127.0.0.1:$ADMIN_PORT/ready" && break
        kill -0 "$pid" 2>/dev/null || { tail "$out/$name.log" >&2; exit 1; }
        sleep 1
    done
    run_load wrk -t1 -c10 -d3s "http://127.0.0.1:$EL_PORT/"   # warm-up: VM creation, pools
    sleep 0.5
    before=$(rq_total)
    callgrind_control -z "$pid" >/dev/null
    n=0
    while (( n < REQUESTS )); do
        run_load wrk -t1 -c10 -d4s "http://127.0.0.1:$EL_PORT/"
        after=$(rq_total)
        n=$(( after - before ))
    done
    sleep 0.5
    callgrind_control -d "$pid" >/dev/null
    # The dump is NAME.final.callgrind.1 (counts since the zeroing).
    for i in $(seq 1 100); do [[ -s "$out/$name.final.callgrind.1" ]] && break; sleep 0.1; done
    mv "$out/$name.final.callgrind.1" "$out/$name.callgrind"
    echo "$n" >"$out/$name.requests"
    log "$name: $n requests measured"
    stop_pid "$pid"
    rm -f "$out/$name.final.callgrind"*
}

profile with-filter "$out/proxy-wasm.yaml"
profile without-filter "$out/proxy.yaml"

log "callgrind files in $out"
python3 "$bench_dir/callgrind_summary.py" \
    "$out/with-filter.callgrind" "$(cat "$out/with-filter.requests")" \
    "$out/without-filter.callgrind" "$(cat "$out/without-filter.requests")" 25 | tee "$out/summary.txt"

#!/usr/bin/env bash
# Side-by-side benchmark, four suites (BENCH_SUITES):
#   proxy: the same upstream measured direct, through nginx, HAProxy, Envoy and
#          legate, each proxy with ONE worker, for
#            - HTTP/1.1 keep-alive load (wrk), and
#            - HTTP/2 cleartext, prior knowledge (h2c) load (h2load);
#   wasm:  the cost of one header-adding proxy-wasm HTTP filter (the SAME
#          header_filter.wasm in Envoy/V8 and in legate/wasmtime): wrk HTTP/1.1
#          with ONE worker, each proxy with bench/proxy.yaml and with
#          bench/proxy-wasm.yaml; then the resident memory (VmRSS) of Envoy and
#          legate with 1 and 2 workers, with and without the filter (and
#          legate with the filter's code from --wasm-cache-dir);
#   filters: the cost of a chain of built-in filters (fault at 0%, RBAC, JWT
#          with an HS256 token) in Envoy and legate, one worker, wrk HTTP/1.1,
#          bench/proxy.yaml against bench/proxy-filters.yaml;
#   redis: redis-benchmark GET/SET at -P 1 and -P 16 against one redis-server,
#          direct and through twemproxy, Envoy's redis_proxy and legate (the
#          same bench/proxy-redis.yaml), each proxy with ONE worker;
#   mysql: sysbench oltp_read_only against one throwaway mariadbd, direct and
#          through HAProxy (mode tcp), Envoy (tcp_proxy, bench/proxy-mysql-tcp.yaml),
#          legate on the same file and legate with bench/proxy-mysql.yaml
#          (mysql_proxy + tcp_proxy), each proxy with ONE worker.
# Writes a markdown report to bench/RESULTS.md (see bench/README.md).
#
# Usage: bench/run.sh [--build-legate] [--no-build] [-h]
#   --build-legate  rebuild legate (and the default filter) even if present
#   --no-build      never call cargo
#
# Environment overrides (defaults in brackets):
#   BENCH_DURATION       seconds per measured run [10]
#   BENCH_WARMUP         seconds of warm-up before each measured run, 0 = none [2]
#   BENCH_CONNECTIONS    wrk connections [50]
#   BENCH_WRK_THREADS    wrk threads [1]
#   BENCH_H2_CONNECTIONS h2load connections [10]
#   BENCH_H2_STREAMS     h2load max concurrent streams per connection [10]
#   BENCH_SUITES         which suites ["proxy wasm filters redis mysql"]
#   BENCH_TARGETS        which rows to run ["direct nginx haproxy twemproxy envoy
#                        legate"]; the proxy suite runs all but twemproxy, the
#                        wasm and filters suites the envoy and legate ones, the
#                        redis suite direct, twemproxy, envoy and legate, the
#                        mysql suite direct, haproxy, envoy and legate (legate
#                        = its two rows, tcp_proxy and mysql_proxy)
#   BENCH_PROTOCOLS      which protocols, proxy suite ["h1 h2c"]
#   BENCH_WASM_ROUNDS    rounds of the wasm suite's filter-cost table; each round
#                        runs its rows back to back, the report gives medians [3]
#   BENCH_RSS_WORKERS    worker counts of the wasm suite's memory table ["1 2"]
#   BENCH_FILTER_ROUNDS  rounds of the filters suite's table, as for wasm [3]
#   BENCH_REDIS_ROUNDS   rounds of the redis suite, as for wasm [3]
#   BENCH_REDIS_SECONDS  about how long each redis-benchmark test runs: its -n
#                        is this times the req/s of a calibration run [3]
#   BENCH_REDIS_REQUESTS a fixed redis-benchmark -n instead (no calibration run)
#   BENCH_MYSQL_ROUNDS   rounds of the mysql suite; each runs direct, haproxy,
#                        envoy, legate tcp_proxy, legate mysql_proxy [3]
#   BENCH_MYSQL_SECONDS  sysbench --time of each measured run [15]
#   BENCH_MYSQL_WARMUP   seconds of a sysbench warm-up run before each, 0 = none [3]
#   BENCH_MYSQL_THREADS  sysbench --threads [8]
#   BENCH_MYSQL_PS_MODE  sysbench --db-ps-mode: disable (every query a COM_QUERY
#                        the filter parses) or auto (server-side prepared
#                        statements) [disable]
#   BENCH_MYSQL_YAML     the legate mysql_proxy row's bootstrap [bench/proxy-mysql.yaml]
#                        (the envoy and legate tcp_proxy rows always run
#                        bench/proxy-mysql-tcp.yaml)
#   BENCH_WASM           the filter [target/wasm/wasm32-wasip1/release/header_filter.wasm,
#                        built from examples/wasm like legate, see BENCH_BUILD_LEGATE]
#   BENCH_COMPONENT      the same filter as a legate:filter component, for the
#                        legate+component row [target/components/wasm32-wasip2/
#                        release/sdk_header_filter.wasm, built from
#                        examples/components like legate]
#   BENCH_BUILD_LEGATE   auto (build if missing) | always | never [auto]; applies
#                        to legate and to the default BENCH_WASM and BENCH_COMPONENT
#   BENCH_RESULTS        output file [bench/RESULTS.md]
#   BENCH_KEEP           1 = keep the scratch dir with configs/logs/raw output [0]
#   BENCH_PORT_OFFSET    add this to every port below, e.g. 10000 when something
#                        else holds one of them; the proxies then get copies of
#                        proxy.yaml/proxy-wasm.yaml with the ports shifted [0]
#   LEGATE_BIN           legate binary [target/release/legate]
#   ENVOY_BIN            envoy binary [output of tests/envoy/fetch.sh]
#
# All servers bind 127.0.0.1 on fixed ports:
#   18080 upstream HTTP/1.1     18081 upstream h2c (direct h2c row only)
#   18200 nginx proxy HTTP/1.1  18201 nginx proxy h2c
#   18300 HAProxy (HTTP/1.1 and h2c on the same port)
#   18100 Envoy / legate listener (codec AUTO), 18901 their admin
#   18379 redis-server (redis suite)  18380 twemproxy, 18381 its stats
#   18400 Envoy / legate redis_proxy listener (bench/proxy-redis.yaml)
#   18306 mariadbd (mysql suite)     18407 HAProxy mode tcp (mysql suite)
#   18406 Envoy / legate mysql listener (bench/proxy-mysql.yaml, proxy-mysql-tcp.yaml)
# The upstream also answers GET /wasm-check with the x-legate-wasm request
# header it received (the wasm suite's sanity check; the load is on / only).
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd "$bench_dir/.." && pwd -P)

# ---------------------------------------------------------------- settings
# The exact command, with every override that was set, for the report
# (computed before the defaults below are filled in).
cmdline="bench/run.sh${*:+ $*}"
for v in LEGATE_BIN ENVOY_BIN BENCH_PORT_OFFSET BENCH_KEEP BENCH_RESULTS BENCH_BUILD_LEGATE BENCH_WASM BENCH_COMPONENT BENCH_WASM_ROUNDS BENCH_FILTER_ROUNDS BENCH_RSS_WORKERS \
         BENCH_REDIS_ROUNDS BENCH_REDIS_SECONDS BENCH_REDIS_REQUESTS \
         BENCH_MYSQL_ROUNDS BENCH_MYSQL_SECONDS BENCH_MYSQL_WARMUP BENCH_MYSQL_THREADS BENCH_MYSQL_PS_MODE BENCH_MYSQL_YAML \
         BENCH_PROTOCOLS BENCH_TARGETS BENCH_SUITES BENCH_H2_STREAMS BENCH_H2_CONNECTIONS BENCH_WRK_THREADS BENCH_CONNECTIONS BENCH_WARMUP BENCH_DURATION; do
    if [[ -n "${!v+x}" ]]; then
        val="${!v}"
        [[ "$val" =~ ^[A-Za-z0-9_./:=-]+$ ]] || val="'$val'"
        cmdline="$v=$val $cmdline"
    fi
done

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNECTIONS:-50}"
WRK_THREADS="${BENCH_WRK_THREADS:-1}"
H2_CONNS="${BENCH_H2_CONNECTIONS:-10}"
H2_STREAMS="${BENCH_H2_STREAMS:-10}"
TARGETS="${BENCH_TARGETS:-direct nginx haproxy twemproxy envoy legate}"
PROTOCOLS="${BENCH_PROTOCOLS:-h1 h2c}"
SUITES="${BENCH_SUITES:-proxy wasm filters redis mysql}"
RSS_WORKERS="${BENCH_RSS_WORKERS:-1 2}"
WASM_ROUNDS="${BENCH_WASM_ROUNDS:-3}"
FILTER_ROUNDS="${BENCH_FILTER_ROUNDS:-3}"
REDIS_ROUNDS="${BENCH_REDIS_ROUNDS:-3}"
REDIS_SECONDS="${BENCH_REDIS_SECONDS:-3}"
REDIS_REQUESTS="${BENCH_REDIS_REQUESTS:-}"
REDIS_CLIENTS=50
REDIS_PIPELINES="1 16"
MYSQL_ROUNDS="${BENCH_MYSQL_ROUNDS:-3}"
MYSQL_SECONDS="${BENCH_MYSQL_SECONDS:-15}"
MYSQL_WARMUP="${BENCH_MYSQL_WARMUP:-3}"
MYSQL_THREADS="${BENCH_MYSQL_THREADS:-8}"
MYSQL_PS_MODE="${BENCH_MYSQL_PS_MODE:-disable}"
MYSQL_TABLES=4
MYSQL_TABLE_SIZE=10000
BUILD_LEGATE="${BENCH_BUILD_LEGATE:-auto}"
RESULTS="${BENCH_RESULTS:-$bench_dir/RESULTS.md}"
KEEP="${BENCH_KEEP:-0}"
LEGATE_BIN="${LEGATE_BIN:-$repo_root/target/release/legate}"
PROXY_YAML="$bench_dir/proxy.yaml"
WASM_YAML_SRC="$bench_dir/proxy-wasm.yaml"   # copied to the scratch dir with an absolute .wasm path
FILTERS_YAML="$bench_dir/proxy-filters.yaml"
REDIS_YAML="$bench_dir/proxy-redis.yaml"
MYSQL_YAML="${BENCH_MYSQL_YAML:-$bench_dir/proxy-mysql.yaml}"
MYSQL_TCP_YAML="$bench_dir/proxy-mysql-tcp.yaml"   # envoy and legate tcp_proxy rows
WASM_DEFAULT="$repo_root/target/wasm/wasm32-wasip1/release/header_filter.wasm"
WASM_FILE="${BENCH_WASM:-$WASM_DEFAULT}"
COMPONENT_DEFAULT="$repo_root/target/components/wasm32-wasip2/release/sdk_header_filter.wasm"
COMPONENT_FILE="${BENCH_COMPONENT:-$COMPONENT_DEFAULT}"
COMPONENT_DESC=
# The filter-cost table's rows, in run order within a round.
WASM_ROWS="envoy envoy+wasm legate legate+wasm legate+component"
FILTER_ROWS="envoy envoy+filters legate legate+filters"
# The mysql suite's rows, in run order within a round (legate-tcp and
# legate-mysql are the BENCH_TARGETS entry legate).
MYSQL_ROWS="direct haproxy envoy legate-tcp legate-mysql"

PORT_OFFSET="${BENCH_PORT_OFFSET:-0}"
[[ "$PORT_OFFSET" =~ ^[0-9]+$ ]] && (( PORT_OFFSET <= 40000 )) \
    || { echo "BENCH_PORT_OFFSET must be an integer from 0 to 40000, got '$PORT_OFFSET'" >&2; exit 2; }
UP_H1_PORT=$((18080 + PORT_OFFSET))
UP_H2_PORT=$((18081 + PORT_OFFSET))
EL_PORT=$((18100 + PORT_OFFSET))      # envoy / legate listener (from proxy.yaml)
EL_ADMIN_PORT=$((18901 + PORT_OFFSET))
NGINX_H1_PORT=$((18200 + PORT_OFFSET))
NGINX_H2_PORT=$((18201 + PORT_OFFSET))
HAPROXY_PORT=$((18300 + PORT_OFFSET))
REDIS_PORT=$((18379 + PORT_OFFSET))        # redis-server (from proxy-redis.yaml)
TWEM_PORT=$((18380 + PORT_OFFSET))
TWEM_STATS_PORT=$((18381 + PORT_OFFSET))
EL_REDIS_PORT=$((18400 + PORT_OFFSET))     # envoy / legate redis_proxy listener
MYSQL_PORT=$((18306 + PORT_OFFSET))        # mariadbd (from proxy-mysql.yaml)
EL_MYSQL_PORT=$((18406 + PORT_OFFSET))     # envoy / legate mysql listener
HAPROXY_MYSQL_PORT=$((18407 + PORT_OFFSET)) # HAProxy mode tcp (mysql suite)
ALL_PORTS="$UP_H1_PORT $UP_H2_PORT $EL_PORT $EL_ADMIN_PORT $NGINX_H1_PORT $NGINX_H2_PORT $HAPROXY_PORT"
ALL_PORTS+=" $REDIS_PORT $TWEM_PORT $TWEM_STATS_PORT $EL_REDIS_PORT $MYSQL_PORT $EL_MYSQL_PORT $HAPROXY_MYSQL_PORT"
BODY="hello from upstream"   # response body is this plus a newline (20 bytes)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
    case "$arg" in
        --build-legate) BUILD_LEGATE=always ;;
        --no-build) BUILD_LEGATE=never ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

for v in DURATION WARMUP CONNS WRK_THREADS H2_CONNS H2_STREAMS WASM_ROUNDS FILTER_ROUNDS REDIS_ROUNDS REDIS_SECONDS \
         MYSQL_ROUNDS MYSQL_SECONDS MYSQL_WARMUP MYSQL_THREADS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2; }
done
(( DURATION > 0 )) || { echo "BENCH_DURATION must be > 0" >&2; exit 2; }
(( WASM_ROUNDS > 0 )) || { echo "BENCH_WASM_ROUNDS must be > 0" >&2; exit 2; }
(( FILTER_ROUNDS > 0 )) || { echo "BENCH_FILTER_ROUNDS must be > 0" >&2; exit 2; }
(( REDIS_ROUNDS > 0 )) || { echo "BENCH_REDIS_ROUNDS must be > 0" >&2; exit 2; }
(( REDIS_SECONDS > 0 )) || { echo "BENCH_REDIS_SECONDS must be > 0" >&2; exit 2; }
[[ -z "$REDIS_REQUESTS" || "$REDIS_REQUESTS" =~ ^[1-9][0-9]*$ ]] \
    || { echo "BENCH_REDIS_REQUESTS must be a positive integer, got '$REDIS_REQUESTS'" >&2; exit 2; }
(( MYSQL_ROUNDS > 0 )) || { echo "BENCH_MYSQL_ROUNDS must be > 0" >&2; exit 2; }
(( MYSQL_SECONDS > 0 )) || { echo "BENCH_MYSQL_SECONDS must be > 0" >&2; exit 2; }
(( MYSQL_THREADS > 0 )) || { echo "BENCH_MYSQL_THREADS must be > 0" >&2; exit 2; }
[[ "$MYSQL_PS_MODE" == disable || "$MYSQL_PS_MODE" == auto ]] \
    || { echo "BENCH_MYSQL_PS_MODE must be disable or auto, got '$MYSQL_PS_MODE'" >&2; exit 2; }
if [[ " $SUITES " == *" mysql "* ]]; then
    [[ -f "$MYSQL_YAML" ]] || { echo "BENCH_MYSQL_YAML: no such file '$MYSQL_YAML'" >&2; exit 2; }
    MYSQL_YAML=$(cd "$(dirname "$MYSQL_YAML")" && pwd -P)/$(basename "$MYSQL_YAML")
fi
# How the report names legate's bootstrap for the mysql suite.
MYSQL_YAML_REF="[bench/proxy-mysql.yaml](proxy-mysql.yaml)"
[[ "$MYSQL_YAML" == "$bench_dir/proxy-mysql.yaml" ]] || MYSQL_YAML_REF="\`$MYSQL_YAML\` (BENCH_MYSQL_YAML)"
for s in $SUITES; do
    [[ "$s" == proxy || "$s" == wasm || "$s" == filters || "$s" == redis || "$s" == mysql ]] \
        || { echo "BENCH_SUITES: unknown suite '$s' (proxy, wasm, filters, redis, mysql)" >&2; exit 2; }
done
for w in $RSS_WORKERS; do
    [[ "$w" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RSS_WORKERS must list positive integers, got '$w'" >&2; exit 2; }
done
has_suite() { [[ " $SUITES " == *" $1 "* ]]; }
# The suites that need the HTTP upstream and the HTTP load generators.
has_http_suite() { has_suite proxy || has_suite wasm || has_suite filters; }
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- processes
work=$(mktemp -d "${TMPDIR:-/tmp}/legate-bench.XXXXXX")
chmod 755 "$work"
PIDS=()

# Stop one server started with start_bg (it leads its own process group).
stop_pid() {
    local pid="$1" i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Workers of a killed master, if any, share its process group.
    kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    if [[ -n "$LOAD_PID" ]]; then kill -TERM "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; fi
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ "$KEEP" == 1 ]]; then
        log "scratch dir kept: $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg LOGFILE CMD... : run CMD in its own session/process group, record pid.
# (A background child of a non-interactive shell is not a group leader, so
# setsid execs in place and $! is the server's pid == its pgid.)
BG_PID=
start_bg() {
    local logf="$1"; shift
    setsid "$@" >"$logf" 2>&1 </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# run_load SECONDS OUTFILE CMD... : run a bounded load generator. It runs in
# the background and is waited for, so that INT/TERM interrupt the wait and
# the EXIT trap can stop it at once.
LOAD_PID=
run_load() {
    local limit="$1" out="$2" rc=0; shift 2
    timeout "$limit" "$@" >"$out" 2>&1 </dev/null &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    return "$rc"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready PID PORT [ADMIN_PORT]: until the port accepts (or, if given, the
# admin /ready answers 200). Fails if the process exits or after 30 s.
wait_ready() {
    local pid="$1" port="$2" admin="${3:-}" i code
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ -n "$admin" ]]; then
            code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$admin/ready" 2>/dev/null || true)
            [[ "$code" == 200 ]] && return 0
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    return 1
}

# check_url URL h1|h2c : one request must return 200 with the upstream body.
check_url() {
    local url="$1" proto="$2" out flag=--http1.1
    [[ "$proto" == h2c ]] && flag=--http2-prior-knowledge
    out=$(curl -s -m 5 $flag -w '%{http_code} %{http_version}' "$url" 2>/dev/null) || return 1
    [[ "$out" == "$BODY"$'\n'"200 "* ]] || { log "unexpected answer from $url ($proto): $(printf '%q' "$out")"; return 1; }
    if [[ "$proto" == h2c && "$out" != *" 2" ]]; then log "$url did not answer over HTTP/2"; return 1; fi
    return 0
}

# ---------------------------------------------------------------- tools
ensure_tools() {
    local missing=() pkgs=()
    if has_http_suite; then
        command -v nginx   >/dev/null || { missing+=(nginx);   pkgs+=(nginx); }
        command -v haproxy >/dev/null || { missing+=(haproxy); pkgs+=(haproxy); }
        command -v wrk     >/dev/null || { missing+=(wrk);     pkgs+=(wrk); }
        command -v h2load  >/dev/null || { missing+=(h2load);  pkgs+=(nghttp2-client); }
    fi
    if has_suite redis; then
        command -v redis-server    >/dev/null || { missing+=(redis-server);    pkgs+=(redis-server); }
        command -v redis-cli       >/dev/null || { missing+=(redis-cli);       pkgs+=(redis-tools); }
        command -v redis-benchmark >/dev/null || { missing+=(redis-benchmark); pkgs+=(redis-tools); }
        if has_target twemproxy; then
            command -v nutcracker >/dev/null || { missing+=(nutcracker); pkgs+=(nutcracker); }
        fi
    fi
    if has_suite mysql; then
        command -v mariadbd           >/dev/null || { missing+=(mariadbd);           pkgs+=(mariadb-server); }
        command -v mariadb-install-db >/dev/null || { missing+=(mariadb-install-db); pkgs+=(mariadb-server); }
        command -v mariadb            >/dev/null || { missing+=(mariadb);            pkgs+=(mariadb-client); }
        command -v sysbench           >/dev/null || { missing+=(sysbench);           pkgs+=(sysbench); }
        if has_target haproxy; then
            command -v haproxy        >/dev/null || { missing+=(haproxy);            pkgs+=(haproxy); }
        fi
    fi
    # curl also reads the admin /ready of Envoy and legate.
    command -v curl    >/dev/null || { missing+=(curl);    pkgs+=(curl); }
    command -v setsid  >/dev/null || { missing+=(setsid);  pkgs+=(util-linux); }
    command -v timeout >/dev/null || { missing+=(timeout); pkgs+=(coreutils); }
    ((${#pkgs[@]})) || return 0
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    log "missing: ${missing[*]}; installing Debian packages: ${pkgs[*]}"
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || { log "not root and no sudo: install ${pkgs[*]} by hand"; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq >&2
    # policy-rc.d may refuse to start the packaged services; that is fine.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
}

# ---------------------------------------------------------------- configs
write_nginx_upstream_conf() {
    mkdir -p "$work/upstream"
    cat >"$work/upstream/nginx.conf" <<EOF
worker_processes 1;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$UP_H1_PORT;
        # nginx < 1.25 has no "http2 on;": "listen ... http2" without ssl
        # speaks h2c with prior knowledge only, hence a second port.
        listen 127.0.0.1:$UP_H2_PORT http2;
        location / {
            default_type text/plain;
            return 200 "$BODY\n";
        }
        # Echoes the header that header_filter adds to requests (wasm suite
        # sanity check only; never loaded).
        location = /wasm-check {
            default_type text/plain;
            return 200 "\$http_x_legate_wasm\n";
        }
    }
}
EOF
}

write_nginx_proxy_conf() {
    mkdir -p "$work/nginx"
    cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    upstream backend {
        server 127.0.0.1:$UP_H1_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_H1_PORT;
        listen 127.0.0.1:$NGINX_H2_PORT http2;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_haproxy_conf() {
    mkdir -p "$work/haproxy"
    cat >"$work/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
frontend fe
    # HTTP/1.1, and h2c prior knowledge is auto-detected on the same port.
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server up 127.0.0.1:$UP_H1_PORT
EOF
}

# ---------------------------------------------------------------- results
declare -A RPS P50 P99 ERRS NOTE CPU_US

# proc_cpu_ticks PID: user + system clock ticks of the process, all threads.
proc_cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }

# admin_rq_total: the proxy's http.ingress.downstream_rq_total (Envoy and legate).
admin_rq_total() {
    curl -s -m 2 "http://127.0.0.1:$EL_ADMIN_PORT/stats" 2>/dev/null \
        | awk -F': ' '$1 == "http.ingress.downstream_rq_total" { print $2 }'
}
declare -A URL_H1 URL_H2

# Latency value like 850.00us / 1.23ms / 2.00s -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

# run_wrk NAME URL [TABLE] [HEADER]: results go to RPS[TABLE,NAME] etc. (TABLE h1
# by default); HEADER is sent with every request.
run_wrk() {
    local name="$1" url="$2" tb="${3:-h1}" hdr=()
    [[ -z "${4:-}" ]] || hdr=(-H "$4")
    local out="$work/wrk-$tb-${name//+/-}.txt"
    if (( WARMUP > 0 )); then
        run_load $((WARMUP + 30)) /dev/null wrk -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" "$url" || true
    fi
    log "$name $tb: wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency ${hdr[*]} $url"
    # With CPU_PID set: the proxy's CPU time over the requests it served in the run.
    local cpu0='' rq0=''
    if [[ -n "${CPU_PID:-}" ]]; then cpu0=$(proc_cpu_ticks "$CPU_PID"); rq0=$(admin_rq_total); fi
    if ! run_load $((DURATION + 60)) "$out" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url"; then
        NOTE[$tb,$name]="wrk failed: $(tail -1 "$out")"; return
    fi
    if [[ -n "$cpu0" && -n "$rq0" ]]; then
        local cpu1 rq1
        cpu1=$(proc_cpu_ticks "$CPU_PID"); rq1=$(admin_rq_total)
        if [[ -n "$cpu1" && -n "$rq1" ]] && (( rq1 > rq0 )); then
            CPU_US[$tb,$name]=$(awk -v t=$((cpu1 - cpu0)) -v n=$((rq1 - rq0)) -v hz="$(getconf CLK_TCK)" \
                'BEGIN { printf "%.2f", t / hz / n * 1e6 }')
        fi
    fi
    local rps p50 p99 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    sockerr=$(awk -F'[ ,]+' '/Socket errors:/ {print $4+$6+$8+$10}' "$out")
    if [[ -z "$rps" || -z "$p50" || -z "$p99" ]]; then
        NOTE[$tb,$name]="could not parse wrk output"; return
    fi
    RPS[$tb,$name]=$rps
    P50[$tb,$name]=$(to_ms "$p50")
    P99[$tb,$name]=$(to_ms "$p99")
    ERRS[$tb,$name]=$(( ${non2xx:-0} + ${sockerr:-0} ))
    log "$name $tb: $rps req/s, p50 ${P50[$tb,$name]} ms, p99 ${P99[$tb,$name]} ms, errors ${ERRS[$tb,$name]}${CPU_US[$tb,$name]:+, ${CPU_US[$tb,$name]} us of CPU per request}"
}

run_h2load() {
    local name="$1" url="$2" out="$work/h2load-$name.txt" reqlog="$work/h2load-$name.log"
    local warm=()
    (( WARMUP > 0 )) && warm=(--warm-up-time="${WARMUP}s")
    log "$name h2c: h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D $DURATION ${warm[*]} --log-file=... $url"
    if ! run_load $((DURATION + WARMUP + 60)) "$out" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" \
            "${warm[@]}" --log-file="$reqlog" "$url"; then
        NOTE[h2c,$name]="h2load failed: $(grep -v '^progress' "$out" | tail -1)"; return
    fi
    if ! grep -q '^Application protocol: h2c' "$out"; then
        NOTE[h2c,$name]="h2load did not negotiate h2c"; return
    fi
    local rps failed non2xx pct
    rps=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($(i+1) == "req/s,") print $i}' "$out")
    failed=$(awk '/^requests:/ {print $10 + $12 + $14}' "$out")
    non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")
    # h2load only prints min/max/mean/sd; compute nearest-rank p50/p99 from
    # the per-request log (col 3 = microseconds from request start to end of
    # response, col 2 = status, -1 for failed streams). The log holds only
    # requests of the main (post warm-up) phase.
    pct=$(awk -F'\t' '$2 != -1 {print $3}' "$reqlog" | sort -n | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print ""; exit }
            i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
            printf "%.3f %.3f %d\n", v[i50] / 1000, v[i99] / 1000, NR
        }')
    if [[ -z "$rps" || -z "$pct" ]]; then
        NOTE[h2c,$name]="could not parse h2load output"; return
    fi
    local p50 p99
    read -r p50 p99 _ <<<"$pct"
    RPS[h2c,$name]=$rps
    P50[h2c,$name]=$p50
    P99[h2c,$name]=$p99
    ERRS[h2c,$name]=$(( ${failed:-0} + ${non2xx:-0} ))
    log "$name h2c: $rps req/s, p50 ${P50[h2c,$name]} ms, p99 ${P99[h2c,$name]} ms, errors ${ERRS[h2c,$name]}"
    [[ "$KEEP" == 1 ]] || rm -f "$reqlog"
}

# ---------------------------------------------------------------- targets
# start_envoy YAML WORKERS PORT / start_legate YAML WORKERS PORT: the proxy on
# YAML, logging to CUR_LOG, ready once PORT and the admin port accept. Set
# START_NA and fail when there is no binary.
start_envoy() {
    [[ -n "${ENVOY_BIN:-}" ]] || { START_NA="not available (${ENVOY_NA:-no Envoy binary})"; return 1; }
    start_bg "$CUR_LOG" "$ENVOY_BIN" -c "$1" --disable-hot-restart \
        --concurrency "$2" --use-dynamic-base-id --log-level warn
    CUR_PID=$BG_PID
    wait_ready "$CUR_PID" "$3" "$EL_ADMIN_PORT"
}

# Extra legate flags for the next starts (the memory table's cached-code rows).
LEGATE_EXTRA=()
start_legate() {
    [[ -x "$LEGATE_BIN" ]] || { START_NA="not available (${LEGATE_NA:-no binary at ${LEGATE_BIN#"$repo_root"/}})"; return 1; }
    start_bg "$CUR_LOG" "$LEGATE_BIN" -c "$1" --concurrency "$2" "${LEGATE_EXTRA[@]}"
    CUR_PID=$BG_PID
    wait_ready "$CUR_PID" "$3" "$EL_ADMIN_PORT"
}

# start_target NAME [YAML [WORKERS [TAG]]]: YAML and WORKERS (default
# bench/proxy.yaml, 1) apply to envoy and legate; TAG names the log directory
# (default NAME). Sets CUR_PID (empty for direct) and CUR_LOG.
# When it fails before starting anything, START_NA says why.
CUR_PID=
CUR_LOG=
START_NA=
start_target() {
    local name="$1" yaml="${2:-$PROXY_YAML}" workers="${3:-1}" tag="${4:-$1}"
    CUR_PID=
    START_NA=
    CUR_LOG="$work/$tag/stderr.log"
    [[ "$name" == nginx ]] && CUR_LOG="$work/nginx/error.log"
    case "$name" in
        direct)
            URL_H1[$name]="http://127.0.0.1:$UP_H1_PORT/"
            URL_H2[$name]="http://127.0.0.1:$UP_H2_PORT/"
            return 0 ;;
        nginx)
            write_nginx_proxy_conf
            start_bg "$work/nginx/stderr.log" nginx -p "$work/nginx" -e "$work/nginx/error.log" \
                -c "$work/nginx/nginx.conf" -g 'daemon off;'
            CUR_PID=$BG_PID
            URL_H1[$name]="http://127.0.0.1:$NGINX_H1_PORT/"
            URL_H2[$name]="http://127.0.0.1:$NGINX_H2_PORT/"
            wait_ready "$CUR_PID" "$NGINX_H1_PORT" && wait_ready "$CUR_PID" "$NGINX_H2_PORT" ;;
        haproxy)
            write_haproxy_conf
            start_bg "$work/haproxy/stderr.log" haproxy -db -f "$work/haproxy/haproxy.cfg"
            CUR_PID=$BG_PID
            URL_H1[$name]="http://127.0.0.1:$HAPROXY_PORT/"
            URL_H2[$name]="http://127.0.0.1:$HAPROXY_PORT/"
            wait_ready "$CUR_PID" "$HAPROXY_PORT" ;;
        envoy|legate)
            mkdir -p "$work/$tag"
            URL_H1[$name]="http://127.0.0.1:$EL_PORT/"
            URL_H2[$name]="http://127.0.0.1:$EL_PORT/"
            "start_$name" "$yaml" "$workers" "$EL_PORT" ;;
    esac
}

stop_target() {
    [[ -n "$CUR_PID" ]] || return 0
    stop_pid "$CUR_PID"
    forget_pid "$CUR_PID"
    CUR_PID=
    # Let the listener ports go before the next proxy binds them.
    local p i
    for i in $(seq 1 50); do
        local busy=0
        for p in $EL_PORT $EL_ADMIN_PORT $NGINX_H1_PORT $NGINX_H2_PORT $HAPROXY_PORT $TWEM_PORT $TWEM_STATS_PORT $EL_REDIS_PORT $EL_MYSQL_PORT $HAPROXY_MYSQL_PORT; do
            port_open "$p" && busy=1
        done
        (( busy )) || break
        sleep 0.1
    done
}

# Last lines of the current (or last) target's log, on one line, safe inside
# a markdown table.
log_tail() {
    tail -3 "$CUR_LOG" 2>/dev/null | tr '\n|`' " /'" | cut -c1-300 | sed 's/ *$//'
}

# After start_target failed: set START_NA (if start_target did not) to why.
# Runs in the main shell (not in $(...)) so that it can reap the process.
start_failure() {
    [[ -z "$START_NA" ]] || return 0
    local why="not ready after 30 s" tailtxt
    if [[ -n "$CUR_PID" ]] && ! kill -0 "$CUR_PID" 2>/dev/null; then
        wait "$CUR_PID" 2>/dev/null && why="exited" || why="exited with status $?"
    fi
    tailtxt=$(log_tail)
    START_NA="failed to start ($why)${tailtxt:+: $tailtxt}"
}

# start_na YAML_BASE: after start_failure, the row's note in START_NOTE: "n/a
# (refused config)" when the proxy exited naming fields of YAML_BASE (legate says
# FILE:LINE:COL:, Envoy-style), with those fields in REFUSED_WHY; otherwise
# "n/a (why it did not start)".
START_NOTE=
REFUSED_WHY=
start_na() {
    local base="$1"
    REFUSED_WHY=
    if [[ -n "$base" && -n "$CUR_PID" ]] && ! kill -0 "$CUR_PID" 2>/dev/null \
            && grep -qE "${base//./\\.}:[0-9]+:[0-9]+: " "$CUR_LOG" 2>/dev/null; then
        REFUSED_WHY=$(grep -oE "${base//./\\.}:[0-9]+:[0-9]+: .*" "$CUR_LOG" | sort -u | head -5 | tr '|`' "/'" | paste -sd';' | sed 's/;/; /g')
        START_NOTE="n/a (refused config)"
    else
        # "not available (why)" -> "n/a (why)"
        START_NOTE="n/a ($START_NA)"
        [[ "$START_NA" != "not available ("* ]] || START_NOTE="n/a (${START_NA#not available (}"
    fi
}

bench_target() {
    local name="$1" proto url
    log "=== $name"
    if ! start_target "$name"; then
        start_failure
        NOTE[all,$name]=$START_NA
        log "$name: ${NOTE[all,$name]}"
        stop_target
        return 0
    fi
    for proto in $PROTOCOLS; do
        if [[ "$proto" == h1 ]]; then url=${URL_H1[$name]}; else url=${URL_H2[$name]}; fi
        if [[ -n "$CUR_PID" ]] && ! kill -0 "$CUR_PID" 2>/dev/null; then
            NOTE[$proto,$name]="process exited: $(log_tail)"
            continue
        fi
        if ! check_url "$url" "$proto"; then
            NOTE[$proto,$name]="sanity request over $proto failed"
            log "$name: ${NOTE[$proto,$name]}"
            continue
        fi
        case "$proto" in
            h1) run_wrk "$name" "$url" ;;
            h2c) run_h2load "$name" "$url" ;;
        esac
    done
    stop_target
}

# ---------------------------------------------------------------- wasm suite
WASM_YAML=       # scratch copy of bench/proxy-wasm.yaml with the absolute .wasm path
WASM_NA=         # why the filter rows cannot run, if they cannot
COMPONENT_YAML=  # the same with the component's path
COMPONENT_NA=    # why the legate+component row cannot run, if it cannot
RSS_LOAD_SECS=$(( WARMUP > 0 ? WARMUP : 2 ))
declare -A RSS_IDLE RSS_LOAD RSS_HWM RSS_VMS RSS_NOTE

# prepare_wasm: check the .wasm and that proxy-wasm.yaml is proxy.yaml plus
# the filter, then write the scratch copy of it. Sets WASM_NA on failure.
prepare_wasm() {
    if [[ -n "$WASM_NA" ]]; then return 1; fi
    if [[ ! -s "$WASM_FILE" ]]; then
        WASM_NA="no filter at ${WASM_FILE#"$repo_root"/}"; return 1
    fi
    WASM_FILE=$(realpath "$WASM_FILE")
    if ! diff <(grep -v '^ *#' "$PROXY_YAML") \
            <(grep -v '^ *#' "$WASM_YAML_SRC" | sed '/- name: envoy.filters.http.wasm$/,/filename:/d') >&2; then
        WASM_NA="bench/proxy-wasm.yaml is not bench/proxy.yaml plus the wasm filter (diff above)"; return 1
    fi
    WASM_YAML="$work/proxy-wasm.yaml"
    sed "s|filename: \"[^\"]*\"|filename: \"$WASM_FILE\"|" "$WASM_YAML_SRC" >"$WASM_YAML"
    if ! grep -qF "filename: \"$WASM_FILE\"" "$WASM_YAML"; then
        WASM_NA="could not set the .wasm path in proxy-wasm.yaml"; return 1
    fi
}

# prepare_component: the scratch copy of proxy-wasm.yaml that loads the
# component instead (same filter config, other file). Sets COMPONENT_NA.
prepare_component() {
    if [[ -n "$COMPONENT_NA" ]]; then return 1; fi
    if [[ -z "$WASM_YAML" ]]; then COMPONENT_NA="proxy-wasm.yaml not prepared (${WASM_NA:-?})"; return 1; fi
    if [[ ! -s "$COMPONENT_FILE" ]]; then
        COMPONENT_NA="no component at ${COMPONENT_FILE#"$repo_root"/}"; return 1
    fi
    COMPONENT_FILE=$(realpath "$COMPONENT_FILE")
    COMPONENT_YAML="$work/proxy-component.yaml"
    sed "s|filename: \"[^\"]*\"|filename: \"$COMPONENT_FILE\"|" "$WASM_YAML" >"$COMPONENT_YAML"
    grep -qF "filename: \"$COMPONENT_FILE\"" "$COMPONENT_YAML" \
        || { COMPONENT_NA="could not set the component path"; return 1; }
}

# check_wasm BASE_URL yes|no|component: GET /wasm-check through the proxy
# shows the filter at work (the upstream got x-legate-wasm, the response has
# x-wasm-filter and x-request-path, each naming header_filter, or
# sdk_header_filter for the component) or shows no trace of it (no).
check_wasm() {
    local base="$1" want="$2" out hdrs body
    out=$(curl -s -m 5 --http1.1 -D - -H 'x-remove-me: 1' "${base}wasm-check" 2>/dev/null) || return 1
    hdrs=$(printf '%s' "$out" | sed '/^\r$/q' | tr -d '\r' | tr 'A-Z' 'a-z')
    body=$(printf '%s' "$out" | sed '1,/^\r$/d')
    if [[ "$want" != no ]]; then
        local name=header_filter
        [[ "$want" != component ]] || name=sdk_header_filter
        [[ "$body" == "$name" && "$hdrs" == *$'\nx-wasm-filter: '"$name"* \
            && "$hdrs" == *$'\nx-request-path: /wasm-check'* ]] && return 0
    else
        [[ -z "$body" && "$hdrs" != *x-wasm-filter* ]] && return 0
    fi
    log "unexpected answer from ${base}wasm-check (filter $want): $(printf '%q' "$out")"
    return 1
}

# bench_wasm_row ROW PROXY yes|no|component ROUND: one row of the filter-cost
# table, one worker, fresh process; results under the table key wasmROUND.
bench_wasm_row() {
    local row="$1" proxy="$2" filter="$3" r="$4" yaml="$PROXY_YAML" url="http://127.0.0.1:$EL_PORT/"
    local tb="wasm$r"
    log "=== $row (wasm suite, round $r of $WASM_ROUNDS)"
    if [[ "$filter" == yes ]]; then
        [[ -z "$WASM_NA" ]] || { NOTE[$tb,$row]="not available ($WASM_NA)"; return 0; }
        yaml="$WASM_YAML"
    elif [[ "$filter" == component ]]; then
        [[ -z "$COMPONENT_NA" ]] || { NOTE[$tb,$row]="not available ($COMPONENT_NA)"; return 0; }
        yaml="$COMPONENT_YAML"
    fi
    if ! start_target "$proxy" "$yaml" 1 "$row-r$r"; then
        start_failure
        NOTE[$tb,$row]=$START_NA
        log "$row: ${NOTE[$tb,$row]}"
        stop_target
        return 0
    fi
    if ! check_url "$url" h1 || ! check_wasm "$url" "$filter"; then
        NOTE[$tb,$row]="sanity request failed (filter expected: $filter)"
        log "$row: ${NOTE[$tb,$row]}"
    else
        CPU_PID=$CUR_PID run_wrk "$row" "$url" "$tb"
    fi
    stop_target
}

median() {   # numbers as arguments -> their median, or nothing
    (( $# )) || return 0
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# aggregate_rounds KEY ROWS ROUNDS NOTES: medians over the rounds (table keys
# KEY1, KEY2, ...) into the table key KEY; per-round losses of the filter rows,
# each against the row without the filter of the same round. Rounds that failed
# are listed in the array named NOTES.
declare -A LOSS_MED LOSS_LIST CPU_ADD_MED CPU_ADD_LIST
aggregate_rounds() {
    local key="$1" rows="$2" rounds="$3"
    local -n notes_out="$4"
    local row base r rps p50 p99 cpu errs failed note loss
    for row in $rows; do
        rps=(); p50=(); p99=(); cpu=(); errs=0; failed=0; note=
        for r in $(seq 1 "$rounds"); do
            if [[ -n "${RPS[$key$r,$row]:-}" ]]; then
                rps+=("${RPS[$key$r,$row]}"); p50+=("${P50[$key$r,$row]}"); p99+=("${P99[$key$r,$row]}")
                [[ -z "${CPU_US[$key$r,$row]:-}" ]] || cpu+=("${CPU_US[$key$r,$row]}")
                errs=$(( errs + ${ERRS[$key$r,$row]:-0} ))
            else
                failed=$((failed + 1)); note=${note:-${NOTE[$key$r,$row]:-}}
            fi
        done
        if ((${#rps[@]})); then
            RPS[$key,$row]=$(median "${rps[@]}")
            P50[$key,$row]=$(median "${p50[@]}")
            P99[$key,$row]=$(median "${p99[@]}")
            ERRS[$key,$row]=$errs
            ((${#cpu[@]} == 0)) || CPU_US[$key,$row]=$(median "${cpu[@]}")
            (( failed == 0 )) || notes_out+=("$row: $failed of $rounds rounds failed${note:+ ($note)}")
        else
            NOTE[$key,$row]=${note:-not run}
        fi
        base=${row%%+*}
        [[ "$row" != "$base" ]] || continue
        local losses=() shown=()
        for r in $(seq 1 "$rounds"); do
            if [[ -n "${RPS[$key$r,$row]:-}" && -n "${RPS[$key$r,$base]:-}" ]]; then
                loss=$(awk -v a="${RPS[$key$r,$base]}" -v b="${RPS[$key$r,$row]}" 'BEGIN { if (a + 0 > 0) printf "%.1f", (a - b) * 100 / a }')
                [[ -n "$loss" ]] || continue
                losses+=("$loss"); shown+=("$loss%")
            else
                shown+=("-")
            fi
        done
        if ((${#losses[@]})); then
            LOSS_MED[$row]=$(median "${losses[@]}")
            LOSS_LIST[$row]="${shown[*]}"
            LOSS_LIST[$row]=${LOSS_LIST[$row]// / \/ }
        fi
        # CPU per request the filter adds, per round against the same baseline run.
        local added=() ashown=()
        for r in $(seq 1 "$rounds"); do
            if [[ -n "${CPU_US[$key$r,$row]:-}" && -n "${CPU_US[$key$r,$base]:-}" ]]; then
                added+=("$(awk -v a="${CPU_US[$key$r,$base]}" -v b="${CPU_US[$key$r,$row]}" 'BEGIN { printf "%.2f", b - a }')")
                ashown+=("${added[-1]}")
            else
                ashown+=("-")
            fi
        done
        if ((${#added[@]})); then
            CPU_ADD_MED[$row]=$(median "${added[@]}")
            CPU_ADD_LIST[$row]="${ashown[*]}"
            CPU_ADD_LIST[$row]=${CPU_ADD_LIST[$row]// / \/ }
        fi
    done
}

aggregate_wasm() { aggregate_rounds wasm "$WASM_ROWS" "$WASM_ROUNDS" NOTES_WASM; }

# ---------------------------------------------------------------- filters suite
# An HS256 token for the key in proxy-filters.yaml, valid until 2100.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
FILTER_TOKEN=
make_token() {
    local secret=legate-bench-hs256-secret-key-0123456789 h p sig
    h=$(printf '{"alg":"HS256","typ":"JWT","kid":"k1"}' | b64url)
    p=$(printf '{"iss":"bench","aud":"bench","sub":"wrk","exp":4102444800}' | b64url)
    sig=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -mac HMAC -macopt "key:$secret" -binary | b64url)
    FILTER_TOKEN="$h.$p.$sig"
}

# check_filters BASE_URL yes|no: with the token a GET gets the upstream's 200;
# with the chain (yes), a GET without it gets 401 `Jwt is missing` (JWT at
# work) and a POST with it 403 `RBAC: access denied` (RBAC at work).
check_filters() {
    local base="$1" want="$2" auth="authorization: Bearer $FILTER_TOKEN" out
    out=$(curl -s -m 5 --http1.1 -H "$auth" -w ' %{http_code}' "$base" 2>/dev/null) || return 1
    [[ "$out" == "$BODY"$'\n'" 200" ]] || { log "GET with a token: $(printf '%q' "$out")"; return 1; }
    [[ "$want" == yes ]] || return 0
    out=$(curl -s -m 5 --http1.1 -w ' %{http_code}' "$base" 2>/dev/null) || return 1
    [[ "$out" == "Jwt is missing 401" ]] || { log "GET without a token: $(printf '%q' "$out")"; return 1; }
    out=$(curl -s -m 5 --http1.1 -X POST -H "$auth" -w ' %{http_code}' "$base" 2>/dev/null) || return 1
    [[ "$out" == "RBAC: access denied 403" ]] || { log "POST with a token: $(printf '%q' "$out")"; return 1; }
}

# bench_filters_row ROW PROXY yes|no ROUND: one row of the filter-chain table,
# one worker, fresh process, every request with the token.
bench_filters_row() {
    local row="$1" proxy="$2" chain="$3" r="$4" yaml="$PROXY_YAML" url="http://127.0.0.1:$EL_PORT/"
    local tb="filt$r"
    log "=== $row (filters suite, round $r of $FILTER_ROUNDS)"
    [[ "$chain" != yes ]] || yaml="$FILTERS_YAML"
    if ! start_target "$proxy" "$yaml" 1 "$row-r$r"; then
        start_failure
        NOTE[$tb,$row]=$START_NA
        log "$row: ${NOTE[$tb,$row]}"
        stop_target
        return 0
    fi
    if ! check_filters "$url" "$chain"; then
        NOTE[$tb,$row]="sanity requests failed (chain: $chain)"
        log "$row: ${NOTE[$tb,$row]}"
    else
        CPU_PID=$CUR_PID run_wrk "$row" "$url" "$tb" "authorization: Bearer $FILTER_TOKEN"
    fi
    stop_target
}

filters_target_line() {
    local med=${LOSS_MED[legate+filters]:-}
    if [[ -z "$med" ]]; then
        echo "Target (legate+filters loses at most 10% of legate's req/s): not measured."
        return
    fi
    awk -v m="$med" -v list="${LOSS_LIST[legate+filters]}" -v n="$FILTER_ROUNDS" 'BEGIN {
        printf "Target (legate+filters loses at most 10%% of legate'"'"'s req/s): **%s**, %.1f%% lost (median of %d round%s: %s).\n", (m <= 10 ? "met" : "NOT met"), m, n, (n == 1 ? "" : "s"), list }'
}

# rss_mib PID FIELD: a /proc/PID/status field (VmRSS, VmHWM) in MiB.
rss_mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null; }

# Live Wasm VMs, from the admin stat both proxies keep
# (wasm.envoy.wasm.runtime.<runtime>.active); empty if there is none.
wasm_vms() {
    curl -s -m 2 "http://127.0.0.1:$EL_ADMIN_PORT/stats" 2>/dev/null \
        | awk -F': ' '$1 ~ /^wasm\.envoy\.wasm\.runtime\.[A-Za-z0-9_]+\.active$/ { n += $2; found = 1 } END { if (found) print n }'
}

# measure_rss PROXY WORKERS yes|no|cached: VmRSS 1 s after the proxy is ready
# (before any request), then VmRSS and VmHWM right after a RSS_LOAD_SECS wrk
# load. "cached" (legate only) is the filter with its compiled code mapped in
# from a --wasm-cache-dir that a --mode validate run filled first.
measure_rss() {
    local proxy="$1" workers="$2" filter="$3" key="$1,$2,$3" yaml="$PROXY_YAML"
    local tag="rss-$1-w$2-$3" url="http://127.0.0.1:$EL_PORT/" out non2xx started
    if [[ "$filter" != no ]]; then
        [[ -z "$WASM_NA" ]] || { RSS_NOTE[$key]="not available ($WASM_NA)"; return 0; }
        yaml="$WASM_YAML"
    fi
    LEGATE_EXTRA=()
    if [[ "$filter" == cached ]]; then
        LEGATE_EXTRA=(--wasm-cache-dir "$work/wasm-cache")
        "$LEGATE_BIN" --mode validate -c "$yaml" "${LEGATE_EXTRA[@]}" >/dev/null 2>&1 || true
    fi
    log "=== memory: $proxy, $workers worker(s), filter: $filter"
    start_target "$proxy" "$yaml" "$workers" "$tag" && started=1 || started=
    LEGATE_EXTRA=()
    if [[ -z "$started" ]]; then
        start_failure
        RSS_NOTE[$key]=$START_NA
        log "$tag: ${RSS_NOTE[$key]}"
        stop_target
        return 0
    fi
    sleep 1
    RSS_IDLE[$key]=$(rss_mib "$CUR_PID" VmRSS)
    if ! check_url "$url" h1 || ! check_wasm "$url" "$filter"; then
        RSS_NOTE[$key]="sanity request failed (filter expected: $filter)"
    else
        out="$work/$tag/wrk.txt"
        if ! run_load $((RSS_LOAD_SECS + 30)) "$out" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${RSS_LOAD_SECS}s" "$url"; then
            RSS_NOTE[$key]="wrk failed: $(tail -1 "$out")"
        else
            non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
            (( ${non2xx:-0} == 0 )) || RSS_NOTE[$key]="$non2xx non-2xx responses during the load"
            RSS_LOAD[$key]=$(rss_mib "$CUR_PID" VmRSS)
            RSS_HWM[$key]=$(rss_mib "$CUR_PID" VmHWM)
            RSS_VMS[$key]=$(wasm_vms)
        fi
    fi
    if ! kill -0 "$CUR_PID" 2>/dev/null; then RSS_NOTE[$key]="process exited: $(log_tail)"; fi
    log "$tag: idle ${RSS_IDLE[$key]:-?} MiB, after load ${RSS_LOAD[$key]:-?} MiB, peak ${RSS_HWM[$key]:-?} MiB, Wasm VMs ${RSS_VMS[$key]:--}${RSS_NOTE[$key]:+ (${RSS_NOTE[$key]})}"
    stop_target
}

# ---------------------------------------------------------------- redis suite
# Results: RR[ROUND,TARGET,P,CMD] req/s, RLOST[ROUND,TARGET,P] requests that did
# not reach redis-server, RN[ROUND,TARGET,P] the -n used; RNOTE[ROUND,TARGET] why
# a row has no numbers, RNOTE[ROUND,TARGET,P] why one pipeline depth has none.
declare -A RR RLOST RN RNOTE REDIS_SKIP
NOTES_REDIS=()
REDIS_PID=
REDIS_NA=
REDIS_TARGET_PORT=

write_twemproxy_conf() {
    mkdir -p "$work/twemproxy"
    cat >"$work/twemproxy/nutcracker.yml" <<EOT
bench:
  listen: 127.0.0.1:$TWEM_PORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  servers:
  - 127.0.0.1:$REDIS_PORT:1
EOT
}

# start_redis_server: the one redis-server every row talks to, for the whole
# suite. Sets REDIS_NA on failure.
start_redis_server() {
    mkdir -p "$work/redis"
    start_bg "$work/redis/stderr.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save '' --appendonly no --dir "$work/redis" --logfile '' --daemonize no
    REDIS_PID=$BG_PID
    if ! wait_ready "$REDIS_PID" "$REDIS_PORT" \
            || [[ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING 2>&1)" != PONG ]]; then
        REDIS_NA="redis-server failed to start: $(tail -3 "$work/redis/stderr.log" 2>/dev/null | tr '\n|`' " /'" | cut -c1-300)"
        return 1
    fi
}

# redis_calls: "SET-calls GET-calls" that redis-server has executed so far.
redis_calls() {
    timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats 2>/dev/null | tr -d '\r' | awk -F'[:=,]' '
        $1 == "cmdstat_set" { s = $3 } $1 == "cmdstat_get" { g = $3 }
        END { printf "%d %d\n", s, g }'
}

# start_redis_target NAME TAG: start the row's proxy (nothing for direct); sets
# REDIS_TARGET_PORT, CUR_PID and CUR_LOG as start_target does, START_NA when it
# fails before starting anything.
start_redis_target() {
    local name="$1" tag="$2"
    CUR_PID=
    START_NA=
    CUR_LOG="$work/$tag/stderr.log"
    mkdir -p "$work/$tag"
    case "$name" in
        direct)
            REDIS_TARGET_PORT=$REDIS_PORT
            return 0 ;;
        twemproxy)
            write_twemproxy_conf
            REDIS_TARGET_PORT=$TWEM_PORT
            # Its own log (-o) is where it says why it did not start.
            CUR_LOG="$work/$tag/nutcracker.log"
            # Single-threaded by design: one event loop, as the other rows' one worker.
            start_bg "$work/$tag/stderr.log" nutcracker -c "$work/twemproxy/nutcracker.yml" -o "$CUR_LOG" \
                -s "$TWEM_STATS_PORT" -a 127.0.0.1 -p "$work/$tag/nutcracker.pid"
            CUR_PID=$BG_PID
            wait_ready "$CUR_PID" "$TWEM_PORT" ;;
        envoy|legate)
            REDIS_TARGET_PORT=$EL_REDIS_PORT
            "start_$name" "$REDIS_YAML" 1 "$EL_REDIS_PORT" ;;
    esac
}

# check_redis PORT: SET then GET of a fresh value through the target answer OK
# and the value, and the value is in our redis-server (the target forwards to it).
check_redis() {
    local port="$1" val out
    val="sanity-$$-$RANDOM-$(date +%s%N)"
    out=$(timeout 5 redis-cli -h 127.0.0.1 -p "$port" SET legate:bench:sanity "$val" 2>&1 | tr -d '\r')
    [[ "$out" == OK ]] || { REDIS_CHECK_WHY="SET answered $(printf '%q' "$out" | cut -c1-120)"; return 1; }
    out=$(timeout 5 redis-cli -h 127.0.0.1 -p "$port" GET legate:bench:sanity 2>&1 | tr -d '\r')
    [[ "$out" == "$val" ]] || { REDIS_CHECK_WHY="GET answered $(printf '%q' "$out" | cut -c1-120)"; return 1; }
    out=$(timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" GET legate:bench:sanity 2>&1 | tr -d '\r')
    [[ "$out" == "$val" ]] || { REDIS_CHECK_WHY="the value did not reach redis-server on $REDIS_PORT"; return 1; }
}

# csv_rps FILE CMD: the rps column of CMD's row in redis-benchmark --csv output.
csv_rps() {
    awk -F'","' -v cmd="$2" '$1 == "\"" cmd { print $2 + 0; exit }' "$1"
}

# run_redis_benchmark NAME P ROUND: a calibration (and warm-up) GET run, then
# the measured SET and GET runs with -n sized to last about REDIS_SECONDS each.
run_redis_benchmark() {
    local name="$1" p="$2" r="$3" port=$REDIS_TARGET_PORT n cal rps before after cmd
    local base="$work/redis-$name-P$p-r$r" key="$r,$name,$p"
    local rb=(redis-benchmark -h 127.0.0.1 -p "$port" -c "$REDIS_CLIENTS" -P "$p" --csv)
    if [[ -n "$REDIS_REQUESTS" ]]; then
        n=$REDIS_REQUESTS
    else
        cal=$((10000 * p))
        if ! run_load 120 "$base-cal.csv" "${rb[@]}" -t get -n "$cal"; then
            RNOTE[$key]="calibration run failed: $(tail -1 "$base-cal.csv" | cut -c1-200)"; return
        fi
        rps=$(csv_rps "$base-cal.csv" GET)
        [[ -n "$rps" ]] || { RNOTE[$key]="could not parse the calibration run"; return; }
        # Bounded either way: at least 10k requests, at most 20M.
        n=$(awk -v r="$rps" -v s="$REDIS_SECONDS" 'BEGIN { n = int(r * s); if (n < 10000) n = 10000; if (n > 20000000) n = 20000000; print n }')
    fi
    RN[$key]=$n
    log "$name -P $p: ${rb[*]} -t get,set -n $n"
    before=$(redis_calls)
    if ! run_load $((120 + 20 * REDIS_SECONDS)) "$base.csv" "${rb[@]}" -t get,set -n "$n"; then
        RNOTE[$key]="redis-benchmark failed or timed out: $(tail -1 "$base.csv" | cut -c1-200)"; return
    fi
    after=$(redis_calls)
    for cmd in SET GET; do
        rps=$(csv_rps "$base.csv" "$cmd")
        [[ -n "$rps" ]] || { RNOTE[$key]="could not parse redis-benchmark output"; return; }
        RR[$key,$cmd]=$rps
    done
    # Every request must have been forwarded: a proxy answering errors itself
    # would look fast.
    RLOST[$key]=$(awk -v b="$before" -v a="$after" -v n="$n" 'BEGIN {
        split(b, x, " "); split(a, y, " "); s = n - (y[1] - x[1]); g = n - (y[2] - x[2])
        print (s > 0 ? s : 0) + (g > 0 ? g : 0) }')
    log "$name -P $p: SET ${RR[$key,SET]} req/s, GET ${RR[$key,GET]} req/s, not forwarded ${RLOST[$key]}"
}

# bench_redis_row NAME ROUND: one row of one round, in a fresh process.
bench_redis_row() {
    local name="$1" r="$2" p
    log "=== $name (redis suite, round $r of $REDIS_ROUNDS)"
    if [[ -n "$REDIS_NA" ]]; then RNOTE[$r,$name]="n/a ($REDIS_NA)"; return 0; fi
    # The same binary refuses the same file every round: say so once.
    if [[ -n "${REDIS_SKIP[$name]:-}" ]]; then RNOTE[$r,$name]=${REDIS_SKIP[$name]}; return 0; fi
    if ! start_redis_target "$name" "redis-$name-r$r"; then
        start_failure
        start_na proxy-redis.yaml
        RNOTE[$r,$name]=$START_NOTE
        if [[ -n "$REFUSED_WHY" ]]; then
            REDIS_SKIP[$name]=$START_NOTE
            NOTES_REDIS+=("$name refused bench/proxy-redis.yaml: $REFUSED_WHY")
        fi
        log "$name: ${RNOTE[$r,$name]}"
        stop_target
        return 0
    fi
    REDIS_CHECK_WHY=
    if ! check_redis "$REDIS_TARGET_PORT"; then
        RNOTE[$r,$name]="n/a (wrong replies: $REDIS_CHECK_WHY)"
        log "$name: ${RNOTE[$r,$name]}"
        stop_target
        return 0
    fi
    for p in $REDIS_PIPELINES; do
        if [[ -n "$CUR_PID" ]] && ! kill -0 "$CUR_PID" 2>/dev/null; then
            RNOTE[$r,$name,$p]="process exited: $(log_tail)"; continue
        fi
        run_redis_benchmark "$name" "$p" "$r"
    done
    stop_target
}

# aggregate_redis: medians over the rounds into RR[med,...]; per round, the GET
# share of direct (RSHARE*) and legate's GET against twemproxy's (RVS*).
declare -A RSHARE RSHARE_LIST RVS RVS_LIST
aggregate_redis() {
    local name p cmd r vals v
    for name in direct twemproxy envoy legate; do
        for p in $REDIS_PIPELINES; do
            for cmd in SET GET; do
                vals=()
                for r in $(seq 1 "$REDIS_ROUNDS"); do
                    [[ -z "${RR[$r,$name,$p,$cmd]:-}" ]] || vals+=("${RR[$r,$name,$p,$cmd]}")
                done
                if ((${#vals[@]})); then RR[med,$name,$p,$cmd]=$(median "${vals[@]}"); fi
            done
            v=0
            for r in $(seq 1 "$REDIS_ROUNDS"); do v=$(( v + ${RLOST[$r,$name,$p]:-0} )); done
            RLOST[sum,$name,$p]=$v
            ratio_rounds "$name" direct "$p" RSHARE RSHARE_LIST
            ratio_rounds "$name" twemproxy "$p" RVS RVS_LIST
        done
    done
}

# ratio_rounds A B P MED LIST: per round, A's GET req/s over B's; the median
# into MED[A,P] and the list into LIST[A,P].
ratio_rounds() {
    local a="$1" b="$2" p="$3" r x vals=() shown=()
    local -n med_out="$4" list_out="$5"
    [[ "$a" != "$b" ]] || return 0
    for r in $(seq 1 "$REDIS_ROUNDS"); do
        if [[ -n "${RR[$r,$a,$p,GET]:-}" && -n "${RR[$r,$b,$p,GET]:-}" ]]; then
            x=$(awk -v a="${RR[$r,$a,$p,GET]}" -v b="${RR[$r,$b,$p,GET]}" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b }')
            [[ -n "$x" ]] || continue
            vals+=("$x"); shown+=("$x")
        else
            shown+=("-")
        fi
    done
    ((${#vals[@]})) || return 0
    med_out[$a,$p]=$(median "${vals[@]}")
    list_out[$a,$p]="${shown[*]}"
    list_out[$a,$p]=${list_out[$a,$p]// / \/ }
}

write_redis_table() {
    local name p cmd cells note r
    echo "| target | GET -P 1 (req/s) | SET -P 1 (req/s) | GET -P 16 (req/s) | SET -P 16 (req/s) | GET share of direct, -P 1 | GET share of direct, -P 16 | requests not forwarded |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for name in direct twemproxy envoy legate; do
        has_target "$name" || continue
        if [[ -z "${RR[med,$name,1,GET]:-}${RR[med,$name,16,GET]:-}" ]]; then
            note=
            for r in $(seq 1 "$REDIS_ROUNDS"); do
                note=${note:-${RNOTE[$r,$name]:-${RNOTE[$r,$name,1]:-${RNOTE[$r,$name,16]:-}}}}
            done
            echo "| $name | ${note:-not run} | | | | | | |"
            continue
        fi
        cells=()
        for p in $REDIS_PIPELINES; do
            for cmd in GET SET; do
                if [[ -n "${RR[med,$name,$p,$cmd]:-}" ]]; then cells+=("$(fmt_rps "${RR[med,$name,$p,$cmd]}")"); else cells+=("-"); fi
            done
        done
        for p in $REDIS_PIPELINES; do
            if [[ "$name" == direct ]]; then
                cells+=("(baseline)")
            elif [[ -n "${RSHARE[$name,$p]:-}" ]]; then
                cells+=("$(awk -v m="${RSHARE[$name,$p]}" 'BEGIN { printf "**%.2f**", m }') (${RSHARE_LIST[$name,$p]})")
            else
                cells+=("-")
            fi
        done
        cells+=("$(( ${RLOST[sum,$name,1]:-0} + ${RLOST[sum,$name,16]:-0} ))")
        printf '| %s |' "$name"
        printf ' %s |' "${cells[@]}"
        echo
    done
}

# The -n each row ran with, per pipeline depth (a range over the rounds).
redis_n_line() {
    local name p r vals parts=() rows=()
    for name in direct twemproxy envoy legate; do
        has_target "$name" || continue
        parts=()
        for p in $REDIS_PIPELINES; do
            vals=()
            for r in $(seq 1 "$REDIS_ROUNDS"); do [[ -z "${RN[$r,$name,$p]:-}" ]] || vals+=("${RN[$r,$name,$p]}"); done
            ((${#vals[@]})) || continue
            parts+=("$(printf '%s\n' "${vals[@]}" | sort -n | awk -v p="$p" 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s%s at -P %s", lo, (hi != lo ? "-" hi : ""), p }')")
        done
        ((${#parts[@]})) || continue
        rows+=("$name $(printf '%s, ' "${parts[@]}" | sed 's/, $//')")
    done
    ((${#rows[@]})) || return 0
    echo "redis-benchmark -n per test: $(printf '%s; ' "${rows[@]}" | sed 's/; $//')."
}

# The two targets: legate's GET at -P 1 is at least 0.9 of direct's, and at
# -P 16 at least 2x twemproxy's (medians of the per-round ratios).
redis_target_lines() {
    local m why r
    for r in $(seq 1 "$REDIS_ROUNDS"); do why=${why:-${RNOTE[$r,legate]:-}}; done
    m=${RSHARE[legate,1]:-}
    if [[ -z "$m" ]]; then
        echo "- Target (legate's GET at -P 1 is at least 0.9 of direct's): not measured${why:+ (legate: $why)}."
    else
        awk -v m="$m" -v l="${RSHARE_LIST[legate,1]}" -v n="$REDIS_ROUNDS" 'BEGIN {
            printf "- Target (legate'"'"'s GET at -P 1 is at least 0.9 of direct'"'"'s): **%s**, %.2f (median of %d round%s: %s).\n", (m >= 0.9 ? "met" : "NOT met"), m, n, (n == 1 ? "" : "s"), l }'
    fi
    m=${RVS[legate,16]:-}
    if [[ -z "$m" ]]; then
        echo "- Target (legate's GET at -P 16 is at least 2x twemproxy's): not measured${why:+ (legate: $why)}."
    else
        awk -v m="$m" -v l="${RVS_LIST[legate,16]}" -v n="$REDIS_ROUNDS" 'BEGIN {
            printf "- Target (legate'"'"'s GET at -P 16 is at least 2x twemproxy'"'"'s): **%s**, %.2fx (median of %d round%s: %s).\n", (m >= 2 ? "met" : "NOT met"), m, n, (n == 1 ? "" : "s"), l }'
    fi
}

# Rounds in which a row, or one of its pipeline depths, got no numbers.
redis_round_notes() {
    local name r p
    for name in direct twemproxy envoy legate; do
        has_target "$name" || continue
        for r in $(seq 1 "$REDIS_ROUNDS"); do
            [[ -z "${REDIS_SKIP[$name]:-}" ]] || continue
            if [[ -n "${RNOTE[$r,$name]:-}" ]]; then NOTES_REDIS+=("$name, round $r: ${RNOTE[$r,$name]}"); continue; fi
            for p in $REDIS_PIPELINES; do
                [[ -z "${RNOTE[$r,$name,$p]:-}" ]] || NOTES_REDIS+=("$name, round $r, -P $p: ${RNOTE[$r,$name,$p]}")
            done
        done
    done
}

# ---------------------------------------------------------------- mysql suite
# Rows (MYSQL_ROWS): direct, haproxy (mode tcp), envoy (tcp_proxy on
# bench/proxy-mysql-tcp.yaml), legate-tcp (legate on the same file) and
# legate-mysql (legate on BENCH_MYSQL_YAML, bench/proxy-mysql.yaml: mysql_proxy
# then tcp_proxy). Results: MQ[ROUND,ROW] queries/s, MT[ROUND,ROW]
# transactions/s, MP95[ROUND,ROW] p95 latency (ms), MERR[ROUND,ROW] ignored
# errors plus reconnects; MNOTE[ROUND,ROW] why a row has no numbers;
# MSTATS[ROUND] legate mysql_proxy's mysql.mysql.* stats after its run.
declare -A MQ MT MP95 MERR MNOTE MSTATS MYSQL_SKIP
NOTES_MYSQL=()
MYSQL_PID=
MYSQL_NA=
MYSQL_TARGET_PORT=
# A throwaway account on a throwaway server that listens on loopback only.
MYSQL_USER=sbtest
MYSQL_PASSWORD=sbtest-bench-pw

# mysql_label ROW: the row's name in the report.
mysql_label() {
    case "$1" in
        legate-tcp) echo "legate tcp_proxy" ;;
        legate-mysql) echo "legate mysql_proxy" ;;
        *) echo "$1" ;;
    esac
}

# mysql_row_target ROW: the BENCH_TARGETS entry that runs the row.
mysql_row_target() { echo "${1%%-*}"; }

# mysql_row_yaml ROW: the bootstrap of an Envoy or legate row, else nothing.
mysql_row_yaml() {
    case "$1" in
        envoy|legate-tcp) echo "$MYSQL_TCP_YAML" ;;
        legate-mysql) echo "$MYSQL_YAML" ;;
    esac
}

# HAProxy in front of the mariadbd: plain TCP relay, one thread.
write_haproxy_mysql_conf() {
    mkdir -p "$work/haproxy-mysql"
    cat >"$work/haproxy-mysql/haproxy.cfg" <<EOT
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend fe_mysql
    bind 127.0.0.1:$HAPROXY_MYSQL_PORT
    default_backend be_mysql
backend be_mysql
    server db 127.0.0.1:$MYSQL_PORT
EOT
}

# mysql_tcp_yaml_check: the filter's-own-cost column compares legate on the two
# files, so the tcp file must be the mysql_proxy file without the filter (as
# checked in; comments aside). Says so under the table when it is not.
mysql_tcp_yaml_check() {
    has_target legate || return 0
    if ! diff -q <(grep -v '^ *#' "$MYSQL_YAML" | sed '/- name: envoy.filters.network.mysql_proxy$/,/stat_prefix: mysql$/d') \
            <(grep -v '^ *#' "$MYSQL_TCP_YAML") >/dev/null; then
        NOTES_MYSQL+=("[bench/proxy-mysql-tcp.yaml](proxy-mysql-tcp.yaml) is not $MYSQL_YAML_REF without the mysql_proxy filter, so legate mysql_proxy's share of legate tcp_proxy measures more than the filter.")
    fi
}

# sysbench's connection options, for PORT.
sysbench_conn() {
    echo "--db-driver=mysql --mysql-host=127.0.0.1 --mysql-port=$1 --mysql-user=$MYSQL_USER" \
         "--mysql-password=$MYSQL_PASSWORD --mysql-db=sbtest --mysql-ssl=off" \
         "--tables=$MYSQL_TABLES --table-size=$MYSQL_TABLE_SIZE"
}

# mysql_client PORT SQL: run SQL over TCP as the bench user; prints the result.
mysql_client() {
    timeout 10 mariadb --no-defaults --skip-ssl --protocol=TCP -h 127.0.0.1 -P "$1" \
        -u "$MYSQL_USER" -p"$MYSQL_PASSWORD" -N -B sbtest -e "$2" 2>&1
}

# start_mysql_server: a throwaway mariadbd in the scratch dir, the sbtest
# database and user, and sysbench's tables (prepare, then prewarm into the
# buffer pool). Sets MYSQL_NA on failure.
start_mysql_server() {
    local d="$work/mysql" out
    mkdir -p "$d/tmp"
    log "mysql suite: mariadb-install-db into $d/data"
    # root@localhost without a password (normal auth) so that any OS user can set
    # up the server through its socket; it listens on 127.0.0.1 for this run only.
    if ! mariadb-install-db --no-defaults --datadir="$d/data" --user="$(id -un)" \
            --auth-root-authentication-method=normal --skip-test-db >"$d/install.log" 2>&1; then
        MYSQL_NA="mariadb-install-db failed: $(tail -3 "$d/install.log" | tr '\n|`' " /'" | cut -c1-300)"
        return 1
    fi
    start_bg "$d/stderr.log" mariadbd --no-defaults --datadir="$d/data" --user="$(id -un)" \
        --port="$MYSQL_PORT" --bind-address=127.0.0.1 --socket="$d/sock" --pid-file="$d/mariadbd.pid" \
        --tmpdir="$d/tmp" --log-error="$d/error.log" --skip-name-resolve --skip-log-bin \
        --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=0 --max-connections=500
    MYSQL_PID=$BG_PID
    if ! wait_ready "$MYSQL_PID" "$MYSQL_PORT"; then
        MYSQL_NA="mariadbd failed to start: $(tail -3 "$d/error.log" 2>/dev/null | tr '\n|`' " /'" | cut -c1-300)"
        return 1
    fi
    if ! out=$(timeout 30 mariadb --no-defaults -S "$d/sock" -u root 2>&1 <<SQL
CREATE DATABASE sbtest;
CREATE USER '$MYSQL_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
GRANT ALL ON sbtest.* TO '$MYSQL_USER'@'127.0.0.1';
SQL
    ); then
        MYSQL_NA="creating the sbtest database and user failed: $(echo "$out" | tail -2 | tr '\n|`' " /'" | cut -c1-300)"
        return 1
    fi
    log "mysql suite: sysbench oltp_read_only prepare ($MYSQL_TABLES tables x $MYSQL_TABLE_SIZE rows), prewarm"
    # shellcheck disable=SC2046
    if ! run_load 600 "$d/prepare.log" sysbench oltp_read_only $(sysbench_conn "$MYSQL_PORT") prepare \
            || ! run_load 300 "$d/prewarm.log" sysbench oltp_read_only $(sysbench_conn "$MYSQL_PORT") prewarm; then
        MYSQL_NA="sysbench prepare failed: $(cat "$d/prepare.log" "$d/prewarm.log" 2>/dev/null | grep -i -m2 -E 'fatal|error' | tr '\n|`' " /'" | cut -c1-300)"
        return 1
    fi
}

# start_mysql_target ROW TAG: start the row's proxy (nothing for direct); sets
# MYSQL_TARGET_PORT, CUR_PID, CUR_LOG and START_NA as start_redis_target does.
start_mysql_target() {
    local name="$1" tag="$2"
    CUR_PID=
    START_NA=
    CUR_LOG="$work/$tag/stderr.log"
    mkdir -p "$work/$tag"
    case "$name" in
        direct)
            MYSQL_TARGET_PORT=$MYSQL_PORT
            return 0 ;;
        haproxy)
            command -v haproxy >/dev/null || { START_NA="not available (no haproxy in PATH)"; return 1; }
            write_haproxy_mysql_conf
            MYSQL_TARGET_PORT=$HAPROXY_MYSQL_PORT
            start_bg "$CUR_LOG" haproxy -db -f "$work/haproxy-mysql/haproxy.cfg"
            CUR_PID=$BG_PID
            wait_ready "$CUR_PID" "$HAPROXY_MYSQL_PORT" ;;
        envoy)
            MYSQL_TARGET_PORT=$EL_MYSQL_PORT
            start_envoy "$MYSQL_TCP_YAML" 1 "$EL_MYSQL_PORT" ;;
        legate-tcp|legate-mysql)
            MYSQL_TARGET_PORT=$EL_MYSQL_PORT
            start_legate "$(mysql_row_yaml "$name")" 1 "$EL_MYSQL_PORT" ;;
    esac
}

# run_sysbench NAME ROUND: a warm-up run, then the measured one.
run_sysbench() {
    local name="$1" r="$2" port=$MYSQL_TARGET_PORT key="$2,$1"
    local base="$work/sysbench-$name-r$r" sb v
    # shellcheck disable=SC2207
    sb=(sysbench oltp_read_only $(sysbench_conn "$port") --db-ps-mode="$MYSQL_PS_MODE"
        --threads="$MYSQL_THREADS" --report-interval=0 --percentile=95 --histogram=off)
    if (( MYSQL_WARMUP > 0 )); then
        run_load $((MYSQL_WARMUP + 60)) "$base-warmup.log" "${sb[@]}" --time="$MYSQL_WARMUP" run || true
    fi
    log "$name: ${sb[*]/--mysql-password=*/--mysql-password=...} --time=$MYSQL_SECONDS run"
    if ! run_load $((MYSQL_SECONDS + 60)) "$base.log" "${sb[@]}" --time="$MYSQL_SECONDS" run; then
        MNOTE[$key]="sysbench failed: $(grep -m1 -E 'FATAL|ALERT|error' "$base.log" | tr '|`' "/'" | cut -c1-200)"
        return
    fi
    # "queries:  19744  (1974.40 per sec.)", "95th percentile:  8.43"
    MQ[$key]=$(awk '$1 == "queries:" { gsub(/\(/, "", $3); print $3 }' "$base.log")
    MT[$key]=$(awk '$1 == "transactions:" { gsub(/\(/, "", $3); print $3 }' "$base.log")
    MP95[$key]=$(awk '$1 == "95th" && $2 == "percentile:" { print $3 }' "$base.log")
    v=$(awk '$1 == "ignored" && $2 == "errors:" { e = $3 } $1 == "reconnects:" { c = $2 } END { print e + c }' "$base.log")
    MERR[$key]=${v:-0}
    if [[ -z "${MQ[$key]}" || -z "${MP95[$key]}" ]]; then
        unset "MQ[$key]"
        MNOTE[$key]="could not parse sysbench output"; return
    fi
    log "$name: ${MQ[$key]} queries/s, ${MT[$key]} transactions/s, p95 ${MP95[$key]} ms, errors ${MERR[$key]}"
}

# mysql_filter_stats: legate's mysql.mysql.* counters (the filter's), or nothing.
mysql_filter_stats() {
    curl -s -m 5 "http://127.0.0.1:$EL_ADMIN_PORT/stats" 2>/dev/null | awk -F': ' '
        $1 ~ /^mysql\.mysql\.(sessions|login_attempts|login_failures|decoder_errors|protocol_errors|queries_parsed|queries_parse_error)$/ {
            sub(/^mysql\.mysql\./, "", $1); printf "%s%s=%s", (n++ ? ", " : ""), $1, $2 }'
}

# bench_mysql_row ROW ROUND: one row of one round, a proxy in a fresh process.
bench_mysql_row() {
    local name="$1" r="$2" out yaml yaml_base label
    label=$(mysql_label "$name")
    yaml=$(mysql_row_yaml "$name")
    yaml_base=$(basename "${yaml:-none}")
    log "=== $label (mysql suite, round $r of $MYSQL_ROUNDS)"
    if [[ -n "$MYSQL_NA" ]]; then MNOTE[$r,$name]="n/a ($MYSQL_NA)"; return 0; fi
    if [[ -n "${MYSQL_SKIP[$name]:-}" ]]; then MNOTE[$r,$name]=${MYSQL_SKIP[$name]}; return 0; fi
    if ! start_mysql_target "$name" "mysql-$name-r$r"; then
        start_failure
        # e.g. a binary without the mysql_proxy filter refuses its config.
        start_na "${yaml:+$yaml_base}"
        MNOTE[$r,$name]=$START_NOTE
        if [[ -n "$REFUSED_WHY" ]]; then
            MYSQL_SKIP[$name]=$START_NOTE
            NOTES_MYSQL+=("$label refused $yaml_base: $REFUSED_WHY")
        fi
        log "$label: ${MNOTE[$r,$name]}"
        stop_target
        return 0
    fi
    # Sanity: the row answers a query with the server's data.
    out=$(mysql_client "$MYSQL_TARGET_PORT" "SELECT COUNT(*) FROM sbtest1")
    if [[ "$out" != "$MYSQL_TABLE_SIZE" ]]; then
        MNOTE[$r,$name]="n/a (wrong answer to SELECT COUNT(*): $(printf '%q' "$out" | cut -c1-120))"
        log "$label: ${MNOTE[$r,$name]}"
        stop_target
        return 0
    fi
    run_sysbench "$name" "$r"
    if [[ -n "$CUR_PID" ]] && ! kill -0 "$CUR_PID" 2>/dev/null; then
        MNOTE[$r,$name]="process exited: $(log_tail)"; unset "MQ[$r,$name]"
    fi
    if [[ "$name" == legate-mysql ]]; then
        MSTATS[$r]=$(mysql_filter_stats)
        log "legate mysql_proxy stats: ${MSTATS[$r]:-none}"
    fi
    stop_target
}

# mysql_ratio_rounds A B: per round, row A's queries/s over row B's; sets
# RATIO_MED to their median and RATIO_LIST to the rounds ("-" where either
# failed), both empty when no round has both.
RATIO_MED=
RATIO_LIST=
mysql_ratio_rounds() {
    local a="$1" b="$2" r x vals=() shown=()
    RATIO_MED=
    RATIO_LIST=
    for r in $(seq 1 "$MYSQL_ROUNDS"); do
        x=
        if [[ -n "${MQ[$r,$a]:-}" && -n "${MQ[$r,$b]:-}" ]]; then
            x=$(awk -v a="${MQ[$r,$a]}" -v b="${MQ[$r,$b]}" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b }')
        fi
        if [[ -n "$x" ]]; then vals+=("$x"); shown+=("$x"); else shown+=("-"); fi
    done
    ((${#vals[@]})) || return 0
    RATIO_MED=$(median "${vals[@]}")
    RATIO_LIST="${shown[*]}"
    RATIO_LIST=${RATIO_LIST// / \/ }
}

# aggregate_mysql: medians over the rounds into M*[med,ROW]; every proxy row's
# queries/s as a share of direct's (MSHARE), and legate mysql_proxy's as a share
# of legate tcp_proxy's (MFILT), per round and their medians.
declare -A MSHARE MSHARE_LIST MFILT MFILT_LIST
aggregate_mysql() {
    local name r x vals first label
    for name in $MYSQL_ROWS; do
        vals=(); for r in $(seq 1 "$MYSQL_ROUNDS"); do [[ -z "${MQ[$r,$name]:-}" ]] || vals+=("${MQ[$r,$name]}"); done
        ((${#vals[@]})) || continue
        MQ[med,$name]=$(median "${vals[@]}")
        vals=(); for r in $(seq 1 "$MYSQL_ROUNDS"); do [[ -z "${MQ[$r,$name]:-}" ]] || vals+=("${MT[$r,$name]}"); done
        MT[med,$name]=$(median "${vals[@]}")
        vals=(); for r in $(seq 1 "$MYSQL_ROUNDS"); do [[ -z "${MQ[$r,$name]:-}" ]] || vals+=("${MP95[$r,$name]}"); done
        MP95[med,$name]=$(median "${vals[@]}")
        x=0; for r in $(seq 1 "$MYSQL_ROUNDS"); do x=$(( x + ${MERR[$r,$name]:-0} )); done
        MERR[sum,$name]=$x
    done
    # Rounds without numbers. A row with none at all shows its first reason in
    # the table; the notes list the rounds that failed otherwise.
    for name in $MYSQL_ROWS; do
        has_target "$(mysql_row_target "$name")" || continue
        [[ -z "${MYSQL_SKIP[$name]:-}" ]] || continue
        label=$(mysql_label "$name")
        first=
        for r in $(seq 1 "$MYSQL_ROUNDS"); do
            [[ -n "${MNOTE[$r,$name]:-}" ]] || continue
            if [[ -z "${MQ[med,$name]:-}" && -z "$first" ]]; then first=${MNOTE[$r,$name]}; continue; fi
            [[ "${MNOTE[$r,$name]}" == "$first" ]] || NOTES_MYSQL+=("$label, round $r: ${MNOTE[$r,$name]}")
        done
    done
    for r in $(seq 1 "$MYSQL_ROUNDS"); do
        [[ -n "${MQ[$r,legate-mysql]:-}" ]] || continue
        # The filter's own counters: sessions, queries parsed, decoder errors...
        if [[ -n "${MSTATS[$r]:-}" ]]; then
            NOTES_MYSQL+=("legate mysql_proxy's filter stats after round $r: ${MSTATS[$r]}.")
        else
            NOTES_MYSQL+=("legate mysql_proxy, round $r: no \`mysql.mysql.*\` stats on the admin \`/stats\` (a config without the mysql_proxy filter?).")
        fi
    done
    for name in $MYSQL_ROWS; do
        [[ "$name" != direct ]] || continue
        mysql_ratio_rounds "$name" direct
        [[ -z "$RATIO_MED" ]] || { MSHARE[$name]=$RATIO_MED; MSHARE_LIST[$name]=$RATIO_LIST; }
    done
    mysql_ratio_rounds legate-mysql legate-tcp
    [[ -z "$RATIO_MED" ]] || { MFILT[legate-mysql]=$RATIO_MED; MFILT_LIST[legate-mysql]=$RATIO_LIST; }
}

# fmt_share MED LIST: "**0.93** (0.92 / 0.93 / 0.95)", or "-" without a median.
fmt_share() {
    [[ -n "$1" ]] || { echo "-"; return; }
    awk -v m="$1" -v l="$2" 'BEGIN { printf "**%.2f** (%s)", m, l }'
}

write_mysql_table() {
    local name note r per label filt
    echo "| target | queries/s | transactions/s | p95 latency (ms) | queries/s per round | queries/s share of direct | share of legate tcp_proxy (the filter's own cost) | errors |"
    echo "|---|---:|---:|---:|---|---:|---:|---:|"
    for name in $MYSQL_ROWS; do
        has_target "$(mysql_row_target "$name")" || continue
        label=$(mysql_label "$name")
        if [[ -z "${MQ[med,$name]:-}" ]]; then
            note=
            for r in $(seq 1 "$MYSQL_ROUNDS"); do note=${note:-${MNOTE[$r,$name]:-}}; done
            echo "| $label | ${note:-not run} | | | | | | |"
            continue
        fi
        per=()
        for r in $(seq 1 "$MYSQL_ROUNDS"); do
            if [[ -n "${MQ[$r,$name]:-}" ]]; then per+=("$(fmt_rps "${MQ[$r,$name]}")"); else per+=("-"); fi
        done
        per=("${per[*]}")
        case "$name" in
            legate-tcp) filt="(baseline)" ;;
            legate-mysql) filt=$(fmt_share "${MFILT[$name]:-}" "${MFILT_LIST[$name]:-}") ;;
            *) filt= ;;
        esac
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" \
            "$(fmt_rps "${MQ[med,$name]}")" "$(fmt_rps "${MT[med,$name]}")" "$(awk -v a="${MP95[med,$name]}" 'BEGIN { printf "%.2f", a }')" \
            "${per[0]// / \/ }" \
            "$(if [[ "$name" == direct ]]; then echo "(baseline)"; else fmt_share "${MSHARE[$name]:-}" "${MSHARE_LIST[$name]:-}"; fi)" \
            "$filt" "${MERR[sum,$name]:-0}"
    done
}

# The target (legate mysql_proxy's queries/s is at least 0.9 of direct's), the
# filter's own cost, and the relays without a MySQL filter for scale.
mysql_target_lines() {
    local why r m name parts=() best='' best_label=''
    for r in $(seq 1 "$MYSQL_ROUNDS"); do why=${why:-${MNOTE[$r,legate-mysql]:-}}; done
    m=${MSHARE[legate-mysql]:-}
    if [[ -z "$m" ]]; then
        echo "- Target (legate mysql_proxy's queries/s is at least 0.9 of direct's): not measured${why:+ (legate mysql_proxy: $why)}."
    else
        awk -v m="$m" -v l="${MSHARE_LIST[legate-mysql]}" -v n="$MYSQL_ROUNDS" 'BEGIN {
            printf "- Target (legate mysql_proxy'"'"'s queries/s is at least 0.9 of direct'"'"'s): **%s**, %.2f (median of %d round%s: %s).\n", (m >= 0.9 ? "met" : "NOT met"), m, n, (n == 1 ? "" : "s"), l }'
    fi
    m=${MFILT[legate-mysql]:-}
    if [[ -n "$m" ]]; then
        awk -v m="$m" -v l="${MFILT_LIST[legate-mysql]}" -v n="$MYSQL_ROUNDS" 'BEGIN {
            printf "- The filter'"'"'s own cost: legate mysql_proxy does %.2f of legate tcp_proxy'"'"'s queries/s (median of %d round%s, each against the tcp_proxy row run just before: %s), ", m, n, (n == 1 ? "" : "s"), l
            if (m < 1) printf "i.e. %.0f%% of the queries/s lost to the mysql_proxy filter.\n", (1 - m) * 100
            else printf "i.e. no loss measurable against the relay alone.\n" }'
    fi
    for name in haproxy envoy legate-tcp; do
        m=${MSHARE[$name]:-}
        [[ -n "$m" ]] || continue
        parts+=("$(mysql_label "$name") $(awk -v m="$m" 'BEGIN { printf "%.2f", m }')")
        if [[ -z "$best" ]] || awk -v a="$m" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$m; best_label=$(mysql_label "$name"); fi
    done
    if ((${#parts[@]})); then
        printf -- '- The relays without a MySQL filter, for scale (median share of direct): %s.' "$(printf '%s, ' "${parts[@]}" | sed 's/, $//')"
        awk -v b="$best" -v l="$best_label" 'BEGIN {
            if (b < 0.9) printf " None reaches 0.9 of direct (best: %s, %.2f): here, relaying the bytes with no MySQL filter at all already costs more than the target allows.\n", l, b
            else printf "\n" }'
    fi
}

# ---------------------------------------------------------------- report
fmt_ratio() {   # a / b -> "1.23x", or "-" when either is missing
    [[ -n "$1" && -n "$2" ]] || { echo "-"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2fx", a / b }'
}
fmt_rps() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }
fmt_ms()  { awk -v a="$1" 'BEGIN { printf "%.3f", a }'; }

write_table() {
    local proto="$1" name rps p50 p99 note
    echo "| target | req/s | p50 (ms) | p99 (ms) | req/s vs nginx | p99 vs nginx | req/s vs HAProxy | p99 vs HAProxy | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in direct nginx haproxy envoy legate; do
        rps=${RPS[$proto,$name]:-}
        if [[ -z "$rps" ]]; then
            note=${NOTE[all,$name]:-${NOTE[$proto,$name]:-not run}}
            echo "| $name | $note | | | | | | | |"
            continue
        fi
        p50=${P50[$proto,$name]}; p99=${P99[$proto,$name]}
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
            "$(fmt_rps "$rps")" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" \
            "$(fmt_ratio "$rps" "${RPS[$proto,nginx]:-}")" "$(fmt_ratio "$p99" "${P99[$proto,nginx]:-}")" \
            "$(fmt_ratio "$rps" "${RPS[$proto,haproxy]:-}")" "$(fmt_ratio "$p99" "${P99[$proto,haproxy]:-}")" \
            "${ERRS[$proto,$name]:-0}"
    done
}

# write_rounds_table KEY ROWS ROUNDS: the table of a suite run in rounds.
write_rounds_table() {
    local key="$1" rows="$2" rounds="$3"
    local row base rps p50 p99 r med per perstr
    echo "| row | req/s | p50 (ms) | p99 (ms) | req/s lost vs same proxy without the filter | per round | p99 vs same proxy without the filter | proxy CPU per request (µs) | CPU added by the filter (µs), per round | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in $rows; do
        has_target "${row%%+*}" || continue
        rps=${RPS[$key,$row]:-}
        if [[ -z "$rps" ]]; then
            echo "| $row | ${NOTE[$key,$row]:-not run} | | | | | | | | |"
            continue
        fi
        p50=${P50[$key,$row]}; p99=${P99[$key,$row]}
        base=${row%%+*}
        per=()
        for r in $(seq 1 "$rounds"); do
            if [[ -n "${RPS[$key$r,$row]:-}" ]]; then per+=("$(fmt_rps "${RPS[$key$r,$row]}")"); else per+=("-"); fi
        done
        if [[ "$row" == "$base" ]]; then
            perstr="${per[*]}"
            printf '| %s | %s | %s | %s | (baseline) | req/s: %s | (baseline) | %s | (baseline) | %s |\n' "$row" \
                "$(fmt_rps "$rps")" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" "${perstr// / \/ }" "${CPU_US[$key,$row]:--}" "${ERRS[$key,$row]:-0}"
        else
            med=${LOSS_MED[$row]:-}
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$row" \
                "$(fmt_rps "$rps")" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" \
                "$(if [[ -n "$med" ]]; then awk -v m="$med" 'BEGIN { printf "**%.1f%%**", m }'; else echo -; fi)" "${LOSS_LIST[$row]:--}" "$(fmt_ratio "$p99" "${P99[$key,$base]:-}")" \
                "${CPU_US[$key,$row]:--}" "$(if [[ -n "${CPU_ADD_MED[$row]:-}" ]]; then echo "+${CPU_ADD_MED[$row]} (${CPU_ADD_LIST[$row]})"; else echo -; fi)" \
                "${ERRS[$key,$row]:-0}"
        fi
    done
}

write_wasm_table() { write_rounds_table wasm "$WASM_ROWS" "$WASM_ROUNDS"; }

# The component target: its req/s loss is at most 1.2x the proxy-wasm one's.
component_target_line() {
    local c=${LOSS_MED[legate+component]:-} w=${LOSS_MED[legate+wasm]:-}
    if [[ -z "$c" || -z "$w" ]]; then
        echo "Target (the component costs at most 1.2x the proxy-wasm filter's req/s loss): not measured."
        return
    fi
    awk -v c="$c" -v w="$w" 'BEGIN {
        if (w <= 0) { printf "Target (the component costs at most 1.2x the proxy-wasm filter'"'"'s req/s loss): not measurable, the proxy-wasm loss is %.1f%%.\n", w; exit }
        r = c / w
        printf "Target (the component costs at most 1.2x the proxy-wasm filter'"'"'s req/s loss): **%s**, %.1f%% vs %.1f%% lost, %.2fx.\n", (r <= 1.2 ? "met" : "NOT met"), c, w, r }'
}

# The filters' CPU per request, from the same runs: steadier than req/s.
cpu_cost_line() {
    local base=${CPU_US[wasm,legate]:-} w=${CPU_ADD_MED[legate+wasm]:-} c=${CPU_ADD_MED[legate+component]:-}
    [[ -n "$base" && -n "$w" ]] || return 0
    awk -v b="$base" -v w="$w" -v c="$c" -v ew="${CPU_ADD_MED[envoy+wasm]:-}" -v eb="${CPU_US[wasm,envoy]:-}" 'BEGIN {
        printf "By CPU time (same runs): legate spends %.2f µs per request without the filter; the proxy-wasm filter adds %.2f µs (%.0f%%)", b, w, w * 100 / b
        if (c != "") printf ", the component %.2f µs (%.0f%%, %.2fx the proxy-wasm filter'"'"'s)", c, c * 100 / b, (w > 0 ? c / w : 0)
        if (ew != "" && eb != "") printf ". Envoy spends %.2f µs, and its V8 filter adds %.2f µs (%.0f%%)", eb, ew, ew * 100 / eb
        print "." }'
}

# The target: legate loses at most 5% of its req/s to the filter.
wasm_target_line() {
    local med=${LOSS_MED[legate+wasm]:-}
    if [[ -z "$med" ]]; then
        echo "Target (legate+wasm loses at most 5% of legate's req/s): not measured."
        return
    fi
    awk -v m="$med" -v list="${LOSS_LIST[legate+wasm]}" -v n="$WASM_ROUNDS" 'BEGIN {
        printf "Target (legate+wasm loses at most 5%% of legate'"'"'s req/s): **%s**, %.1f%% lost (median of %d round%s: %s).\n", (m <= 5 ? "met" : "NOT met"), m, n, (n == 1 ? "" : "s"), list }'
}

write_rss_table() {
    local proxy w f key note delta label kinds
    echo "| proxy | workers | wasm filter | idle RSS (MiB) | RSS after load (MiB) | peak RSS, VmHWM (MiB) | filter's cost after load (MiB) | Wasm VMs after load |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
    for proxy in envoy legate; do
        has_target "$proxy" || continue
        kinds="no yes"
        [[ "$proxy" != legate ]] || kinds="no yes cached"
        for w in $RSS_WORKERS; do
            for f in $kinds; do
                key="$proxy,$w,$f"
                note=${RSS_NOTE[$key]:-}
                label=$f
                [[ "$f" != cached ]] || label="yes, code from --wasm-cache-dir"
                if [[ -z "${RSS_IDLE[$key]:-}" && -z "${RSS_LOAD[$key]:-}" ]]; then
                    echo "| $proxy | $w | $label | ${note:-not run} | | | | |"
                    continue
                fi
                delta="-"
                if [[ "$f" != no && -n "${RSS_LOAD[$key]:-}" && -n "${RSS_LOAD[$proxy,$w,no]:-}" ]]; then
                    delta=$(awk -v a="${RSS_LOAD[$key]}" -v b="${RSS_LOAD[$proxy,$w,no]}" 'BEGIN { printf "%+.1f", a - b }')
                fi
                printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$proxy" "$w" "$label" \
                    "${RSS_IDLE[$key]:--}" "${RSS_LOAD[$key]:-${note:--}}" "${RSS_HWM[$key]:--}" "$delta" "${RSS_VMS[$key]:--}"
                [[ -z "$note" || -z "${RSS_LOAD[$key]:-}" ]] || NOTES_OUT+=("$proxy, $w worker(s), filter $f: $note")
            done
        done
    done
}

write_report() {
    local tmp="$RESULTS.tmp.$$" kind redis_kind
    if [[ -n "$REDIS_REQUESTS" ]]; then
        redis_kind="redis suite: \`-n $REDIS_REQUESTS\` per redis-benchmark test"
    else
        redis_kind="redis suite: about ${REDIS_SECONDS}s per redis-benchmark test"
    fi
    kind=
    if ! has_http_suite && has_suite redis; then
        kind="Full run ($redis_kind, $REDIS_ROUNDS round(s))."
        (( REDIS_SECONDS >= 3 )) || [[ -n "$REDIS_REQUESTS" ]] \
            || kind="**SMOKE RUN** ($redis_kind): numbers are only a check that the harness works, not a benchmark."
    elif ! has_http_suite; then
        :
    elif (( DURATION < 10 )); then
        kind="**SMOKE RUN** (${DURATION}s per measurement, ${WARMUP}s warm-up): numbers are only a check that the harness works, not a benchmark."
    else
        kind="Full run (${DURATION}s per measurement, ${WARMUP}s warm-up)."
    fi
    if has_http_suite && has_suite redis; then kind="${kind%.}; $redis_kind."; fi
    if has_suite mysql; then
        local mysql_kind="mysql suite: ${MYSQL_SECONDS}s per sysbench run, $MYSQL_ROUNDS round(s)"
        if [[ -n "$kind" ]]; then
            kind="${kind%.}; $mysql_kind."
        elif (( MYSQL_SECONDS >= 10 )); then
            kind="Full run ($mysql_kind)."
        else
            kind="**SMOKE RUN** ($mysql_kind): numbers are only a check that the harness works, not a benchmark."
        fi
    fi
    {
        echo "# Proxy benchmark results"
        echo
        echo "$kind"
        echo
        echo "- Date: $START_DATE"
        echo "- Command (from the repo root): \`$cmdline\`"
        echo "- Machine: $(nproc) CPUs, $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
        echo "- Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the machine skews the numbers)"
        echo "- Suites: $SUITES. Repository: $REPO_STATE."
        if (( PORT_OFFSET > 0 )); then
            echo "- Ports: the defaults plus BENCH_PORT_OFFSET=$PORT_OFFSET (upstream $UP_H1_PORT, Envoy/legate $EL_PORT, admin $EL_ADMIN_PORT); Envoy and legate get copies of the bootstraps with the same shift."
        fi
        local workers=
        if has_http_suite; then workers+="nginx \`worker_processes 1\`, "; fi
        if has_http_suite || has_suite mysql; then workers+="HAProxy \`nbthread 1\`, "; fi
        if has_http_suite || has_suite redis || has_suite mysql; then workers+="Envoy \`--concurrency 1\`, "; fi
        workers+="legate \`--concurrency 1\`"
        if has_suite redis && has_target twemproxy; then workers+=", twemproxy (single-threaded by design)"; fi
        if has_suite wasm; then
            echo "- Every proxy runs one worker: $workers. The memory table is the exception: it runs Envoy and legate with \`--concurrency\` ${RSS_WORKERS// /, }."
        else
            echo "- Every proxy runs one worker: $workers."
        fi
        if has_http_suite; then
            echo "- Upstream: nginx (\`worker_processes 1\`) answering \`return 200\` with a 20-byte body. Every proxy talks HTTP/1.1 to it over reused keep-alive connections, for both client protocols; only the direct h2c row talks h2c to the upstream."
            if has_suite wasm; then
                echo "- Envoy and legate use the same bootstrap, [bench/proxy.yaml](proxy.yaml), and for the filter rows [bench/proxy-wasm.yaml](proxy-wasm.yaml) (the same plus one wasm filter). No access logs anywhere."
            else
                echo "- Envoy and legate use the same bootstrap, [bench/proxy.yaml](proxy.yaml). No access logs anywhere."
            fi
        fi
        if has_suite mysql; then
            echo "- MySQL suite: one mariadbd (\`--skip-log-bin --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=0\`, a fresh datadir) on 127.0.0.1:$MYSQL_PORT behind every row; HAProxy (\`mode tcp\`) listens on $HAPROXY_MYSQL_PORT, Envoy and legate on $EL_MYSQL_PORT: Envoy and legate tcp_proxy with [bench/proxy-mysql-tcp.yaml](proxy-mysql-tcp.yaml), legate mysql_proxy with $MYSQL_YAML_REF."
        fi
        if has_suite redis; then
            echo "- Redis suite: one redis-server (\`--save '' --appendonly no\`) on 127.0.0.1:$REDIS_PORT behind every row; Envoy and legate use the same bootstrap, [bench/proxy-redis.yaml](proxy-redis.yaml)."
        fi
        echo
        echo "Tool versions:"
        echo
        if has_http_suite; then
            echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        fi
        if has_http_suite || { has_suite mysql && has_target haproxy; }; then
            echo "- HAProxy: $(haproxy -v 2>&1 | head -1 | sed 's/^HA-*Proxy version //; s/ - https.*//')"
        fi
        if has_suite redis; then
            echo "- redis-server: $(redis-server --version 2>&1 | head -1 | sed 's/^Redis server //')"
            echo "- redis-benchmark: $(redis-benchmark --version 2>&1 | head -1)"
            ! has_target twemproxy || echo "- twemproxy: $(nutcracker -V 2>&1 | head -1 | sed 's/^This is //')"
        fi
        if has_suite mysql; then
            echo "- mariadbd: ${MYSQL_VERSION_STR:-$(mariadbd --version 2>&1 | head -1 | sed 's/^mariadbd *//')}"
            echo "- sysbench: $(sysbench --version 2>&1 | head -1)"
        fi
        echo "- Envoy: ${ENVOY_VERSION_STR:-not available}"
        echo "- legate: ${LEGATE_VERSION_STR:-not available}"
        if has_suite wasm; then
            echo "- wasm filter: ${WASM_DESC:-not available${WASM_NA:+ ($WASM_NA)}}"
            echo "- the same filter as a component: ${COMPONENT_DESC:-not available${COMPONENT_NA:+ ($COMPONENT_NA)}}"
            echo "- wasm runtimes: Envoy's built-in V8 (\`runtime: envoy.wasm.runtime.v8\`); legate runs the same module on wasmtime ${WASMTIME_VERSION:-?} (from Cargo.lock), whatever the runtime name"
        fi
        if has_http_suite; then
            echo "- wrk: $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
            echo "- h2load: $(h2load --version 2>&1 | head -1)"
        fi
        echo
        if has_suite proxy && [[ " $PROTOCOLS " == *" h1 "* ]]; then
            echo "## HTTP/1.1 keep-alive (wrk)"
            echo
            echo "\`wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency URL\`, after a ${WARMUP}s warm-up run with the same settings."
            echo
            write_table h1
            echo
        fi
        if has_suite proxy && [[ " $PROTOCOLS " == *" h2c "* ]]; then
            echo "## HTTP/2 cleartext, prior knowledge (h2load)"
            echo
            echo "\`h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D $DURATION --warm-up-time=${WARMUP}s --log-file=FILE URL\` ($((H2_CONNS * H2_STREAMS)) concurrent streams). p50/p99 are nearest-rank percentiles of the per-request times in h2load's \`--log-file\` (h2load itself prints only min/max/mean/sd)."
            echo
            write_table h2c
            echo
        fi
        if has_suite proxy; then
            echo "Ratios are relative to the nginx and HAProxy rows of the same table: req/s above 1.00x is more throughput, p99 below 1.00x is lower tail latency. Errors are wrk non-2xx responses plus socket errors, or h2load failed/errored/timed-out requests plus non-2xx responses."
            echo
        fi
        if has_suite wasm; then
            echo "## proxy-wasm filter cost, HTTP/1.1 keep-alive (wrk), one worker"
            echo
            echo "Each proxy with [bench/proxy.yaml](proxy.yaml) (no filter), then with [bench/proxy-wasm.yaml](proxy-wasm.yaml): the same plus \`envoy.filters.http.wasm\` running [header_filter](../examples/wasm/header_filter) before the router. On every request it reads \`:path\`, adds \`x-legate-wasm\` and removes \`x-remove-me\`; on every response it adds \`x-wasm-filter\` and \`x-request-path\`. Envoy and legate load the same .wasm file. The legate+component row runs [sdk_header_filter](../examples/components/sdk_header_filter), the same filter written with legate-sdk as a \`legate:filter\` component, in the same config. Before the load, one request to \`/wasm-check\` checks the filter is at work in the filter rows (the upstream saw \`x-legate-wasm\`, the response carries both headers) and absent from the others."
            echo
            echo "\`wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency http://127.0.0.1:$EL_PORT/\`, after a ${WARMUP}s warm-up run with the same settings (as in the HTTP/1.1 table above); Envoy \`--concurrency 1\`, legate \`--concurrency 1\`. $WASM_ROUNDS round(s): each round runs the rows in table order, each in a fresh process. req/s, p50 and p99 are medians over the rounds. \"req/s lost\" is computed per round, against the row without the filter that ran just before, and the median is shown; \"per round\" lists every round (req/s for the rows without the filter)."
            echo
            write_wasm_table
            echo
            wasm_target_line
            echo
            component_target_line
            echo
            cpu_cost_line
            echo
            if ((${#NOTES_WASM[@]})); then
                printf -- '- %s\n' "${NOTES_WASM[@]}"
                echo
            fi
            echo "\"req/s lost\" is (without - with) / without; negative means the filter row happened to be faster (noise). p99 vs same proxy: above 1.00x is a higher tail latency with the filter. \"Proxy CPU per request\" is the proxy process's user + system CPU time (\`/proc/<pid>/stat\`, all its threads) during the measured wrk run, over the requests its admin counter \`http.ingress.downstream_rq_total\` counted in that run; the median over the rounds. \"CPU added\" is that figure minus the row without the filter of the same round, median first, every round in brackets. It moves far less from round to round than req/s, which on this 2-CPU machine also depend on how the scheduler shares the CPUs between wrk, nginx and the proxy. Errors are wrk non-2xx responses plus socket errors. For where legate's extra time goes, see [PROFILE-wasm.md](PROFILE-wasm.md) (\`bench/profile-wasm.sh\`, callgrind)."
            echo
            echo "## Resident memory (VmRSS), Envoy and legate, with and without the filter"
            echo
            echo "From \`/proc/<pid>/status\` of the proxy process (all its threads): \"idle\" is VmRSS 1 s after the proxy is ready, before any request; \"after load\" is VmRSS right after a ${RSS_LOAD_SECS}s \`wrk -t$WRK_THREADS -c$CONNS\` load (it follows the two sanity requests); \"peak\" is VmHWM at that point. Same bootstraps as above, \`--concurrency N\` for N workers. \"Filter's cost\" is \"after load\" with the filter minus without, same proxy and workers. \"Wasm VMs\" is the admin stat \`wasm.envoy.wasm.runtime.v8.active\` after the load (both proxies keep it; \"-\" when there is no filter). Envoy makes its VMs at start-up, one per worker plus some on the main thread. legate makes a worker's VM on that worker's first stream, so its \"idle\" column has none of them. In legate's \"code from --wasm-cache-dir\" rows, a \`legate --mode validate\` run first saved the compiled filter to a cache directory, and the measured process maps that code in instead of compiling the module, which otherwise leaves the compiler's memory in the process. 1 MiB = 1024 KiB."
            echo
            NOTES_OUT=()
            write_rss_table
            echo
            if ((${#NOTES_OUT[@]})); then
                echo "Notes:"
                echo
                printf -- '- %s\n' "${NOTES_OUT[@]}"
                echo
            fi
        fi
        if has_suite filters; then
            echo "## Built-in filter chain cost, HTTP/1.1 keep-alive (wrk), one worker"
            echo
            echo "Each proxy with [bench/proxy.yaml](proxy.yaml) (the router alone), then with [bench/proxy-filters.yaml](proxy-filters.yaml): the same plus \`envoy.filters.http.fault\` (abort and delay at 0%), \`envoy.filters.http.rbac\` (ALLOW GET from 127.0.0.0/8) and \`envoy.filters.http.jwt_authn\` (one provider, an HS256 key in \`local_jwks\`, required on every path) before the router. Every request, in both rows, carries the same valid token (\`authorization: Bearer ...\`, signed by this script with the config's key). Before the load, sanity requests check the chain is at work in the filter rows: a GET with the token gets the upstream's 200, one without gets 401 \`Jwt is missing\`, a POST with the token gets 403 \`RBAC: access denied\`."
            echo
            echo "\`wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency -H 'authorization: Bearer ...' http://127.0.0.1:$EL_PORT/\`, after a ${WARMUP}s warm-up run; Envoy \`--concurrency 1\`, legate \`--concurrency 1\`. $FILTER_ROUNDS round(s), as in the wasm table: medians over the rounds, the loss computed per round against the row without the chain that ran just before."
            echo
            write_rounds_table filt "$FILTER_ROWS" "$FILTER_ROUNDS"
            echo
            filters_target_line
            echo
            if ((${#NOTES_FILTERS[@]})); then
                printf -- '- %s\n' "${NOTES_FILTERS[@]}"
                echo
            fi
        fi
        if has_suite redis; then
            echo "## Redis proxy (redis-benchmark), one worker"
            echo
            echo "One redis-server, measured direct and through twemproxy (one server pool, \`redis: true\`, \`hash: fnv1a_64\`, \`distribution: ketama\`), Envoy's \`envoy.filters.network.redis_proxy\` and legate's, the last two on the same [bench/proxy-redis.yaml](proxy-redis.yaml) (\`settings.op_timeout: 5s\`, a catch-all route to a \`MAGLEV\` cluster with the one server). Before the load, a sanity check through each row: \`SET\` answers \`OK\`, \`GET\` answers the value, and the value is in the redis-server."
            echo
            if [[ -n "$REDIS_REQUESTS" ]]; then
                echo "\`redis-benchmark -t get,set -n $REDIS_REQUESTS -c $REDIS_CLIENTS -P 1 --csv\`, then the same with \`-P 16\`."
            else
                echo "\`redis-benchmark -t get,set -n N -c $REDIS_CLIENTS -P 1 --csv\`, then the same with \`-P 16\`. Before each, a calibration run (\`-t get -n 10000\`, times 16 with \`-P 16\`), also a warm-up, sets N to about ${REDIS_SECONDS}s of its GET rate (at least 10,000, at most 20,000,000), so every test lasts a few seconds whatever the row's speed."
            fi
            echo "$REDIS_ROUNDS round(s): each round runs the rows in table order, each proxy in a fresh process. req/s are medians over the rounds. The GET share of direct is computed per round against the direct row of the same round; the median is in bold, every round in brackets. \"Requests not forwarded\" counts, over all rounds, the measured SETs and GETs that never reached the redis-server (its \`INFO commandstats\`), e.g. answered by the proxy itself."
            echo
            write_redis_table
            echo
            redis_n_line
            echo
            redis_target_lines
            echo
            if ((${#NOTES_REDIS[@]})); then
                echo "Notes:"
                echo
                printf -- '- %s\n' "${NOTES_REDIS[@]}"
                echo
            fi
        fi
        if has_suite mysql; then
            echo "## MySQL proxy (sysbench oltp_read_only), one worker"
            echo
            echo "One mariadbd, measured direct and through these relays, each with one worker (the rows that \`BENCH_TARGETS\` selects run). **haproxy**: HAProxy in \`mode tcp\` (\`nbthread 1\`, a config written by the script: one frontend, one backend with the server). **envoy**: Envoy (\`--concurrency 1\`) on [bench/proxy-mysql-tcp.yaml](proxy-mysql-tcp.yaml), a listener with \`envoy.filters.network.tcp_proxy\` alone to a \`STATIC\` cluster with the server; Envoy's own \`envoy.filters.network.mysql_proxy\` is a contrib extension, absent from this Envoy binary, so Envoy can only relay bytes here. **legate tcp_proxy**: legate (\`--concurrency 1\`) on the same file. **legate mysql_proxy**: legate (\`--concurrency 1\`) on $MYSQL_YAML_REF; [bench/proxy-mysql.yaml](proxy-mysql.yaml) is the tcp_proxy file with \`envoy.filters.network.mysql_proxy\` (\`stat_prefix: mysql\`) in front of tcp_proxy. Only that last row decodes the MySQL protocol; the three others relay bytes. The tables are made once (\`sysbench oltp_read_only --tables=$MYSQL_TABLES --table-size=$MYSQL_TABLE_SIZE prepare\`, then \`prewarm\`). Before the load, a sanity query through each row (\`SELECT COUNT(*) FROM sbtest1\` answers $MYSQL_TABLE_SIZE)."
            echo
            echo "\`sysbench oltp_read_only --mysql-host=127.0.0.1 --mysql-ssl=off --db-ps-mode=$MYSQL_PS_MODE --tables=$MYSQL_TABLES --table-size=$MYSQL_TABLE_SIZE --threads=$MYSQL_THREADS --time=$MYSQL_SECONDS --report-interval=0 --percentile=95 run\`$( (( MYSQL_WARMUP > 0 )) && echo ", after a ${MYSQL_WARMUP}s warm-up run with the same settings"). Each transaction is 16 queries (BEGIN, 10 point selects, 4 range selects, COMMIT)$( [[ "$MYSQL_PS_MODE" == disable ]] && echo ", each a \`COM_QUERY\` whose SQL the filter reads" || echo ", server-side prepared statements (\`COM_STMT_EXECUTE\`) where sysbench can")."
            echo "$MYSQL_ROUNDS round(s): each round runs the rows in table order, each proxy in a fresh process. queries/s, transactions/s and p95 are medians over the rounds. The share of direct is computed per round against the direct row of the same round (median in bold, every round in brackets). The next column is legate mysql_proxy's queries/s over legate tcp_proxy's, per round (the two run back to back): what the mysql_proxy filter itself costs, 1.00 being nothing. Errors are sysbench's ignored errors plus reconnects, over all rounds."
            echo
            write_mysql_table
            echo
            mysql_target_lines
            echo
            if ((${#NOTES_MYSQL[@]})); then
                echo "Notes:"
                echo
                printf -- '- %s\n' "${NOTES_MYSQL[@]}"
                echo
            fi
        fi
    } >"$tmp"
    mv "$tmp" "$RESULTS"
}

# ---------------------------------------------------------------- main
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
CPU_MODEL=${CPU_MODEL:-unknown CPU}

ensure_tools

for p in $ALL_PORTS; do
    if port_open "$p"; then
        log "port 127.0.0.1:$p is already in use (a leftover run?); stop it first, or set BENCH_PORT_OFFSET"
        exit 1
    fi
done

# With BENCH_PORT_OFFSET, Envoy and legate get copies of the bootstraps with
# every port_value shifted (still one identical file for both proxies).
if (( PORT_OFFSET > 0 )); then
    shift_ports() {
        awk -v off="$PORT_OFFSET" '{
            while (match($0, /port_value: [0-9]+/)) {
                n = substr($0, RSTART + 12, RLENGTH - 12) + off
                $0 = substr($0, 1, RSTART - 1) "port_value= " n substr($0, RSTART + RLENGTH)
            }
            gsub(/port_value= /, "port_value: "); print }' "$1"
    }
    shift_ports "$PROXY_YAML" >"$work/proxy.yaml"
    shift_ports "$WASM_YAML_SRC" >"$work/proxy-wasm.src.yaml"
    shift_ports "$FILTERS_YAML" >"$work/proxy-filters.yaml"
    shift_ports "$REDIS_YAML" >"$work/proxy-redis.yaml"
    REDIS_YAML="$work/proxy-redis.yaml"
    shift_ports "$MYSQL_YAML" >"$work/$(basename "$MYSQL_YAML")"
    MYSQL_YAML="$work/$(basename "$MYSQL_YAML")"
    # Its own name: BENCH_MYSQL_YAML may have the same basename.
    shift_ports "$MYSQL_TCP_YAML" >"$work/mysql-tcp-shifted.yaml"
    MYSQL_TCP_YAML="$work/mysql-tcp-shifted.yaml"
    FILTERS_YAML="$work/proxy-filters.yaml"
    PROXY_YAML="$work/proxy.yaml"
    WASM_YAML_SRC="$work/proxy-wasm.src.yaml"
fi

if has_target envoy; then
    if [[ -z "${ENVOY_BIN:-}" ]]; then
        ENVOY_BIN=$("$repo_root/tests/envoy/fetch.sh") || { log "fetching Envoy failed"; ENVOY_NA="tests/envoy/fetch.sh failed"; ENVOY_BIN=; }
    fi
    # A binary that does not run leaves its rows "not available" (set -e would
    # otherwise end the whole run here).
    if [[ -n "$ENVOY_BIN" ]] && ! ENVOY_VERSION_STR=$("$ENVOY_BIN" --version 2>/dev/null | awk '/version:/ {print $NF}'); then
        log "$ENVOY_BIN --version failed; the Envoy rows are skipped"
        ENVOY_NA="$ENVOY_BIN does not run"
        ENVOY_BIN=
    fi
fi

if has_target legate; then
    want_build=0
    case "$BUILD_LEGATE" in
        always) want_build=1 ;;
        auto) [[ -x "$LEGATE_BIN" ]] || want_build=1 ;;
        never) ;;
        *) log "BENCH_BUILD_LEGATE must be auto, always or never"; exit 2 ;;
    esac
    if (( want_build )); then
        if command -v cargo >/dev/null; then
            log "building legate: cargo build --release -p legate"
            if ! (cd "$repo_root" && cargo build --release -p legate) >"$work/cargo-build.log" 2>&1; then
                tail -20 "$work/cargo-build.log" >&2
                log "legate build failed; legate will be reported as not available"
                LEGATE_NA="cargo build --release -p legate failed"
                [[ "$BUILD_LEGATE" == always ]] && LEGATE_BIN=/nonexistent
            fi
        else
            LEGATE_NA="cargo not found and no binary at ${LEGATE_BIN#"$repo_root"/}"
        fi
    fi
    if [[ -x "$LEGATE_BIN" ]]; then
        LEGATE_VERSION_STR=$(timeout 5 "$LEGATE_BIN" --version 2>/dev/null | head -1 || true)
        LEGATE_VERSION_STR="${LEGATE_VERSION_STR:-unknown version}, ${LEGATE_BIN#"$repo_root"/} built $(date -u -r "$LEGATE_BIN" '+%Y-%m-%d %H:%M UTC')"
    fi
fi

# The filter, for the wasm suite: BENCH_WASM as given, or the example built
# from examples/wasm (same build policy as legate).
if has_suite wasm && { has_target envoy || has_target legate; }; then
    if [[ -z "${BENCH_WASM:-}" ]]; then
        want_build=0
        case "$BUILD_LEGATE" in
            always) want_build=1 ;;
            auto) [[ -s "$WASM_FILE" ]] || want_build=1 ;;
        esac
        if (( want_build )); then
            wasm_build=(cargo build --release --target wasm32-wasip1 --manifest-path examples/wasm/Cargo.toml
                        --target-dir target/wasm -p header_filter)
            if ! command -v cargo >/dev/null; then
                WASM_NA="cargo not found and no filter at ${WASM_FILE#"$repo_root"/}"
            else
                log "building the filter: ${wasm_build[*]}"
                if ! (cd "$repo_root" && "${wasm_build[@]}") >"$work/cargo-build-wasm.log" 2>&1; then
                    tail -20 "$work/cargo-build-wasm.log" >&2
                    log "filter build failed; the filter rows will be reported as not available"
                    WASM_NA="${wasm_build[*]} failed"
                fi
            fi
        fi
    fi
    if has_target legate && [[ -z "${BENCH_COMPONENT:-}" ]]; then
        want_build=0
        case "$BUILD_LEGATE" in
            always) want_build=1 ;;
            auto) [[ -s "$COMPONENT_FILE" ]] || want_build=1 ;;
        esac
        if (( want_build )); then
            component_build=(cargo build --release --target wasm32-wasip2 --manifest-path examples/components/Cargo.toml
                             --target-dir target/components -p sdk_header_filter)
            log "building the component: ${component_build[*]}"
            if ! (cd "$repo_root" && "${component_build[@]}") >"$work/cargo-build-component.log" 2>&1; then
                tail -20 "$work/cargo-build-component.log" >&2
                COMPONENT_NA="${component_build[*]} failed"
            fi
        fi
    fi
    if prepare_wasm; then
        WASM_DESC="\`${WASM_FILE#"$repo_root"/}\`, $(stat -c %s "$WASM_FILE") bytes, sha256 $(sha256sum "$WASM_FILE" | cut -c1-16)…, modified $(date -u -r "$WASM_FILE" '+%Y-%m-%d %H:%M UTC')"
    else
        log "wasm filter not available: $WASM_NA"
    fi
    if has_target legate; then
        if prepare_component; then
            COMPONENT_DESC="\`${COMPONENT_FILE#"$repo_root"/}\`, $(stat -c %s "$COMPONENT_FILE") bytes, sha256 $(sha256sum "$COMPONENT_FILE" | cut -c1-16)…, modified $(date -u -r "$COMPONENT_FILE" '+%Y-%m-%d %H:%M UTC')"
        else
            log "component not available: $COMPONENT_NA"
        fi
    fi
    WASMTIME_VERSION=$(awk '/^name = "wasmtime"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$repo_root/Cargo.lock" 2>/dev/null || true)
fi

# The checkout at the start of the run (bench/ itself does not go into any binary).
REPO_STATE="not a git checkout"
if git -C "$repo_root" rev-parse --short HEAD >/dev/null 2>&1; then
    REPO_STATE="commit $(git -C "$repo_root" rev-parse --short HEAD)"
    if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no -- . ':!bench' 2>/dev/null)" ]]; then
        REPO_STATE+=", with uncommitted changes outside bench/ (a binary built from this checkout may include them)"
    else
        REPO_STATE+=", no uncommitted changes outside bench/"
    fi
fi

log "scratch dir: $work"
for t in $TARGETS; do
    case "$t" in
        direct|nginx|haproxy|twemproxy|envoy|legate) ;;
        *) log "unknown target '$t' ignored" ;;
    esac
done

if has_http_suite; then
    write_nginx_upstream_conf
    start_bg "$work/upstream/stderr.log" nginx -p "$work/upstream" -e "$work/upstream/error.log" \
        -c "$work/upstream/nginx.conf" -g 'daemon off;'
    UP_PID=$BG_PID
    if ! wait_ready "$UP_PID" "$UP_H1_PORT" || ! wait_ready "$UP_PID" "$UP_H2_PORT" \
            || ! check_url "http://127.0.0.1:$UP_H1_PORT/" h1 || ! check_url "http://127.0.0.1:$UP_H2_PORT/" h2c; then
        log "upstream nginx failed to start:"; cat "$work/upstream/error.log" >&2 || true
        exit 1
    fi
fi

if has_suite proxy; then
    for t in $TARGETS; do
        case "$t" in
            direct|nginx|haproxy|envoy|legate) bench_target "$t" ;;
        esac
    done
fi

NOTES_FILTERS=()
if has_suite filters; then
    make_token
    for r in $(seq 1 "$FILTER_ROUNDS"); do
        for t in envoy legate; do
            has_target "$t" || continue
            bench_filters_row "$t" "$t" no "$r"
            bench_filters_row "$t+filters" "$t" yes "$r"
        done
    done
    aggregate_rounds filt "$FILTER_ROWS" "$FILTER_ROUNDS" NOTES_FILTERS
fi

NOTES_WASM=()
if has_suite wasm; then
    for r in $(seq 1 "$WASM_ROUNDS"); do
        for t in envoy legate; do
            has_target "$t" || continue
            bench_wasm_row "$t" "$t" no "$r"
            bench_wasm_row "$t+wasm" "$t" yes "$r"
            [[ "$t" != legate ]] || bench_wasm_row "legate+component" legate component "$r"
        done
    done
    aggregate_wasm
    for t in envoy legate; do
        has_target "$t" || continue
        for w in $RSS_WORKERS; do
            measure_rss "$t" "$w" no
            measure_rss "$t" "$w" yes
            [[ "$t" != legate ]] || measure_rss legate "$w" cached
        done
    done
fi

if has_suite redis; then
    if start_redis_server; then
        log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
    else
        log "$REDIS_NA"
    fi
    for r in $(seq 1 "$REDIS_ROUNDS"); do
        for t in direct twemproxy envoy legate; do
            has_target "$t" || continue
            bench_redis_row "$t" "$r"
        done
    done
    stop_pid "$REDIS_PID"
    forget_pid "$REDIS_PID"
    aggregate_redis
    redis_round_notes
fi

if has_suite mysql; then
    if start_mysql_server; then
        log "mariadbd on 127.0.0.1:$MYSQL_PORT (pid $MYSQL_PID)"
    else
        log "$MYSQL_NA"
    fi
    mysql_tcp_yaml_check
    for r in $(seq 1 "$MYSQL_ROUNDS"); do
        for t in $MYSQL_ROWS; do
            has_target "$(mysql_row_target "$t")" || continue
            bench_mysql_row "$t" "$r"
        done
    done
    [[ -n "$MYSQL_NA" ]] || MYSQL_VERSION_STR=$(mysql_client "$MYSQL_PORT" "SELECT VERSION()" | head -1)
    if [[ -n "$MYSQL_PID" ]]; then stop_pid "$MYSQL_PID"; forget_pid "$MYSQL_PID"; fi
    aggregate_mysql
fi

write_report
log "wrote ${RESULTS}"
cat "$RESULTS"

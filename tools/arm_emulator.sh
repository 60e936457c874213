#!/usr/bin/env bash
# An emulated aarch64 TVM device for machines without ARM hardware (recipe: docs/backends/arm.md).
#   tools/arm_emulator.sh setup   cross toolchain + qemu-user, arm64 sysroot and aarch64 wheels under .arm/
#   tools/arm_emulator.sh start   setup, then a TVM RPC server under qemu-aarch64 on 127.0.0.1 (background)
#   tools/arm_emulator.sh stop    stop the server started by `start`
#   tools/arm_emulator.sh status  print "host:port" of the running server (exit 1 if none)
#   tools/arm_emulator.sh count BLOCKS LIBRARY INFO.json INPUT.npy...
#                                 one call of LIBRARY under qemu with the instruction-counting plugin
#                                 (tools/insn_count.c, tools/arm_count_run.py): block counts in OUT
# start/stop/status take --name NAME (default "server") for more than one device; start also takes
# --tracker HOST:PORT --key KEY to register the device with a TVM RPC tracker (a board farm on one host).
# Everything lives in the project's git-ignored .arm/ folder and is reused: a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARM="${ARM_DIR:-$ROOT/.arm}"
SYSROOT="$ARM/sysroot"
SITE="$ARM/site"
WHEELS="$ARM/wheels"
PORT="${ARM_RPC_PORT:-9190}"
NAME=server
TRACKER_ARGS=()
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# The same versions as the x86 side: TVM as pinned in pyproject.toml; tvm-ffi, numpy and ml_dtypes as the
# venv has them (the RPC protocol and the library ABI must match between host and device).
TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.15.post2  # what apache-tvm 0.27.0.post1 resolved to; used when the venv has none
# Debian arm64 packages that make a working /usr/bin/python3.11 (with ssl, ctypes, sqlite ...) under qemu.
ARM64_DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3
 libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3
 libgdbm6 libnsl2 libtirpc3 libcrypt1"
# Bump when the recipe changes so that old .arm/ folders are rebuilt.
RECIPE=1

log() { echo "arm-emulator: $*" >&2; }

# Host tools: the cross compiler links the exported library, qemu-user runs the aarch64 Python.
install_host_packages() {
    if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then return; fi
    log "installing gcc/g++-aarch64-linux-gnu and qemu-user (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user >/dev/null
}

# The arm64 packages are downloaded (not installed) and unpacked into the sysroot only; never into /.
build_sysroot() {
    local stamp="$SYSROOT/.stamp-$RECIPE"
    [ -f "$stamp" ] && return
    log "building the arm64 sysroot in $SYSROOT"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    # arm64 package lists are missing right after --add-architecture; update only then.
    if ! apt-cache show libc6:arm64 >/dev/null 2>&1; then apt-get update -qq; fi
    rm -rf "$SYSROOT" "$ARM/debs"; mkdir -p "$SYSROOT" "$ARM/debs"
    local pkgs=() p
    for p in $ARM64_DEBS; do pkgs+=("$p:arm64"); done
    # As root, the _apt sandbox user cannot write into the project folder: download as root.
    (cd "$ARM/debs" && apt-get download -qq -o APT::Sandbox::User=root "${pkgs[@]}")
    for p in "$ARM/debs"/*.deb; do dpkg -x "$p" "$SYSROOT"; done
    rm -rf "$ARM/debs"
    touch "$stamp"
}

pip_version() {  # the version of a package in the x86 venv (empty if absent), so that both sides agree
    "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true
}

# aarch64 wheels unzipped into one folder used as PYTHONPATH; the runtime-only TVM (no compiler library).
build_site() {
    local stamp="$SITE/.stamp-$RECIPE"
    [ -f "$stamp" ] && return
    local ffi np mld
    ffi="$(pip_version apache-tvm-ffi)"; ffi="${ffi:-$TVM_FFI_VERSION}"; np="$(pip_version numpy)"; mld="$(pip_version ml_dtypes)"
    log "downloading aarch64 wheels: apache-tvm==$TVM_VERSION apache-tvm-ffi${ffi:+==$ffi} numpy${np:+==$np} ml_dtypes${mld:+==$mld}"
    rm -rf "$SITE"; mkdir -p "$SITE" "$WHEELS"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 -d "$WHEELS" \
        "apache-tvm==$TVM_VERSION" "apache-tvm-ffi${ffi:+==$ffi}" "numpy${np:+==$np}" "ml_dtypes${mld:+==$mld}"
    local w
    for w in "$WHEELS"/*.whl; do
        "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$SITE"
    done
    # The compiler library is ~100 MB and only needed on the host; the device loads the runtime only.
    rm -f "$SITE/tvm/lib/libtvm_compiler.so"
    # tvm_ffi imports typing_extensions, which is pure Python: take the host's copy.
    "$PY" -c 'import shutil, sys, typing_extensions as t; shutil.copy(t.__file__, sys.argv[1])' "$SITE"
    touch "$stamp"
}

# The instruction-counting qemu plugin (tools/insn_count.c), built with the host's gcc. It declares the
# few qemu plugin functions it uses itself, so it needs no qemu or glib headers.
build_plugin() {
    local src="$ROOT/tools/insn_count.c" so="$ARM/insn_count.so"
    [ -f "$so" ] && [ "$so" -nt "$src" ] && return
    if ! command -v gcc >/dev/null; then
        log "installing gcc (apt-get) for the instruction-counting plugin"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null
    fi
    gcc -O2 -shared -fPIC -fvisibility=hidden -Wall -o "$so" "$src"
}

setup() {
    mkdir -p "$ARM"
    install_host_packages
    build_sysroot
    build_site
    build_plugin
}

# One call of a model in a fresh emulated Python (no server, no RPC) with the counting plugin. One TVM
# thread: the plugin's counters are not atomic, and every kernel then runs in this one guest thread.
count() {
    [ $# -ge 3 ] || { echo "usage: $0 count BLOCKS LIBRARY INFO.json INPUT.npy..." >&2; exit 2; }
    setup
    local blocks="$1"; shift
    TVM_NUM_THREADS=1 TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$SITE" QEMU_LD_PREFIX="$SYSROOT" \
        qemu-aarch64 -plugin "$ARM/insn_count.so,out=$blocks" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" \
        "$ROOT/tools/arm_count_run.py" "$@" </dev/null
}

# Per device: NAME.pid, NAME.port (what qcompile/backends/tvm/arm/emulator.py reads) and NAME.log.
state_files() {
    PIDFILE="$ARM/$NAME.pid"; PORTFILE="$ARM/$NAME.port"; LOG="$ARM/$NAME.log"
}

server_running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

# One long-lived server per device (tools/arm_rpc_server.py; see why there): the emulated Python takes
# 5-20 s to import TVM, so tests share one per test session.
start() {
    setup
    if server_running && [ -f "$PORTFILE" ]; then echo "127.0.0.1:$(cat "$PORTFILE")"; return; fi
    rm -f "$PIDFILE" "$PORTFILE"
    log "starting the TVM RPC server under qemu-aarch64 (5 s here, about 20 s on slower hosts)"
    # setsid: its own process group, so `stop` ends qemu, its session children and nothing else.
    TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$SITE" QEMU_LD_PREFIX="$SYSROOT" setsid \
        qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "$ROOT/tools/arm_rpc_server.py" \
        --host 127.0.0.1 --port "$PORT" --port-end "$((PORT + 100))" "${TRACKER_ARGS[@]}" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    wait_until_ready
    echo "127.0.0.1:$(cat "$PORTFILE")"
}

# The server logs the port it bound (it moves up from --port when that one is taken); then it accepts.
wait_until_ready() {
    local i port
    for i in $(seq 1 "${ARM_START_TIMEOUT:-180}"); do
        if ! server_running; then log "the server exited; its log:"; cat "$LOG" >&2; return 1; fi
        port="$(sed -n 's/.*bind to 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG" | tail -1)"
        if [ -n "$port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port" >"$PORTFILE"
            log "ready on 127.0.0.1:$port after ${i} s"; return
        fi
        sleep 1
    done
    log "the server did not start in time; its log:"; cat "$LOG" >&2; stop; return 1
}

# The server and its forked session children share one process group (setsid): end that group, and wait
# so that the port is free again when `stop` returns; SIGKILL if it does not exit within 10 s.
stop() {
    if server_running; then
        local pid i
        pid="$(cat "$PIDFILE")"
        kill -- "-$pid" 2>/dev/null || kill "$pid"
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
        log "stopped"
    fi
    rm -f "$PIDFILE" "$PORTFILE"
}

status() {
    server_running && [ -f "$PORTFILE" ] && echo "127.0.0.1:$(cat "$PORTFILE")"
}

COMMAND="${1:-start}"; shift || true
if [ "$COMMAND" = count ]; then count "$@"; exit; fi  # its arguments are files, not the options below
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME="$2"; shift 2 ;;
        --tracker) TRACKER_ARGS+=(--tracker "$2"); shift 2 ;;
        --key) TRACKER_ARGS+=(--key "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
state_files

case "$COMMAND" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 setup|start|stop|status [--name NAME] [--tracker HOST:PORT --key KEY]" >&2; exit 2 ;;
esac

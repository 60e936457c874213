"""A TVM RPC server for the emulated aarch64 device (run by tools/arm_emulator.sh under qemu-aarch64).

Why not `python -m tvm.exec.rpc_server`: it hands the listening loop to a PopenWorker, a second Python
started through `sys.executable`, which needs cloudpickle and an exec of the aarch64 binary (qemu-user
without binfmt_misc cannot exec it).

Alone (no --tracker), this server serves every session at once, each in a child forked from this
single-threaded process: TVM's own loop serves one session at a time, so while one client (a test session,
a notebook) held a compiled model's session, every other client waited without end. A board behind a
tracker must serve one session at a time (the tracker hands out whole devices), so with --tracker this
runs TVM's own listening loop (`tvm.rpc.server._listen_loop`), in the main thread.
"""
import argparse
import logging
import os
import signal
import socket
import struct

from tvm.rpc import _ffi_api, base, server
from tvm.support import utils

log = logging.getLogger("arm-rpc-server")


def _bind(host: str, port: int, port_end: int) -> socket.socket:
    for candidate in range(port, port_end):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # With SO_REUSEADDR two servers starting at once may both bind a port; only one can listen.
            sock.bind((host, candidate))
            sock.listen(16)
        except OSError:
            sock.close()
            continue
        log.info("bind to %s:%d", host, candidate)  # the set-up script waits for this line
        return sock
    raise SystemExit(f"cannot bind to any port in [{port}, {port_end})")


def _handshake(conn: socket.socket, key: str) -> bool:
    """TVM's RPC handshake (server side): the client's magic and "client:<key> [opts]", answered with
    success and "server:<key>"."""
    if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_MAGIC:
        return False
    length = struct.unpack("<i", base.recvall(conn, 4))[0]
    words = base.recvall(conn, length).decode("utf-8").split()
    if not words or words[0] != "client:" + key:
        conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
        return False
    reply = ("server:" + key).encode("utf-8")
    conn.sendall(struct.pack("<ii", base.RPC_CODE_SUCCESS, len(reply)) + reply)
    return True


def _serve_session(conn: socket.socket) -> None:
    """In the forked child: one session in its own work folder (uploaded files), removed at the end."""
    work = utils.tempdir()
    os.chdir(work.path)
    server._server_env(None, work)
    try:
        _ffi_api.ServerLoop(conn.fileno())
    finally:
        work.remove()


def serve_concurrently(sock: socket.socket, key: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished session children
    while True:
        conn, addr = sock.accept()
        try:
            accepted = _handshake(conn, key)
        except (OSError, struct.error):  # closed before the handshake: the set-up script's readiness probe
            conn.close()
            continue
        if not accepted:
            log.warning("refused a connection from %s (not a TVM RPC client, or another key)", addr)
            conn.close()
            continue
        if os.fork() == 0:
            sock.close()
            status = 1
            try:
                log.info("session from %s", addr)
                _serve_session(conn)
                log.info("session from %s ended", addr)
                status = 0
            finally:
                os._exit(status)
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9190)
    parser.add_argument("--port-end", type=int, default=9290)
    parser.add_argument("--tracker", help="host:port of a TVM RPC tracker to register with")
    parser.add_argument("--key", default="", help="device key (the tracker hands devices out by key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sock = _bind(args.host, args.port, args.port_end)
    if not args.tracker:
        serve_concurrently(sock, args.key)
        return
    host, port = args.tracker.rsplit(":", 1)
    # In this (main) thread: TVM's own server forks each session from its listening thread, and a child
    # forked under qemu-user from a process with a second thread hung once TVM's thread pool started.
    server._listen_loop(sock, sock.getsockname()[1], args.key, (host, int(port)), None, None)


if __name__ == "__main__":
    main()

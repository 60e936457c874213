"""A TVM RPC server for the emulated aarch64 device (run by tools/arm_emulator.sh under qemu-aarch64).

`python -m tvm.exec.rpc_server` hands the listening loop to a PopenWorker: a second Python started through
`sys.executable`, which needs cloudpickle and an exec of the aarch64 binary (qemu-user without binfmt_misc
cannot exec it). This runs the same loop (`tvm.rpc.server._popen_start_rpc_server`) in this process instead;
each session is still served in a forked child, as TVM does.
"""
import argparse
import logging

from tvm.rpc import server


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9190)
    parser.add_argument("--port-end", type=int, default=9290)
    parser.add_argument("--tracker", help="host:port of a TVM RPC tracker to register with")
    parser.add_argument("--key", default="", help="device key for the tracker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)  # the set-up script waits for the "bind to host:port" line
    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    server._popen_start_rpc_server(args.host, args.port, args.port_end, tracker_addr=tracker, key=args.key)
    server.PopenRPCServerState.current.thread.join()  # serve until killed


if __name__ == "__main__":
    main()

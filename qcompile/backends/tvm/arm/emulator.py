"""The emulated aarch64 device: find, start and stop the TVM RPC server that `make arm-emulator`
(tools/arm_emulator.sh) runs under qemu-aarch64, and an end-to-end check that cross-compiles an int8 matmul
on this host and runs it there bit-exactly.

The server state lives in the project's git-ignored `.arm/` folder (NAME.pid, NAME.port, NAME.log; NAME is
"server" for the default device), so that the script, the tests and the ARM backend all see the same servers.
"""
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SCRIPT = os.path.join(ROOT, "tools", "arm_emulator.sh")
ARM_DIR = os.environ.get("ARM_DIR", os.path.join(ROOT, ".arm"))

# Cortex-A76 class: NEON and the int8 dot product (`sdot`), as `target="arm"` means.
DOTPROD_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
CROSS_CXX = "aarch64-linux-gnu-g++"
DEFAULT = "server"  # the device `make arm-emulator` starts and target="arm" uses without remote=


def _script(command, *options):
    """Run tools/arm_emulator.sh; the venv's Python does the wheel downloads so the versions match ours."""
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable))
    out = subprocess.run(["bash", SCRIPT, command, *options], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def running_server(name=DEFAULT):
    """(host, port) of the emulated device `name` if its server is running, else None (never starts anything)."""
    try:
        with open(os.path.join(ARM_DIR, name + ".pid")) as f:
            os.kill(int(f.read()), 0)
        with open(os.path.join(ARM_DIR, name + ".port")) as f:
            return "127.0.0.1", int(f.read())
    except (OSError, ValueError):
        return None


def log_path(name=DEFAULT):
    """The server's log: one "load_module" line per session that loaded a library."""
    return os.path.join(ARM_DIR, name + ".log")


def setup():
    """The cross toolchain, qemu-user, the arm64 sysroot and the aarch64 site (reused when done before)."""
    _script("setup")


def start_server(name=DEFAULT, tracker=None, key=None):
    """Set up the emulator if needed (reused when done before) and start the device `name`; returns
    (host, port). With tracker="host:port" and key=..., the device registers with that TVM RPC tracker and
    serves one session at a time, as a board does; alone it serves every client at once."""
    options = ["--name", name]
    if tracker is not None:
        options += ["--tracker", tracker, "--key", key or ""]
    host, port = _script("start", *options).rsplit(":", 1)
    return host, int(port)


def stop_server(name=DEFAULT):
    _script("stop", "--name", name)


def run_counted(blocks, library, report, inputs):
    """One call of `library` (an exported Relax VM library) with the .npy files `inputs`, in a fresh
    emulated Python under the instruction-counting plugin (tools/insn_count.c): executed blocks in the file
    `blocks`, where the library was mapped and which kernels ran in the JSON file `report`."""
    _script("count", str(blocks), str(library), str(report), *map(str, inputs))


def build_int8_matmul(path, m=4, n=16, k=32, target=DOTPROD_TARGET):
    """Cross-compile C[m, n] = A[m, k] (int8) . B[n, k] (int8)^T in int32 for `target`, export to `path`."""
    import tvm
    from tvm import te
    from tvm.support import cc

    a = te.placeholder((m, k), "int8", name="A")
    b = te.placeholder((n, k), "int8", name="B")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * b[j, r].astype("int32"), axis=r),
                   name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "int8_matmul")
    lib = tvm.compile(tvm.IRModule({"int8_matmul": func}), target=tvm.target.Target(target))
    lib.export_library(path, fcompile=cc.cross_compiler(CROSS_CXX))
    return path


def check_int8_matmul(host, port, workdir, m=4, n=16, k=32, seed=0):
    """Build on this host, upload, run on the device with remote arrays; return (device result, numpy)."""
    import tvm
    from tvm import rpc

    path = build_int8_matmul(os.path.join(workdir, "int8_matmul.so"), m, n, k)
    remote = rpc.connect(host, port)
    remote.upload(path)
    func = remote.load_module(os.path.basename(path))["int8_matmul"]
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k), dtype=np.int8)
    a[0, :], b[0, :] = -128, -128  # the extreme product, summed k times
    dev = remote.cpu(0)
    ra, rb = tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev)
    rc = tvm.runtime.tensor(np.zeros((m, n), np.int32), dev)
    func(ra, rb, rc)
    return rc.numpy(), a.astype(np.int32) @ b.astype(np.int32).T


if __name__ == "__main__":  # python -m qcompile.backends.tvm.arm.emulator: the end-to-end check by hand
    import tempfile

    address = running_server() or start_server()
    with tempfile.TemporaryDirectory() as d:
        got, want = check_int8_matmul(*address, d)
    assert np.array_equal(got, want), (got, want)
    print(f"int8 matmul on the emulated aarch64 device at {address[0]}:{address[1]}: bit-exact")

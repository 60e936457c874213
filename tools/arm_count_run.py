"""One call of a compiled model on the emulated aarch64 device, for instruction counting
(qcompile/backends/tvm/arm/instruction_counts.py; run by `tools/arm_emulator.sh count` under qemu-aarch64 with
the tools/insn_count.c plugin, which counts every executed block of guest code).

What the host cannot know by itself, written as JSON to OUT: where the library is mapped in this
process (qemu-user emulates the guest's /proc/self/maps, so these are the addresses the plugin sees) and
which kernels the VM called, in order.

    arm_count_run.py LIBRARY OUT INPUT.npy ...
"""
import json
import os
import sys

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

_BUILTIN = "vm.builtin."  # allocation and shape checks: VM bookkeeping, not kernels


def mappings(path):
    """[(start, end, file offset)] of `path` in this process, from /proc/self/maps."""
    real, found = os.path.realpath(path), []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real:
                start, end = (int(a, 16) for a in fields[0].split("-"))
                found.append((start, end, int(fields[2], 16)))
    return found


def call_once(library, inputs):
    """Run `main` once; return the kernels it called, in order (the VM's instrument hook sees every call)."""
    vm = VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    calls = []

    def instrument(func, symbol, before, ret, *args):
        if before and not symbol.startswith(_BUILTIN):
            calls.append(symbol)
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    vm["main"](*[tvm.runtime.tensor(x, tvm.cpu()) for x in inputs])
    return calls


def main():
    library, out, *inputs = sys.argv[1:]
    calls = call_once(library, [np.load(p) for p in inputs])
    with open(out, "w") as f:
        json.dump({"mappings": mappings(library), "calls": calls}, f)


if __name__ == "__main__":
    main()

"""Dynamic aarch64 instruction counts per kernel of an ARM build, for one call of the model on the emulated
device (emulated time means nothing, so compare "arm" with "arm-a55" by what they execute).

How: `tools/arm_emulator.sh count` runs one call of the library in a fresh emulated Python under
qemu-aarch64 with our TCG plugin (tools/insn_count.c), which counts how often every translated block of
guest code ran; the guest script (tools/arm_count_run.py) reports where the library was mapped and which
kernels the VM called. Here the blocks inside the library are turned into per-function counts with the
library's own disassembly (aarch64-linux-gnu-objdump), which also name every counted
instruction, so any mnemonic (sdot, smull, ...) can be counted without teaching the plugin encodings.

Counted: instructions inside the model library (each kernel's packed-function wrapper `__tvm_ffi_K` and its
body `K_compute_`). Not counted: the VM, the TVM runtime and libc (memcpy, memset) the kernels call into.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import profile
from ..pipeline import KERNELS, LIBRARY
from . import emulator

_WRAPPER, _BODY = "__tvm_ffi_", "_compute_"  # how TVM's LLVM codegen names a kernel's two functions
_HEADER = re.compile(r"^[0-9a-f]+ <(.+)>:$")  # objdump -d: a symbol, then its instructions
_INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\t(\S+)")


@dataclass
class KernelCounts:
    """What one kernel executed in one call of the model, summed over its calls."""

    calls: int = 0
    instructions: int = 0
    mnemonics: Counter = field(default_factory=Counter)

    @property
    def per_call(self) -> int:
        """FuseOps shares one kernel among calls of the same shapes, so every call executes the same."""
        return self.instructions // max(self.calls, 1)


@dataclass
class InstructionCounts:
    """One call of a model: every function of its library that ran, by kernel (start-up code under its own name)."""

    kernels: dict[str, KernelCounts]  # in the order of their first call
    calls: list[str]  # the kernels the VM called, in order

    @property
    def total(self) -> int:
        return sum(k.instructions for k in self.kernels.values())

    def count(self, mnemonic: str) -> int:
        return sum(k.mnemonics[mnemonic] for k in self.kernels.values())


@dataclass(frozen=True)
class Call:
    """One kernel call of `main` and the report layers it computes (profile.CallSite), with its counts."""

    kernel: str
    layers: tuple[str, ...]
    instructions: int
    sdot: int


def calls_with_layers(counts: InstructionCounts, sites: list[profile.CallSite]) -> list[Call]:
    """Every kernel call in order, with its layers from the artifact's kernels.json. A kernel called several
    times gets an equal share of its counts per call: the calls of one kernel have the same shapes."""
    # The profile's matching of planned calls to those that ran (some planned kernels became VM builtins).
    layers = profile.align([(k, 0.0) for k in counts.calls], sites)
    return [Call(k, ls, counts.kernels[k].per_call, counts.kernels[k].mnemonics["sdot"] // counts.kernels[k].calls)
            for k, ls in zip(counts.calls, layers)]


def count_artifact(directory: str | Path, inputs) -> tuple[InstructionCounts, list[Call]]:
    """count_instructions of a saved ARM model, and its calls with the layers each computes."""
    counts = count_instructions(directory, inputs)
    return counts, calls_with_layers(counts, profile.load_sites(Path(directory) / KERNELS))


def count_instructions(artifact: str | Path, inputs: list[torch.Tensor | np.ndarray]) -> InstructionCounts:
    """Instructions each kernel of `artifact` (a saved ARM model's directory, or its model.so) executes
    in one call of `main` with `inputs`, on the emulated aarch64 device."""
    library = Path(artifact)
    library = library / LIBRARY if library.is_dir() else library
    with tempfile.TemporaryDirectory(prefix="qcompile-insn-") as work:
        blocks, info = _run_counted(library.resolve(), [_as_numpy(x) for x in inputs], Path(work))
    executed = _executed(blocks, _load_bias(info["mappings"]), _disassemble(library))
    return _by_kernel(executed, info["calls"])


def _as_numpy(x) -> np.ndarray:
    return x.detach().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)


def _run_counted(library: Path, inputs: list[np.ndarray], work: Path) -> tuple[list[tuple[int, int, int]], dict]:
    """One call under qemu with the plugin: ([(block start, instructions, executions)], the guest's report)."""
    paths = []
    for i, x in enumerate(inputs):
        paths.append(str(work / f"input{i}.npy"))
        np.save(paths[-1], x)
    blocks, info = work / "blocks.txt", work / "info.json"
    emulator.run_counted(blocks, library, info, paths)
    rows = [line.split() for line in blocks.read_text().splitlines()]
    return [(int(a, 16), int(n), int(c)) for a, n, c in rows], json.loads(info.read_text())


def _load_bias(mappings: list[list[int]]) -> int:
    """Where the library's address 0 is in the guest. The linker puts the first (code) segment at address
    0 of the file and of the library, so it is the mapping of file offset 0."""
    starts = [start for start, _end, offset in mappings if offset == 0]
    if not starts:
        raise RuntimeError(f"the library was not mapped in the emulated process: {mappings}")
    return starts[0]


def _objdump(library: Path):
    """(function, address, mnemonic) of every instruction of the library, and (function, None, None) at
    each symbol, from `aarch64-linux-gnu-objdump -d`."""
    out = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                         check=True, capture_output=True, text=True).stdout
    function = "(no symbol)"
    for line in out.splitlines():
        if m := _HEADER.match(line):
            function = m[1]
            yield function, None, None
        elif m := _INSTRUCTION.match(line):
            yield function, int(m[1], 16), m[2]


def functions(library: str | Path) -> dict[str, list[str]]:
    """Function name -> its instruction mnemonics, in order: what a kernel was compiled into."""
    funcs: dict[str, list[str]] = {}
    for function, _address, mnemonic in _objdump(Path(library)):
        ops = funcs.setdefault(function, [])
        if mnemonic is not None:
            ops.append(mnemonic)
    return funcs


def _disassemble(library: Path) -> dict[int, tuple[str, str]]:
    """Library address -> (function, mnemonic) of every instruction in it. objdump names each instruction
    by the symbol before it, which is what we want for code without a symbol of its own: TVM's parallel
    bodies (`__tvm_parallel_lambda`, private, hence unnamed in the library) follow the `K_compute_` that
    launches them, and that is where the GEMM inner loops are."""
    return {address: (function, mnemonic) for function, address, mnemonic in _objdump(library) if address is not None}


def _executed(blocks, bias: int, code: dict[int, tuple[str, str]]) -> dict[str, Counter]:
    """Function -> Counter of executed mnemonics, over the blocks that ran inside the library's code.
    aarch64 instructions are 4 bytes, so a block of n instructions covers [start, start + 4n)."""
    executed: dict[str, Counter] = {}
    for start, n, times in blocks:
        for address in range(start - bias, start - bias + 4 * n, 4):
            if address not in code:
                break  # not the library's code (the interpreter, libc, the TVM runtime)
            function, mnemonic = code[address]
            executed.setdefault(function, Counter())[mnemonic] += times
    return executed


def kernel_of(function: str) -> str:
    """The kernel a function belongs to: `__tvm_ffi_K` (argument unpacking) and `K_compute_` (the body) are K."""
    if function.startswith(_WRAPPER):
        return function[len(_WRAPPER):]
    return function[:-len(_BODY)] if function.endswith(_BODY) else function


def _by_kernel(executed: dict[str, Counter], calls: list[str]) -> InstructionCounts:
    kernels = {name: KernelCounts() for name in calls}  # dicts keep first-call order
    for name in calls:
        kernels[name].calls += 1
    for function, mnemonics in executed.items():
        k = kernels.setdefault(kernel_of(function), KernelCounts())
        k.mnemonics.update(mnemonics)
        k.instructions += sum(mnemonics.values())
    return InstructionCounts(kernels, calls)

"""TVM's generated CUDA kernels run on this CPU (cuda_emulator.h), to check their results where there is no GPU.

What the GPU would compute, thread by thread: the kernel's CUDA source is compiled by the host's C++
compiler against a header that models CUDA's types, built-in variables, barriers, shuffles and the inline PTX
the kernels use (cp.async, ldmatrix, mma, lop3, prmt); each thread of a block runs as a fiber. Integer results
are the GPU's bit for bit; float ones differ only in the order mma sums its products.

Races show as wrong results under some schedule, so a check runs every one in SCHEDULES:
- `copies="lazy"` delays every cp.async until a wait lets it land, `"eager"` lands it at once: a pipeline that
  reads a stage before waiting for it, or overwrites one still being read, fails in one of the two;
- `order="lockstep"` resumes each thread in turn at every barrier, `"ascending"` / `"descending"` always the
  lowest / highest thread that can run, so that one warp runs ahead of the others as far as its barriers let
  it: a missing __syncthreads or warp barrier shows in one of them.
Blocks run one after another, so kernels whose blocks talk to each other are out of scope.

    kernels = EmulatedKernels(kernel_build.source)
    kernels.launch("main_kernel", grid, block, {"X": x, "Y": y, "M": 1}, copies="lazy")

`launch_dims(prim_func, M=1)` gives (grid, block) from a scheduled PrimFunc's thread bindings.

Whole models: inside `emulated_gpu()`, on a machine without an NVIDIA driver, a target="cuda" model runs
through TVM's own CUDA runtime, whose driver and runtime libraries are stand-ins (driver_stub.c,
runtime_stub.c) that serve memory from the host and launch each kernel here:

    with emulated_gpu():
        y = compiled(x)   # every kernel of the cubin, emulated
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime import CACHE, stand_in_driver

HEADER = Path(__file__).with_name("cuda_emulator.h")
_CACHE = CACHE / "cuda-emulator"
# Headers the generated source includes; the emulator's own header stands in for all of them.
_CUDA_HEADERS = ("cuda.h", "cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h", "mma.h", "math_constants.h")
_COMPILE = ["g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-fno-strict-aliasing", "-w",
            "-D__CUDACC_VER_MAJOR__=13", "-D__CUDACC_VER_MINOR__=0"]
COPY_MODES = {"eager": 0, "lazy": 1}
ORDERS = {"lockstep": 0, "ascending": 1, "descending": 2}
# (copies, order) pairs that between them expose the races above
SCHEDULES = [("eager", "lockstep"), ("lazy", "lockstep"), ("eager", "ascending"), ("lazy", "descending")]


class EmulationError(RuntimeError):
    """The kernel cannot be emulated, or its emulation failed (a deadlock, an unmodelled instruction)."""


def _schedule(copies: str, order: str) -> tuple[int, int]:
    """The emulator's codes for a schedule's names (COPY_MODES, ORDERS)."""
    for what, value, allowed in (("copies", copies, COPY_MODES), ("order", order, ORDERS)):
        if value not in allowed:
            raise EmulationError(f"{what} must be one of {sorted(allowed)}, not {value!r}")
    return COPY_MODES[copies], ORDERS[order]


# ------------------------------------------------------------------ the inline PTX, as calls of emu::ptx
_ASM = re.compile(r"\b(?:asm|__asm__)\s*(?:volatile\b|__volatile__\b)?\s*\(")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OPERAND = re.compile(r"%(\d+)|(-?(?:0x[0-9a-fA-F]+|\d+))")


def _closing(text: str, start: int) -> int:
    """Index of the ')' closing the parenthesis opened just before `start` (string literals skipped)."""
    depth, i = 1, start
    while depth:
        if text[i] == '"':
            i = _STRING.match(text, i).end()
            continue
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return i - 1


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` outside parentheses and string literals."""
    parts, depth, i, start = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _STRING.match(text, i).end()
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


def _operands(text: str) -> list[tuple[str, str]]:
    """(constraint, expression) of each `"c"(expr)` in one operand list of an asm statement."""
    found = []
    for item in filter(str.strip, _split_top(text, ",")):
        m = re.match(r'\s*"([^"]*)"\s*\((.*)\)\s*$', item, re.S)
        if not m:
            raise EmulationError(f"cannot read asm operand {item.strip()!r}")
        found.append((m.group(1), m.group(2)))
    return found


def _ptx_call(statement: str) -> str:
    """The emu::ptx call an asm statement's inside (template : outputs : inputs : clobbers) becomes."""
    parts = _split_top(statement, ":")
    template = "".join(_STRING.findall(parts[0])).replace("\\n", " ").replace("\\t", " ").strip().rstrip(";").strip()
    if ";" in template or template.startswith("{"):
        raise EmulationError(f"the emulator models one PTX instruction per asm statement, not {template!r}")
    outputs = _operands(parts[1]) if len(parts) > 1 else []
    inputs = _operands(parts[2]) if len(parts) > 2 else []
    opcode, rest = re.match(r"([\w.]+)(.*)", template, re.S).groups()
    args = []
    for m in _OPERAND.finditer(rest):
        if m.group(2) is not None:
            args.append(m.group(2))
            continue
        index = int(m.group(1))
        if index < len(outputs):
            args.append(f"&({outputs[index][1]})")
        else:
            args.append(f"({inputs[index - len(outputs)][1]})")
    return f"::emu::ptx::{opcode.replace('.', '_')}({', '.join(args)})"


def _rewrite_asm(source: str) -> str:
    out, pos = [], 0
    for m in _ASM.finditer(source):
        if m.start() < pos:
            continue
        end = _closing(source, m.end())
        out += [source[pos:m.start()], _ptx_call(source[m.end():end])]
        pos = end + 1
    return "".join(out) + source[pos:]


# ------------------------------------------------------------------ kernels and their entry points
# __shared__ is `static` here, which must come after alignas
_STATIC_SHARED = re.compile(r"__shared__\s+(alignas\(\d+\))")
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];")
_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(([^)]*)\)\s*\{')


@dataclass(frozen=True)
class Param:
    ctype: str  # without __restrict__
    name: str

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def buffer(self) -> str:
        """The TIR buffer a pointer parameter holds (TVM names it <buffer>_ptr), or the scalar's name."""
        return self.name[:-4] if self.is_pointer and self.name.endswith("_ptr") else self.name


_ITEM_BYTES = {"half": 2, "float": 4, "double": 8, "int": 4, "uint": 4, "uchar": 1, "signed char": 1, "char": 1,
               "short": 2, "ushort": 2, "int64_t": 8, "long long": 8, "bool": 1, "int8_t": 1, "uint8_t": 1}
_SCALARS = {"int": ctypes.c_int32, "int64_t": ctypes.c_int64, "long long": ctypes.c_int64, "float": ctypes.c_float,
            "uint": ctypes.c_uint32, "double": ctypes.c_double}


def _params(text: str) -> list[Param]:
    params = []
    for item in filter(str.strip, text.split(",")):
        m = re.match(r"\s*(.*?)\s*(\w+)\s*$", item.replace("__restrict__", ""))
        params.append(Param(re.sub(r"\s+", " ", m.group(1)).replace(" *", "*"), m.group(2)))
    return params


def _entry(name: str, params: list[Param]) -> str:
    """extern "C" emu_launch_<name>(grid, block, copy mode, order, args, error): args as cuLaunchKernel's
    kernelParams, args[i] pointing at the i-th argument's value."""
    call = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(params))
    return (f'\nextern "C" int emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
            f"unsigned bz, int mode, int order, void** args, char* error, int error_size) {{\n"
            f"  return ::emu::launch({{gx, gy, gz}}, {{bx, by, bz}}, mode, order, [](void** a) {{ {name}({call}); }}, args, "
            f"error, error_size);\n}}\n")


def translate(source: str) -> tuple[str, dict[str, list[Param]]]:
    """The host C++ for a generated CUDA source, and each kernel's parameters."""
    kernels = {m.group(1): _params(m.group(2)) for m in _KERNEL.finditer(source)}
    if not kernels:
        raise EmulationError("the source defines no extern \"C\" __global__ kernel")
    body = _DYNAMIC_SHARED.sub(r"\1* \2 = (\1*)::emu::dyn_shared_memory;", _rewrite_asm(source))
    body = _STATIC_SHARED.sub(r"\1 __shared__", body)
    return body + "".join(_entry(name, params) for name, params in kernels.items()), kernels


# ------------------------------------------------------------------ building and launching
def _build(code: str) -> Path:
    """The shared library of translated code, cached by content."""
    key = hashlib.sha256((HEADER.read_text() + code + " ".join(_COMPILE)).encode()).hexdigest()[:24]
    library = _CACHE / key / "kernels.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    for header in _CUDA_HEADERS:
        (library.parent / header).write_text("// stands in for CUDA's header: cuda_emulator.h is included first\n")
    cc = library.with_name("kernels.cc")
    cc.write_text(code)
    partial = library.with_suffix(f".{os.getpid()}")
    done = subprocess.run([*_COMPILE, f"-I{library.parent}", "-include", str(HEADER), "-o", str(partial), str(cc)],
                          capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})  # ASCII quotes in messages
    if done.returncode:
        missing = re.search(r"'(\w+)' is not a member of 'emu::ptx'", done.stderr)
        if missing:
            raise EmulationError(f"the emulator has no model of the PTX instruction {missing.group(1).replace('_', '.')}")
        raise EmulationError(f"the emulated kernels do not compile ({cc}):\n{done.stderr[-3000:]}")
    partial.replace(library)  # atomic: parallel test sessions may build the same kernels
    return library


class EmulatedKernels:
    """The kernels of one generated CUDA source, built for this CPU."""

    def __init__(self, source: str):
        code, self.params = translate(source)
        self._library = ctypes.CDLL(str(_build(code)))

    def launch(self, kernel: str, grid: tuple[int, ...], block: tuple[int, ...], args: dict, copies: str = "eager",
               order: str = "lockstep") -> None:
        """Runs `kernel` over `grid` x `block` with `args` by TIR name (buffers: C-contiguous numpy arrays,
        written in place; scalars: numbers). `copies` in COPY_MODES, `order` in ORDERS (the module docstring)."""
        if kernel not in self.params:
            raise EmulationError(f"no kernel {kernel!r} in the source (it has {sorted(self.params)})")
        mode, thread_order = _schedule(copies, order)
        keep, pointers = [], []
        for p in self.params[kernel]:
            if p.buffer not in args:
                raise EmulationError(f"{kernel} needs the argument {p.buffer!r}")
            pointers.append(self._argument(p, args[p.buffer], keep))
        error = ctypes.create_string_buffer(512)
        entry = getattr(self._library, f"emu_launch_{kernel}")
        dims = [*(tuple(grid) + (1,) * 3)[:3], *(tuple(block) + (1,) * 3)[:3]]
        if entry(*(ctypes.c_uint(d) for d in dims), ctypes.c_int(mode), ctypes.c_int(thread_order),
                 (ctypes.c_void_p * len(pointers))(*pointers), error, ctypes.c_int(len(error))):
            raise EmulationError(f"{kernel}: {error.value.decode()}")

    @staticmethod
    def _argument(p: Param, value, keep: list) -> int:
        """The address of the argument's value (a buffer's is its data pointer), kept alive by `keep`."""
        if p.is_pointer:
            if not isinstance(value, np.ndarray) or not value.flags.c_contiguous:
                raise EmulationError(f"{p.buffer!r} must be a C-contiguous numpy array")
            item = _ITEM_BYTES.get(p.ctype[:-1])
            if item is not None and value.itemsize != item:
                raise EmulationError(f"{p.buffer!r} is {p.ctype[:-1]} ({item} bytes) in the kernel, {value.dtype} in the call")
            boxed = ctypes.c_void_p(value.ctypes.data)
        else:
            boxed = _SCALARS[p.ctype](value)
        keep.append(boxed)
        return ctypes.addressof(boxed)


def launch_dims(func, **sizes: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) of a scheduled PrimFunc: the extents of its loops bound to blockIdx / threadIdx, with its
    symbolic sizes (M, ...) given by name."""
    dims = {}

    def visit(node) -> None:
        binding = getattr(node, "thread_binding", None)
        if binding is not None:
            dims[binding.thread_tag] = _evaluate(node.extent, sizes)
        for field in ("body", "block", "then_case", "else_case"):
            child = getattr(node, field, None)
            if child is not None:
                visit(child)
        for child in getattr(node, "seq", ()):
            visit(child)

    visit(func.body)
    return tuple(dims.get(f"blockIdx.{a}", 1) for a in "xyz"), tuple(dims.get(f"threadIdx.{a}", 1) for a in "xyz")


def _evaluate(expr, sizes: dict) -> int:
    import tvm
    from tvm.tirx.analysis import undefined_vars

    analyzer = tvm.sym.Analyzer()
    for var in undefined_vars(expr):
        if var.name not in sizes:
            raise EmulationError(f"launch_dims needs a value for {var.name}")
        analyzer.bind(var, sizes[var.name])
    return int(analyzer.simplify(expr))


@contextlib.contextmanager
def emulated_gpu(copies: str = "eager", order: str = "lockstep"):
    """Inside: CUDA kernels launched through TVM's runtime run on the emulator (the module docstring).
    Each model registers its kernels (register_kernels) when it first runs."""
    mode, thread_order = _schedule(copies, order)
    driver = stand_in_driver()
    driver.qcompile_emulation(1, mode, thread_order)
    try:
        yield
    finally:
        driver.qcompile_emulation(0, 0, 0)


def register_kernels(directory: Path) -> None:
    """Have the emulated driver load, for the cubin in `directory` (a KernelBuild's: kernels.cubin, kernels.cu),
    its kernels compiled for this CPU."""
    cubin, source = directory / "kernels.cubin", directory / "kernels.cu"
    if not (cubin.is_file() and source.is_file()):
        raise EmulationError(f"{directory} has no kernels.cubin and kernels.cu to emulate")
    library = _build(translate(source.read_text())[0])
    if stand_in_driver().qcompile_register_module(cubin.read_bytes(), str(library).encode()):
        raise EmulationError(f"{cubin} is not a cubin the emulated driver can register")

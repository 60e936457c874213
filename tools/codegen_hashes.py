"""SHA-256 of the code MobileNetV2's x86, arm and cuda builds generate: the scheduled TIR module each target
hands to tvm.compile, and for cuda also every file of the kernels' CUDA source, PTX and ptxas report the
artifact keeps (ptxas's compile times left out). A change meant to move code without changing behaviour
keeps every line identical:

    python tools/codegen_hashes.py > before.txt   # on the old commit
    python tools/codegen_hashes.py > after.txt    # on the new one
    diff before.txt after.txt

Uses only the public API (qcompile.compile and save), and records what reaches tvm.compile by wrapping it,
so the same script runs on both sides of a change of the package's layout. arm needs the aarch64 cross
compiler (`make arm-emulator` installs it); cuda needs nvcc, not a GPU. x86 builds for this host's CPU:
compare hashes from one machine.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import torch
import tvm

import qcompile
from qcompile.zoo.mobilenet_v2 import mobilenet_v2

TARGETS = ("x86", "arm", "cuda")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def generated_bytes(path: Path) -> bytes:
    """The file's bytes; ptxas's report without its compile times, which vary from run to run."""
    if path.name != "ptxas.log":
        return path.read_bytes()
    return "".join(line for line in path.read_text().splitlines(keepends=True) if "Compile time" not in line).encode()


class RecordCompiles:
    """Every module passed to tvm.compile while active, as TVMScript text."""

    def __init__(self):
        self.scripts: list[str] = []
        self._compile = tvm.compile

    def __enter__(self):
        def compile_and_record(mod, *args, **kwargs):
            self.scripts.append(mod.script())
            return self._compile(mod, *args, **kwargs)

        tvm.compile = compile_and_record
        return self

    def __exit__(self, *exc):
        tvm.compile = self._compile


def hashes(target: str, model, example, calibration) -> list[str]:
    with RecordCompiles() as record:
        compiled = qcompile.compile(model, example, target=target, calibration=calibration, progress=False)
    lines = [f"{target} tir[{i}] {digest(s.encode())}" for i, s in enumerate(record.scripts)]
    if target == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            sources = compiled.save(Path(tmp) / "artifact") / "cuda"
            for f in sorted(p for p in sources.rglob("*") if p.is_file()):
                lines.append(f"{target} {f.relative_to(sources)} {digest(generated_bytes(f))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:  # (argparse's choices= rejects an empty list with nargs="*" on Python 3.11)
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    torch.manual_seed(0)
    model = mobilenet_v2().eval()
    example = (torch.randn(1, 3, 224, 224),)
    calibration = [torch.randn(1, 3, 224, 224) for _ in range(2)]
    for target in args.targets or TARGETS:
        for line in hashes(target, model, example, calibration):
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())

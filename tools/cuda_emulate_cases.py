"""Every GPU case (tests/backends/tvm/cuda/cases.py: what tools/cuda_device_check.sh compares on a GPU) run here,
each kernel on the CPU emulator of the CUDA kernels, against the reference backend:

    .venv/bin/python tools/cuda_emulate_cases.py [--copies lazy] [--order descending] [NAME...]

Prints each case's largest difference and its bound; exits 1 if any case is outside it."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompile.backends.tvm.cuda.emulator.kernels import COPY_MODES, ORDERS
from tests.backends.tvm.cuda.cases import emulated_difference, gpu_cases  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="cases to run (default: all)")
    parser.add_argument("--copies", choices=sorted(COPY_MODES), default="eager")
    parser.add_argument("--order", choices=sorted(ORDERS), default="lockstep")
    args = parser.parse_args(argv)
    cases = [c for c in gpu_cases() if not args.names or c.name in args.names]
    failed = 0
    print(f"{'case':40} {'max difference':>15} {'bound':>8}  seconds")
    for case in cases:
        start = time.time()
        difference = emulated_difference(case, copies=args.copies, order=args.order)
        ok = difference <= case.atol
        failed += not ok
        print(f"{case.name:40} {difference:15.2e} {case.atol:8.0e}  {time.time() - start:5.1f}"
              f"{'' if ok else '  OUTSIDE THE BOUND'}", flush=True)
    print(f"{len(cases) - failed} of {len(cases)} within their bounds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

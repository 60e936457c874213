"""Scratch: a few more GEMV configs for N=28672, K=8192 (w4), in the kernel bench's format."""
import json, shutil, sys, tvm
from pathlib import Path
from qcompile.backends.tvm import cuda, cuda_build
from qcompile.backends.tvm.cuda_gemv import GemvConfig, gemv_prim_func, default_config
from qcompile.backends.tvm.cuda_weight_codes import CODES
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
index = []
m, n, k = 1, 28672, 8192
cfgs = [default_config(1, n, k)] + [GemvConfig(r, w, 1, u, s) for r, w, u, s in
        [(4, 8, 2, 2), (4, 8, 4, 1), (2, 8, 2, 1), (4, 8, 1, 1), (2, 16, 2, 1), (4, 16, 1, 1), (4, 16, 2, 1), (2, 8, 4, 2), (4, 4, 2, 2), (2, 16, 4, 1), (8, 8, 1, 2)]]
for cfg in cfgs:
    name = f"m{m}_n{n}_k{k}_w4_r{cfg.rows}w{cfg.warps}b1u{cfg.unroll}s{cfg.split_k}"
    lib, kb = cuda.compile_module(tvm.IRModule({"main": gemv_prim_func(n, k, 128, CODES[4], cfg)}), cuda_build.target(), out / "sources" / name)
    lib.export_library(str(out / f"{name}.so"))
    index.append(dict(name=name, m=m, n=n, k=k, bits=4, default=cfg == cfgs[0], group=128, spills=kb.spills(), registers=kb.registers()))
    print(name, kb.registers(), kb.spills(), flush=True)
(out / "index.json").write_text(json.dumps(index, indent=1))
shutil.rmtree(out / "sources")

"""Everything a GPU machine needs to check and time target="cuda", built here (no GPU needed):

    .venv/bin/python tools/cuda_bundle.py [--out .gpu] [--only NAME...]

- `site/`: TVM's runtime for the GPU machine's Python 3.12 (this venv's tvm package without its compiler
  library, headers and sources; the cp312 apache-tvm-ffi wheel unpacked): `TVM_USE_RUNTIME_LIB=1`.
- `cases/NAME/`: one built model each (`model.so`, with its cubin), its inputs and the "reference" backend's
  outputs (`io.pt`), and `case.json` (how to compare, how to time, which torch peer to time beside it).
- `gemm/`, `gemv/`: the kernel benches' libraries (bench/cuda/gemm.py, bench/cuda/int4_gemv.py).

The GPU machine's working tree travels with the bundle (device tool: carry .gpu); there
`bash tools/cuda_device_check.sh` runs the bit-exactness tests (tests/gpu) and the benches. The bundle must stay under the device
tool's 64 MiB (what cannot fit, such as a 4096x28672 weight, is made on the GPU machine instead).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qcompile  # noqa: E402

BUNDLE_LIMIT = 62 * 2**20
# What the runtime-only TVM never imports (checked: sys.modules after loading and running a model), or
# only the compiler needs.
_SITE_SKIP = ("3rdparty", "src", "include", "__pycache__", "libtvm_compiler.so", "cython", "share", "*.a",
              "relax", "s_tir", "topi", "web", "testing", "exec", "cmake")

CASES: dict[str, Callable[[Path], dict]] = {}


def build_site(site: Path) -> None:
    """The runtime-only TVM for CPython 3.12 on x86-64."""
    import tvm
    import tvm_ffi

    shutil.rmtree(site, ignore_errors=True)
    ignore = shutil.ignore_patterns(*_SITE_SKIP)
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=ignore)
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", wheels, f"apache-tvm-ffi=={tvm_ffi.__version__}"],
                       check=True)
        for wheel in Path(wheels).glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(site)
    for unused in [site / "tvm_ffi" / name for name in ("3rdparty", "src", "include", "cython", "share")]:
        shutil.rmtree(unused, ignore_errors=True)


def save_case(directory: Path, cm, inputs: list[torch.Tensor], expected: tuple, **spec) -> dict:
    """Keep only what the GPU machine reads: the library, the inputs and the expected outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        cm.save(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "model.so", directory / "model.so")
    # clone: a slice saved as is would bring its whole storage along
    torch.save({"inputs": [t.clone() for t in inputs], "expected": [t.clone() for t in expected]}, directory / "io.pt")
    return spec


def _compiled_pair(model, example, calibration, gpu_options: dict | None = None, **options):
    """The model compiled for the reference and for CUDA (with the CUDA backend's `gpu_options` too)."""
    ref = qcompile.compile(model, example, target="reference", calibration=calibration, progress=False, **options)
    gpu = qcompile.compile(model, example, target="cuda", calibration=calibration, progress=False,
                           **options, **(gpu_options or {}))
    return ref, gpu


def _outputs(cm, inputs) -> tuple:
    out = cm(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# End to end at a static batch of 1 and of 64: every kernel on the schedule TVM checked (a free batch
# fused with fixed sizes is scheduled without its checks; the *_free_batch cases test that path).
E2E_BATCHES = (1, 64)


# MiniLM's mean pooling and normalization run in float after its last integer kernel: the GPU sums in its
# own order (1-ulp differences, 1.2e-7, on the H200: bench/results/cuda/2026-11-26-h200-4), so its outputs
# are compared within this bound, far below one quantization step of the pooled activations.
MINILM_ATOL = 1e-5


def _within(atol: float) -> dict:
    """A case's `compare`: outputs within `atol` of the reference's."""
    return {"rtol": 0.0, "atol": atol}


def _end_to_end(model, calibration, inputs: list[torch.Tensor], dims: dict, batch: int, compare="exact", **spec):
    """The model built for "cuda" at a static `batch`; the expected outputs come from the reference
    backend (built with a free batch) on the few distinct rows of `inputs`, which the GPU machine repeats
    to `batch` rows (a 64-image input would not fit the bundle)."""
    def build(directory: Path) -> dict:
        example = [t[:1].expand(batch, *t.shape[1:]).contiguous() for t in inputs]
        # Both from the same calibration batches: scales from differently batched data differ in their last
        # bits (seen as 1e-6 differences of MobileNetV2's logits at batch 64 on the H200).
        batches = _rebatched(calibration, batch)
        gpu = qcompile.compile(model, tuple(example), target="cuda", calibration=batches, progress=False)
        ref = qcompile.compile(model, tuple(t[:2] for t in inputs), target="reference", calibration=batches,
                               dynamic_shapes=dims, progress=False)
        return save_case(directory, gpu, inputs, _outputs(ref, inputs), compare=compare, batch=batch, **spec)
    return build


def _rebatched(calibration, batch: int) -> list[tuple]:
    """The calibration rows in batches of exactly `batch` (a static batch takes no other size), the last
    one completed with rows from the start: min/max statistics are those of the rows themselves."""
    items = [item if isinstance(item, tuple) else (item,) for item in calibration]
    columns = [torch.cat(parts) for parts in zip(*items)]
    rows = columns[0].shape[0]
    order = [i % rows for i in range(-(-rows // batch) * batch)]
    return [tuple(c[order[i:i + batch]] for c in columns) for i in range(0, len(order), batch)]


def _mobilenet_v2_cases() -> None:
    """Real weights and images (2 of them: the bundle has no room for more)."""
    from qcompile.zoo.evaluate import mobilenet_setup

    model, _, calibration, views, *_ = mobilenet_setup()
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
    for batch in E2E_BATCHES:
        CASES[f"mobilenet_v2_b{batch}"] = _end_to_end(model, calibration, [views[:2].clone()], dims, batch,
                                                      peer="mobilenet_v2", input_shape=[3, 224, 224])


def _minilm_cases() -> None:
    """all-MiniLM-L6-v2 (real weights) on 4 sentences at sequence length 128.

    Its float word-embedding table (30522 x 384, 47 MB) would not fit the bundle twice: the bundled model's
    table holds the rows of the tokens in its inputs only, and the inputs are renumbered into it, so its
    outputs are the full model's on those inputs (likewise the position table: the first 128 rows). The
    gather reads one row per token whatever the table's size, so the time is the full model's."""
    from qcompile.zoo.minilm import load_minilm, model_dir

    # transformers' default attention (sdpa): float, as attention_lowering.py lowers it. With BERT's eager attention
    # (Q.K^T and P.V quantized, on tensor cores) the float softmax is quantized, and the reference's and
    # another backend's float rounding put some probabilities on different sides of a quantization step
    # (x86 against the reference: 0.02 apart at sequence 128), so no tight bound would hold; the int8
    # attention cases of test_cuda_matmul are bit-exact and cover its kernels.
    embedder, tok = load_minilm()
    sentences = ["a wonderful, moving film", "the plot was dull and predictable", "I loved the acting", "not worth the ticket"]
    b = tok(sentences, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    used, ids = torch.unique(b["input_ids"], return_inverse=True)
    embeddings = embedder.m.embeddings
    embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(embeddings.word_embeddings.weight[used].detach(), freeze=True)
    # Positions 0..127 only (a sequence is 128 long): 0.6 MB less per case.
    embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(embeddings.position_embeddings.weight[:128].detach(), freeze=True)
    calibration = [(ids[2:], b["attention_mask"][2:])]
    batch = torch.export.Dim("batch", min=1, max=64)
    dims = {"ids": {0: batch}, "mask": {0: batch}}
    config = json.loads((model_dir() / "config.json").read_text())
    for n in E2E_BATCHES:
        CASES[f"minilm_b{n}"] = _end_to_end(embedder, calibration, [ids, b["attention_mask"]], dims, n,
                                            compare=_within(MINILM_ATOL), peer="minilm", config=config)


# The weight-only GEMV's 4096-wide models would take 4-16 MB of the bundle each: the kernel bench
# (bench/cuda/int4_gemv.py, weights made on the GPU machine) checks those shapes instead.
_TOO_BIG = {"linear_4096_w4_m1", "linear_4096_w8_m1", "mlp_1024x4096_w4_m1"}


def _test_case(model, example, calibration, kwargs, compare, gpu_options: dict | None = None):
    def build(directory: Path) -> dict:
        ref, gpu = _compiled_pair(model, example, calibration, gpu_options, **kwargs)
        return save_case(directory, gpu, list(example), _outputs(ref, list(example)), compare=compare)
    return build


def _register_test_cases() -> None:
    """The GPU cases of the CUDA kernel tests (tests/backends/tvm/cuda/cases.py), but those too big to carry."""
    from tests.backends.tvm.cuda.cases import gpu_cases

    for case in gpu_cases():
        if case.name not in _TOO_BIG:
            compare = "exact" if case.atol == 0.0 else _within(case.atol)
            CASES[case.name] = _test_case(case.model, case.example, case.calibration, case.options, compare,
                                          case.gpu_options)


# Kernel benches: built here, their data made on the GPU machine (bench/<file> build DIR / run DIR).
KERNEL_BENCHES = {"gemm": "cuda/gemm.py", "gemv": "cuda/int4_gemv.py"}


def build_kernel_bench(name: str, directory: Path) -> None:
    """One kernel bench's libraries, without the sources nvcc compiled (kept only for inspection)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / KERNEL_BENCHES[name])
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shutil.rmtree(directory, ignore_errors=True)
    bench.build(directory)
    shutil.rmtree(directory / "sources")


def main(argv=None) -> None:
    _mobilenet_v2_cases()
    _minilm_cases()
    _register_test_cases()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--only", nargs="*", help="build these cases only (default: all)")
    ap.add_argument("--no-site", action="store_true", help="keep the existing site/")
    ap.add_argument("--no-kernels", action="store_true", help="keep the existing kernel benches (gemm/, gemv/)")
    args = ap.parse_args(argv)
    if not args.no_site:
        build_site(args.out / "site")
    if not args.no_kernels:
        for name in KERNEL_BENCHES:
            build_kernel_bench(name, args.out / name)
    unknown = set(args.only or ()) - set(CASES)
    if unknown:
        ap.error(f"no case {', '.join(sorted(unknown))}; the cases: {', '.join(sorted(CASES))}")
    for name in args.only or sorted(CASES):
        directory = args.out / "cases" / name
        shutil.rmtree(directory, ignore_errors=True)
        spec = CASES[name](directory)
        (directory / "case.json").write_text(json.dumps({"name": name, **spec}, indent=1))
        print(f"built {name}")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    if size > BUNDLE_LIMIT:
        sys.exit(f"the bundle is over {BUNDLE_LIMIT / 2**20:.0f} MiB: the device tool carries at most 64 MiB with the working tree")


if __name__ == "__main__":
    main()

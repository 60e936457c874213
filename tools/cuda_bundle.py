"""Everything a GPU machine needs to check and time target="cuda", built here (no GPU needed):

    .venv/bin/python tools/cuda_bundle.py [--out .gpu] [--only NAME...]

- `site/`: TVM's runtime for the GPU machine's Python 3.12 (this venv's tvm package without its compiler
  library, headers and sources; the cp312 apache-tvm-ffi wheel unpacked): `TVM_USE_RUNTIME_LIB=1`.
- `cases/NAME/`: one built model each (`model.so`, with its cubin), its inputs and the "reference" backend's
  outputs (`io.pt`), and `case.json` (how to compare, how to time, which torch peer to time beside it).

The GPU machine's working tree travels with the bundle (device tool: carry .gpu); there
`python3 bench/cuda.py .gpu` prints the checks and the side-by-side table, and
`python3 -m pytest -m gpu tests/gpu` runs the bit-exactness tests. The bundle must stay under the device
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

BUNDLE_LIMIT = 60 * 2**20
# What the runtime-only TVM never imports (checked: sys.modules after loading and running a model), or
# only the compiler needs.
_SITE_SKIP = ("3rdparty", "src", "include", "__pycache__", "libtvm_compiler.so", "cython", "share", "*.a",
              "relax", "s_tir", "topi", "web", "testing", "exec", "cmake")

CASES: dict[str, Callable[[Path], dict]] = {}


def case(name: str):
    def deco(fn):
        CASES[name] = fn
        return fn
    return deco


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


def _compiled_pair(model, example, calibration, **options):
    ref = qcompile.compile(model, example, target="reference", calibration=calibration, progress=False, **options)
    gpu = qcompile.compile(model, example, target="cuda", calibration=calibration, progress=False, **options)
    return ref, gpu


def _outputs(cm, inputs) -> tuple:
    out = cm(*inputs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@case("mobilenet_v2")
def _mobilenet_v2(directory: Path) -> dict:
    """Real weights and images; one library with a free batch, timed at batch 1 and 64 (64 = 4 images
    repeated: a 64-image input would not fit the bundle)."""
    from qcompile.zoo.evaluate import mobilenet_setup

    model, _, calibration, views, *_ = mobilenet_setup()
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
    ref, gpu = _compiled_pair(model, (views[:2],), calibration, dynamic_shapes=batch)  # an example of 1 would fix the batch
    images = views[:4]
    return save_case(directory, gpu, [images], _outputs(ref, [images]), compare="exact", batches=[1, 64],
                     peer="mobilenet_v2", input_shape=[3, 224, 224])


MINILM_VOCABULARY = 8192


@case("minilm")
def _minilm(directory: Path) -> dict:
    """all-MiniLM-L6-v2 (real weights), sequence length 128, free batch, timed at batch 1 and 64.

    Its float word-embedding table (30522 x 384, 47 MB) would not fit the bundle: the bundled model keeps
    the first MINILM_VOCABULARY rows and the inputs use only those tokens, so its outputs are the full
    model's. The gather reads one row per token whatever the table's size, so the time is the full model's."""
    from qcompile.zoo.minilm import load_minilm, model_dir

    embedder, tok = load_minilm()
    words = embedder.m.embeddings.word_embeddings
    embedder.m.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(words.weight[:MINILM_VOCABULARY].detach(), freeze=True)
    sentences = ["a wonderful, moving film", "the plot was dull and predictable", "I loved the acting", "not worth the ticket"]
    b = tok(sentences, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    ids, mask = b["input_ids"], b["attention_mask"]
    ids = torch.where(ids < MINILM_VOCABULARY, ids, tok.unk_token_id)
    batch = torch.export.Dim("batch", min=1, max=64)
    dims = {"ids": {0: batch}, "mask": {0: batch}}
    ref, gpu = _compiled_pair(embedder, (ids[:2], mask[:2]), [(ids[2:], mask[2:])], dynamic_shapes=dims)
    return save_case(directory, gpu, [ids, mask], _outputs(ref, [ids, mask]), compare="exact", batches=[1, 64],
                     peer="minilm", config=json.loads((model_dir() / "config.json").read_text()))


# The weight-only GEMV's 4096x4096 models would take 8-16 MB of the bundle each: the kernel bench
# (bench/cuda_int4_gemv.py, weights made on the GPU machine) checks those shapes instead.
_TOO_BIG = {"linear_4096_w4_m1", "linear_4096_w8_m1"}


def _weight_only_case(model, example, kwargs, tolerance):
    def build(directory: Path) -> dict:
        ref, gpu = _compiled_pair(model, example, None, **kwargs)
        return save_case(directory, gpu, list(example), _outputs(ref, list(example)),
                         compare={"rtol": 0.0, "atol": tolerance})
    return build


def _register_weight_only_cases() -> None:
    from tests.backends.test_cuda_weight_only import gpu_cases

    for name, model, example, _, kwargs, tolerance in gpu_cases():
        if name not in _TOO_BIG:
            CASES[name] = _weight_only_case(model, example, kwargs, tolerance)


def build_gemv_bench(directory: Path) -> None:
    """The GEMV kernel alone per shape and config (bench/cuda_int4_gemv.py), without its sources."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cuda_int4_gemv", ROOT / "bench" / "cuda_int4_gemv.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shutil.rmtree(directory, ignore_errors=True)
    bench.build(directory)
    shutil.rmtree(directory / "sources")


def main(argv=None) -> None:
    _register_weight_only_cases()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--only", nargs="*", help="build these cases only (default: all)")
    ap.add_argument("--no-site", action="store_true", help="keep the existing site/")
    ap.add_argument("--no-kernels", action="store_true", help="keep the existing kernel benches (gemv/)")
    args = ap.parse_args(argv)
    if not args.no_site:
        build_site(args.out / "site")
    if not args.no_kernels:
        build_gemv_bench(args.out / "gemv")
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

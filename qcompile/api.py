"""The public surface: compile(), load(), CompiledModel."""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from .backends import Backend, Capability, get_backend
from .errors import ArtifactError, FloatWeightsWarning, UsageError
from .frontend import signature
from .frontend.capture import Captured, capture
from .passes import PassContext, as_passes
from .passes.base import check_order, place
from .passes.choose_bitwidth import ChooseBitwidthPass
from .passes.instruments import Instruments
from .passes.manager import DEFAULT_PIPELINE, run_pipeline
from .quant.config import MIXED, QuantConfig
from .quant.coverage import coverage, describe_float, float_weights
from .report import Report, build_report, model_bytes
from .serialize import check_digests, file_digests, load_graph, save_graph

ARTIFACT_FORMAT = "qcompile-artifact"
MANIFEST = "manifest.json"
# 2: the manifest lists every file's SHA-256 ("files"), checked before anything is read. Artifacts of
# version 1 (no digests) still load.
MANIFEST_VERSION = 2


class CompiledModel:
    """A compiled model: call it like the original module; report(), save()."""

    def __init__(self, gm: fx.GraphModule, runner, backend: Backend, in_spec, out_spec, signature: list[dict], report: Report):
        self.graph_module = gm
        self._runner = runner
        self.backend = backend.name
        self._capabilities = backend.capabilities
        self._in_spec = in_spec
        self._out_spec = out_spec
        self._signature = signature
        self._report = report
        # A call with one tensor per positional input (the common case) skips pytree: a model of a few
        # small kernels runs in tens of µs, and flattening, comparing tree specs and rebuilding outputs
        # cost as much.
        self._positional_tensors = in_spec == pytree.tree_structure((tuple(range(len(signature))), {}))
        self._expected = [(getattr(torch, s["dtype"]), s["shape"]) for s in signature]
        self._has_free = any(s.get("free") for s in signature)
        self._has_indices = any("index_bound" in s for s in signature)

    def _check_inputs(self, flat: list, spec) -> None:
        if spec != self._in_spec:
            signature.check_count(flat, self._signature)
            raise TypeError(f"inputs structured as {spec}, but the model was compiled for {self._in_spec}")
        self._check_flat(flat)

    def _check_flat(self, flat: list) -> None:
        signature.check_count(flat, self._signature)
        for i, (t, (dtype, shape)) in enumerate(zip(flat, self._expected)):
            if not (isinstance(t, torch.Tensor) and t.dtype is dtype and t.dim() == len(shape)
                    and all(w is None or w == d for d, w in zip(t.shape, shape))):
                signature.check_tensor(t, self._signature[i], signature.label(i, self._signature[i]))
        if self._has_free:
            signature.check_free_dims(flat, self._signature)
        if self._has_indices:
            signature.check_indices(flat, self._signature)
        signature.check_no_nan(flat, self._signature)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        """Keyword arguments bound to the model's positional inputs by name (cm(x=x) for forward(self, x))."""
        names = [s.get("name") for s in self._signature]
        if not self._positional_tensors or not all(names):
            return args
        bound = list(args)
        for name in names[len(args):]:
            if name not in kwargs:
                raise TypeError(f"missing input {name!r}; the model takes ({signature.describe_all(self._signature)})")
            bound.append(kwargs.pop(name))
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(kwargs))}; the model takes "
                            f"({signature.describe_all(self._signature)})")
        return tuple(bound)

    def __call__(self, *args, **kwargs):
        if kwargs:
            kwargs = dict(kwargs)
            args = self._positional(args, kwargs)
        if self._positional_tensors and not kwargs and len(args) == len(self._expected):
            flat = list(args)
            self._check_flat(flat)
        else:
            flat, spec = pytree.tree_flatten((args, kwargs))
            self._check_inputs(flat, spec)
        with torch.no_grad():
            out = self._runner(*flat)
        return out[0] if self._out_spec.is_leaf() else pytree.tree_unflatten(list(out), self._out_spec)

    def report(self) -> Report:
        """The per-layer report. On a backend that can profile (x86), the first call also times every
        kernel of one run (on zero inputs: the kernels do not depend on the data) and adds µs per layer."""
        if not self._report.kernels and Capability.PROFILE in self._capabilities:
            self._report.add_profile(self._runner.profile(*self._zeros()))
        return self._report

    def benchmark(self, *inputs: torch.Tensor, number: int = 10, repeat: int = 5):
        """Time whole calls where the model runs (on an ARM target: on the device, so the RPC round trip is
        not counted), by TVM's time evaluator: `repeat` measurements of `number` calls each. Inputs default
        to zeros of the compiled shapes. Returns a BenchmarkResult (median_ms, mean_ms, std_ms, ...)."""
        if Capability.BENCHMARK not in self._capabilities:
            raise UsageError(f"target {self.backend!r} does not time itself; benchmark() is for the TVM targets "
                             "(x86, arm ...). Time the reference backend with torch.utils.benchmark instead")
        if not inputs:
            if any(d is None for sig in self._signature for d in sig["shape"]):
                raise UsageError("the model has dynamic dimensions: pass benchmark() the inputs to time it with")
            inputs = tuple(self._zeros())
        flat, spec = pytree.tree_flatten((inputs, {}))
        self._check_inputs(flat, spec)
        return self._runner.benchmark(*flat, number=number, repeat=repeat)

    def _zeros(self) -> list[torch.Tensor]:
        return [torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])) for s in self._signature]

    def save(self, path) -> Path:
        path = Path(path)
        save_graph(self.graph_module, path)
        if Capability.SAVE in self._capabilities:
            self._runner.save(path)
        manifest = {
            "format": ARTIFACT_FORMAT, "version": MANIFEST_VERSION, "backend": self.backend,
            "in_spec": pytree.treespec_dumps(self._in_spec), "out_spec": pytree.treespec_dumps(self._out_spec),
            "inputs": self._signature, "report": self._report.to_json(), "files": file_digests(path, MANIFEST),
        }
        (path / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return path


def load(path, *, trust_native_code: bool = False, **backend_options) -> CompiledModel:
    """Load a saved artifact. Every file is first checked against its SHA-256 in the manifest; then only
    JSON and safetensors are read. An artifact of a TVM target holds a native library (model.so), and
    loading it runs its code: that needs trust_native_code=True (CLI --trust-native-code), given only for
    artifacts from a trusted source. backend_options as for compile(), e.g. an ARM artifact with
    remote="host:port" or tracker="host:port", key="rk3588" to say where it runs."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a qcompile artifact (expected a directory written by CompiledModel.save)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is not a qcompile artifact: no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}/manifest.json is corrupt: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a qcompile artifact (manifest format is not {ARTIFACT_FORMAT!r})")
    if manifest.get("version") != 1:
        check_digests(path, manifest.get("files"))
    backend_name = manifest.get("backend")
    if not isinstance(backend_name, str):
        raise ArtifactError(f"{path}/manifest.json is malformed: no backend name")
    backend = get_backend(backend_name, **backend_options)  # a bad option is the caller's error, not the file's
    if Capability.NATIVE_LIBRARY in backend.capabilities and not trust_native_code:
        raise ArtifactError(
            f"{path} holds native code (a library built for target {backend_name!r}); loading it runs that code. "
            "Pass trust_native_code=True (CLI: --trust-native-code) only if you trust where the artifact came from")
    gm, _ = load_graph(path)
    try:
        in_spec = _treespec(manifest["in_spec"], path, "inputs")
        out_spec = _treespec(manifest["out_spec"], path, "outputs")
        report = Report.from_json(manifest["report"])
        signature = _checked_signature(manifest["inputs"])
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError, json.JSONDecodeError) as exc:
        # (pytree raises NotImplementedError for a type name it does not know)
        raise ArtifactError(f"{path}/manifest.json is malformed: {exc!r}") from exc
    return CompiledModel(gm, backend.load(path, gm), backend, in_spec, out_spec, signature, report)


def _treespec(text: str, path: Path, what: str) -> pytree.TreeSpec:
    """The saved structure of the inputs or outputs. A container type that another package registers with
    torch's pytree (transformers' ModelOutput classes) loads once that package is imported; qcompile
    never imports a module because an artifact names it."""
    try:
        return pytree.treespec_loads(text)
    except NotImplementedError:
        unknown = sorted(_type_names(json.loads(text)) - set(pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE))
        if not unknown:
            raise
        module = unknown[0].rpartition(".")[0]
        raise ArtifactError(f"{path}: the model's {what} are {unknown[0]}, a container type its package registers "
                            f"with torch when imported: `import {module}` before qcompile.load") from None


def _type_names(tree) -> set[str]:
    if isinstance(tree, list):
        return set().union(*map(_type_names, tree)) if tree else set()
    if isinstance(tree, dict):
        own = {tree["type"]} if isinstance(tree.get("type"), str) else set()
        return own.union(*map(_type_names, tree.values()))
    return set()


def _checked_signature(signature) -> list[dict]:
    """The manifest's input signature, if it has the form calls are checked against; else ValueError."""
    ok = isinstance(signature, list) and all(
        isinstance(s, dict) and isinstance(s.get("shape"), list) and isinstance(s.get("dtype"), str)
        and isinstance(getattr(torch, s["dtype"], None), torch.dtype)
        and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in s["shape"])
        and isinstance(s.get("free", []), list) and isinstance(s.get("name", ""), str)
        and isinstance(s.get("index_bound", 0), int) and not isinstance(s.get("index_bound", 0), bool)
        for s in signature)
    if not ok:
        raise ValueError("its input signature is not a list of {shape, dtype} entries")
    return signature


@dataclass
class Session:
    """What one compilation carries from capture to the CompiledModel (shared by compile and QAT)."""

    captured: Captured
    ctx: PassContext
    float_bytes: int
    captured_weights: int  # float constant elements of the captured graph: what coverage counts against

    @classmethod
    def start(cls, model: nn.Module, example_inputs, calibration, config: QuantConfig, dynamic_shapes=None) -> "Session":
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        captured = capture(model, example_inputs, dynamic_shapes)  # changes nothing in the user's model
        batches = signature.calibration_batches(calibration, captured.signature, captured.gm) if calibration is not None else None
        ctx = PassContext(example_inputs, config, batches, copy.deepcopy(captured.gm))
        return cls(captured, ctx, model_bytes(model), float_weights(captured.gm))

    def run(self, gm: fx.GraphModule, passes: list, instruments: Instruments, progress: bool = True) -> fx.GraphModule:
        if not progress:
            passes = [_quiet(p) for p in passes]
        return run_pipeline(gm, passes, self.ctx, instruments)

    def finish(self, gm: fx.GraphModule, backend, instruments: Instruments) -> CompiledModel:
        ctx = self.ctx
        sample = tuple(ctx.calibration[0]) if ctx.calibration else ctx.example_inputs
        report = build_report(gm, ctx.float_gm, sample, self.float_bytes, backend.name)
        report.extra["timings_ms"] = dict(instruments.timings)
        report.extra["stats"] = {k: dict(v) for k, v in ctx.stats.items()}
        report.extra.update(ctx.records)
        report.extra["coverage"] = coverage(gm, ctx.config, self.captured_weights)
        c = self.captured
        runner = backend.build(gm)
        if Capability.TUNE in backend.capabilities and runner.tuning:  # what a tuned build measured and reused
            report.extra["tuning"] = runner.tuning
        return CompiledModel(gm, runner, backend, c.in_spec, c.out_spec, c.signature, report)


def compile(
    model: nn.Module,
    example_inputs: tuple,
    target="reference",
    calibration: Iterable | None = None,
    bits: int | str = 8,
    pipeline=None,
    passes=(),
    dump_dir=None,
    *,
    config: QuantConfig | None = None,
    print_after=None,
    verify_each: bool = False,
    progress: bool = True,
    dynamic_shapes=None,
    budget: float | None = None,
    strict: bool = False,
    **backend_options,
) -> CompiledModel:
    """Quantize and compile `model` for `target`.

    calibration: an iterable of batches (a tensor or a tuple of positional inputs each).
    bits: 8 or 4; "w8" / "w4": weight-only Linear layers (QuantConfig.from_bits); "mixed": choose-bitwidth
        picks 8, 4 or float per layer by measured sensitivity so that the weights average `budget` bits
        (e.g. bits="mixed", budget=6); see QuantConfig for more options.
    pipeline: replaces the default pass pipeline (a string or a list of passes).
    passes: extra passes (or strings), run after the quantization passes and before lowering; wrap one
        in qcompile.at(p, before="fuse-qdq") / at(p, after=...) to place it inside the pipeline.
    dynamic_shapes: as for torch.export (e.g. {"x": {0: torch.export.Dim("batch")}}): those dimensions
        stay free in the compiled model.
    strict: raise if a weighted layer (linear, conv, embedding, recurrent ...) stays float for lack of an
        integer lowering; without it such layers give a FloatWeightsWarning. Layers the config keeps float
        (float_layers, layer_bits, the bit-width chooser) never count.
    backend_options: passed to the target's backend, e.g. target="x86", float_fallback=True
        (see qcompile/backends/tvm/x86/backend.py); an option the backend does not take is an error.
    """
    config = config or QuantConfig.from_bits(bits, budget)
    backend = get_backend(target, **backend_options)
    if dynamic_shapes is not None and Capability.DYNAMIC_SHAPES not in backend.capabilities:
        raise UsageError(f"target {backend.name!r} builds for the example input shapes; dynamic_shapes is "
                         "supported by target='reference' for now")
    pass_list = place(as_passes(pipeline if pipeline is not None else DEFAULT_PIPELINE), passes)
    check_order(pass_list)
    if config.bits == MIXED and ChooseBitwidthPass.name not in {p.name for p in pass_list}:
        raise UsageError(f'bits="mixed" needs the {ChooseBitwidthPass.name!r} pass in the pipeline, before calibrate')

    def attempt(config: QuantConfig) -> CompiledModel:
        session = Session.start(model, example_inputs, calibration, config, dynamic_shapes)
        instruments = Instruments.from_env(dump_dir=dump_dir, print_after=print_after, verify_each=verify_each)
        gm = session.run(session.captured.gm, pass_list, instruments, progress)
        return session.finish(gm, backend, instruments)

    cm = attempt(config)
    slower = backend.slower_than_float(cm.graph_module, cm._runner)
    # One more round only: layers that stay integer after it are not re-measured.
    if slower:
        cm = attempt(config.with_float_layers(slower))
    _check_coverage(cm._report, strict)  # (report() would profile an x86 model)
    return cm


def _check_coverage(report: Report, strict: bool) -> None:
    """Weighted layers left float for lack of a lowering: an error under strict, else a warning."""
    cov = report.extra["coverage"]
    missed = [r for r in cov["float_layers"] if not r["chosen"]]
    if not missed:
        return
    share = sum(r["params"] for r in missed) / max(cov["weights"], 1)
    message = (f"{len(missed)} weighted layer(s) stay float, {share:.1%} of the model's weights: "
               f"{describe_float(missed)}")
    if strict:
        raise UsageError(f"strict=True: {message}")
    warnings.warn(message, FloatWeightsWarning, stacklevel=3)


def _quiet(p):
    fields = {f.name for f in dataclasses.fields(p)} if dataclasses.is_dataclass(p) else set()
    return dataclasses.replace(p, progress=False) if "progress" in fields else p

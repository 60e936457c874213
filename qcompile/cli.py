"""The `qcompile` command: compile a model to an artifact, inspect artifacts and dump folders."""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="qcompile: a quantizing compiler for PyTorch models.", no_args_is_help=True, add_completion=False)

_ZOO = {"mobilenet_v2": "qcompile.zoo.evaluate:mobilenet_setup"}


def _load_spec(spec: str) -> dict:
    """A model spec is `file.py:function` or `zoo:NAME`; the function returns a dict with
    `model`, `example_inputs` and optionally `calibration`."""
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in _ZOO:
            raise typer.BadParameter(f"unknown zoo model {name!r}; available: {', '.join(_ZOO)}")
        module, fn = _ZOO[name].split(":")
        model, example, calibration, *_ = getattr(importlib.import_module(module), fn)()
        return {"model": model, "example_inputs": example, "calibration": calibration}
    path, _, fn = spec.partition(":")
    if not fn or not Path(path).is_file():
        raise typer.BadParameter(f"expected FILE.py:FUNCTION or zoo:NAME, got {spec!r}")
    mod_spec = importlib.util.spec_from_file_location("qcompile_user_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    out = getattr(module, fn)()
    if not isinstance(out, dict) or "model" not in out or "example_inputs" not in out:
        raise typer.BadParameter(f"{fn}() must return a dict with 'model' and 'example_inputs' (and optionally 'calibration')")
    return out


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(..., help="FILE.py:FUNCTION returning {model, example_inputs, calibration}, or zoo:mobilenet_v2"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact directory to write"),
    target: str = typer.Option("reference", help="backend name"),
    bits: str = typer.Option("8", help='weight bits: 8, 4, or "mixed" (chosen per layer; give --budget)'),
    budget: Optional[float] = typer.Option(None, help='bits "mixed": average bits per weight, e.g. 6'),
    plot: Optional[Path] = typer.Option(None, help='bits "mixed": write the bit-allocation plot (PNG) here'),
    pipeline: Optional[str] = typer.Option(None, help="pass pipeline string (default: the standard one)"),
    dump_dir: Optional[Path] = typer.Option(None, help="write a dump after every pass here"),
    print_after: Optional[str] = typer.Option(None, help="'all' or comma-separated pass names"),
):
    """Quantize and compile a model into an artifact directory."""
    import qcompile

    spec = _load_spec(model)
    cm = qcompile.compile(
        spec["model"], spec["example_inputs"], target=target, calibration=spec.get("calibration"),
        bits=int(bits) if bits.isdigit() else bits, budget=budget, pipeline=pipeline, dump_dir=dump_dir,
        print_after=print_after,
    )
    cm.save(out)
    typer.echo(str(cm.report()))
    if plot is not None:
        typer.echo(f"wrote {cm.report().plot(plot)}")
    typer.echo(f"wrote {out}")


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="an artifact directory or a dump directory"),
    graph: bool = typer.Option(False, help="also print the graph"),
    pass_name: Optional[str] = typer.Option(None, "--pass", help="dump dir: print the graph after this pass"),
    trust_native_code: bool = typer.Option(False, "--trust-native-code",
                                           help="load a TVM target's library (runs its code): trusted artifacts only"),
):
    """Show an artifact's report (and graph), or a dump folder's passes."""
    import qcompile

    from .ir.printer import graph_text

    if (path / "manifest.json").is_file():
        try:
            cm = qcompile.load(path, trust_native_code=trust_native_code)
        except qcompile.ArtifactError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2)
        typer.echo(f"artifact for backend {cm.backend!r}")
        typer.echo(str(cm.report()))
        if graph:
            typer.echo(graph_text(cm.graph_module))
        return
    dumps = sorted(path.glob("[0-9][0-9]-*.txt"))
    if not dumps:
        typer.echo(f"{path} is neither a qcompile artifact nor a dump directory", err=True)
        raise typer.Exit(2)
    if pass_name:
        match = [d for d in dumps if d.stem.split("-", 1)[1] == pass_name]
        if not match:
            typer.echo(f"no dump for pass {pass_name!r}; have: {', '.join(d.stem for d in dumps)}", err=True)
            raise typer.Exit(2)
        typer.echo(match[-1].read_text())
        return
    for d in dumps:
        first = d.read_text().splitlines()[0]
        nodes = sum(1 for line in d.read_text().splitlines()[1:] if line.startswith("%"))
        typer.echo(f"{d.stem:<28} {nodes:>5} nodes   {first}")
    if (path / "index.html").is_file():
        typer.echo(f"open {path / 'index.html'} for the pictures")


@app.command()
def benchmark(
    path: Path = typer.Argument(..., help="an artifact directory of a TVM target (x86, arm ...)"),
    remote: Optional[str] = typer.Option(None, help="ARM: host:port of the device's TVM RPC server"),
    tracker: Optional[str] = typer.Option(None, help="ARM: host:port of a TVM RPC tracker (give --key)"),
    key: Optional[str] = typer.Option(None, help="ARM: the device key at the tracker"),
    number: int = typer.Option(10, help="calls per measurement"),
    repeat: int = typer.Option(5, help="measurements"),
    trust_native_code: bool = typer.Option(False, "--trust-native-code",
                                           help="load a TVM target's library (runs its code): trusted artifacts only"),
):
    """Time whole calls of an artifact where it runs (ARM: on the device, over TVM RPC), on zero inputs."""
    import qcompile

    where = {k: v for k, v in {"remote": remote, "tracker": tracker, "key": key}.items() if v is not None}
    try:
        result = qcompile.load(path, trust_native_code=trust_native_code, **where).benchmark(number=number, repeat=repeat)
    except (qcompile.UsageError, qcompile.ArtifactError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    typer.echo(str(result))


@app.command()
def passes():
    """List the registered passes and their options."""
    import dataclasses

    from .passes import registered_passes

    for name, cls in sorted(registered_passes().items()):
        opts = [f"{f.name}={f.default!r}" for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        typer.echo(f"{name:<20} {cls.__module__}.{cls.__qualname__}  {' '.join(opts)}")


@app.command()
def reproduce(path: Path = typer.Argument(..., help="a reproducer folder written when a pass raised")):
    """Re-run the failing pass of a reproducer on its saved input graph."""
    from safetensors.torch import load_file

    from .passes import PassContext, as_passes
    from .quant.config import QuantConfig
    from .serialize import load_graph

    info = json.loads((path / "info.json").read_text())
    gm, _ = load_graph(path / "graph")
    example = _numbered(load_file(str(path / "inputs.safetensors")), "input")
    config = QuantConfig.from_json(json.loads((path / "config.json").read_text()))
    batches = load_file(str(path / "calibration.safetensors"))
    calibration = [_numbered(batches, f"batch_{b}_input") for b in range(len({k.split("_input")[0] for k in batches}))]
    (p,) = [p for p in as_passes(info["pipeline"]) if p.name == info["pass"]][:1]
    try:
        p.run(gm, PassContext(example, config, calibration))
    except Exception as exc:  # the point of a reproducer: show the error again
        typer.echo(f"pass {p.name!r} raised again: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"pass {p.name!r} ran without error on the saved graph")


def _numbered(tensors: dict, prefix: str) -> tuple:
    """tensors["<prefix>_0"], tensors["<prefix>_1"], ... in order."""
    return tuple(tensors[f"{prefix}_{i}"] for i in range(sum(k.rsplit("_", 1)[0] == prefix for k in tensors)))


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

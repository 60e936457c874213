"""Pass protocol, the pass registry and the pipeline-string parser."""
from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Iterable

from torch import fx

from ..errors import UsageError
from ..quant.config import QuantConfig


@dataclass
class PassResult:
    gm: fx.GraphModule
    changed: bool


@dataclass
class PassContext:
    """What passes share: inputs, calibration data, the quantization config and statistics."""

    example_inputs: tuple
    config: QuantConfig = field(default_factory=QuantConfig)
    calibration: list | None = None
    float_gm: fx.GraphModule | None = None  # snapshot after the float passes: the numeric reference
    stats: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    records: dict[str, object] = field(default_factory=dict)  # JSON-able findings the report carries (by key)

    def count(self, pass_name: str, what: str, n: int = 1) -> None:
        self.stats[pass_name][what] += n


class Pass:
    """Base of all passes: a frozen dataclass whose fields are its options.

    A pass declares what it needs and what it establishes as named facts about the graph ("qparams",
    "qdq", ...): `requires` must hold before it runs, `provides` hold after it, `invalidates` no longer
    hold after it (e.g. changing weights invalidates their qparams). `repeatable = False` refuses a second
    run in one pipeline. check_order() checks a pipeline against these before anything runs.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()
    repeatable: ClassVar[bool] = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> str:
        """The pass as it would be written in a pipeline string."""
        opts = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if value != f.default:
                    opts.append(f"{f.name}={value}")
        return f"{self.name}{{{','.join(opts)}}}" if opts else self.name


_REGISTRY: dict[str, type[Pass]] = {}
_ENTRY_POINTS_LOADED = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its kebab-case `name` in pipelines."""
    name = getattr(cls, "name", "")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name or ""):
        raise UsageError(f"pass {cls.__name__} needs a kebab-case `name`, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls and _REGISTRY[name].__qualname__ != cls.__qualname__:
        raise UsageError(f"a different pass is already registered as {name!r}: {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for ep in entry_points(group="qcompile.passes"):
            register_pass(ep.load())


def registered_passes() -> dict[str, type[Pass]]:
    _load_entry_points()
    return dict(_REGISTRY)


def _convert(value: str, typ: Any) -> Any:
    text = str(typ)
    if "bool" in text:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"expected a boolean, got {value!r}")
    for conv, key in ((int, "int"), (float, "float")):
        if key in text and "str" not in text:
            return conv(value)
    if value.lower() == "none" and "None" in text:
        return None
    return value


def make_pass(name: str, options: dict[str, str]) -> Pass:
    passes = registered_passes()
    if name not in passes:
        raise UsageError(f"unknown pass {name!r}; registered passes: {', '.join(sorted(passes))}")
    cls = passes[name]
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs = {}
    for key, value in options.items():
        if key not in fields:
            raise UsageError(f"pass {name!r} has no option {key!r}; options: {', '.join(sorted(fields)) or 'none'}")
        try:
            kwargs[key] = _convert(value, fields[key].type)
        except ValueError as exc:
            raise UsageError(f"pass {name!r} option {key}={value!r}: {exc}") from None
    return cls(**kwargs)


_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """"a,b{k=v,k2=v2},c" -> pass instances."""
    passes, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise UsageError(f"cannot parse pipeline at {text[pos:]!r}; expected name or name{{key=value,...}}")
        options = {}
        for item in filter(None, (m[2] or "").split(",")):
            if "=" not in item:
                raise UsageError(f"pipeline option {item!r} of pass {m[1]!r} must be key=value")
            key, value = item.split("=", 1)
            options[key.strip()] = value.strip()
        passes.append(make_pass(m[1], options))
        pos = m.end()
    return passes


def as_passes(pipeline: str | Iterable[Pass | str]) -> list[Pass]:
    if isinstance(pipeline, str):
        return parse_pipeline(pipeline)
    out = []
    for p in pipeline:
        out.extend(parse_pipeline(p) if isinstance(p, str) else [p])
    for p in out:
        if not isinstance(p, Pass):
            raise TypeError(f"pipeline items must be qcompile.Pass instances or strings, got {type(p).__name__}")
    return out


@dataclass(frozen=True)
class Placement:
    """A user pass placed relative to a named pass of the pipeline (see `at`)."""

    pass_: Pass
    before: str | None = None
    after: str | None = None


def at(p: Pass, *, before: str | None = None, after: str | None = None) -> Placement:
    """Place a custom pass before or after a named pass: compile(..., passes=[at(MyPass(), before="fuse-qdq")])."""
    if (before is None) == (after is None):
        raise UsageError("give exactly one of before= or after=")
    return Placement(p, before, after)


def place(pipeline: list[Pass], extras: Iterable[Pass | str | Placement]) -> list[Pass]:
    """The pipeline with user passes added: placed ones where asked, the rest at the end."""
    out = list(pipeline)
    for item in extras:
        if not isinstance(item, Placement):
            out.extend(as_passes([item]))
            continue
        anchor = item.before or item.after
        names = [p.name for p in out]
        if anchor not in names:
            raise UsageError(f"cannot place {item.pass_.name!r} relative to {anchor!r}: not in the pipeline {names}")
        i = names.index(anchor) + (1 if item.after else 0)
        out.insert(i, item.pass_)
    return out


def check_order(passes: list[Pass], given: frozenset[str] = frozenset()) -> None:
    """UsageError unless every pass's requirements hold where it runs and no unrepeatable pass runs twice.
    `given`: facts that hold on the graph the pipeline starts from."""
    if not passes:
        raise UsageError("the pipeline is empty: nothing would be quantized. Leave pipeline= out for the default "
                         f"pipeline, or name passes (registered: {', '.join(sorted(registered_passes()))})")
    holds, lost_by, seen = set(given), {}, set()
    for p in passes:
        if p.name in seen and not p.repeatable:
            raise UsageError(f"pass {p.name!r} appears twice in the pipeline {pipeline_string(passes)!r}; it runs once")
        seen.add(p.name)
        missing = sorted(p.requires - holds)
        if missing:
            raise UsageError(_missing(p, missing[0], lost_by.get(missing[0]), passes))
        holds |= p.provides
        holds -= p.invalidates
        lost_by.update({fact: p.name for fact in p.invalidates})


def _missing(p: Pass, fact: str, lost_by: str | None, passes: list[Pass]) -> str:
    makers = sorted(name for name, cls in registered_passes().items() if fact in cls.provides)
    where = f"; {lost_by!r} runs after it and invalidates them" if lost_by else ""
    return (f"pass {p.name!r} needs {fact} ({' or '.join(map(repr, makers)) or 'no registered pass'} "
            f"before it) in the pipeline {pipeline_string(passes)!r}{where}")


def pipeline_string(passes: Iterable[Pass]) -> str:
    return ",".join(p.spec() for p in passes)

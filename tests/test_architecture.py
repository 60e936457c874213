"""The package's architecture: the import contracts (pyproject.toml, run by lint-imports) hold and catch a
broken one; no module imports another module's private names; the targets' folders hold their files."""
import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qcompile"
TVM = PACKAGE / "backends" / "tvm"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ImportFrom reads from, relative imports resolved against `path`."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """`from qcompile.x import _name` and `qcompile_module._name` of a module imported by name, in the module
    at `path` (whose text is `source` when given)."""
    tree = ast.parse(path.read_text() if source is None else source)
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = absolute(node, path)
            if not source.startswith("qcompile"):
                continue
            for alias in node.names:
                if (PACKAGE.parent / (source.replace(".", "/") + f"/{alias.name}.py")).exists() or \
                        (PACKAGE.parent / source.replace(".", "/") / alias.name / "__init__.py").exists():
                    modules.add(alias.asname or alias.name)  # a module, whose attributes are checked below
                elif alias.name.startswith("_"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {source}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [f for path in sorted(PACKAGE.rglob("*.py")) for f in private_imports(path)]
    assert found == []


def test_the_private_import_check_finds_one():
    source = "from .gemm_kernel import _x, Requant\nfrom . import tiling\ny = tiling._z + tiling.ceil_div(1, 2)\n"
    found = private_imports(TVM / "cpu" / "example.py", source)  # as if it sat in cpu/
    assert [f.split(" ", 1)[1] for f in found] == ["imports _x from qcompile.backends.tvm.cpu.gemm_kernel", "reads tiling._z"]


def test_no_target_prefixed_files_at_the_top_of_backends_tvm():
    prefixed = [p.name for p in TVM.iterdir() if p.is_file() and p.name.split("_")[0] in ("cuda", "arm", "x86")]
    assert prefixed == []


def test_the_shared_modules_contract_lists_every_shared_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    shared = next(c for c in config if c["name"].startswith("The shared TVM modules"))
    top = {f"qcompile.backends.tvm.{p.stem}" for p in TVM.glob("*.py") if p.name != "__init__.py"}
    assert set(shared["source_modules"]) == top


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("backends/tvm/cpu/isa.py", "from ..cuda import weight_codes", "Targets"),
    ("backends/tvm/relax_lowering.py", "from .x86 import float_yardstick", "The shared TVM modules"),
    ("ir/meta.py", "from ..quant import observers", "Layers"),
])
def test_import_contracts_catch_a_broken_one(tmp_path, module, line, broken):
    shutil.copytree(PACKAGE, tmp_path / "qcompile", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "qcompile" / module, "a") as f:
        f.write(f"\n{line}  # broken on purpose\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    # Contract names wrap over lines in the summary; the broken ones are listed again under "Broken contracts".
    assert any(line.startswith(broken) for line in result.stdout.split("Broken contracts", 1)[1].splitlines())

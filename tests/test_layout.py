"""The package layout shows the data flow: every import points down the stages, there are no
cycles between modules, and md_protocols needs nothing from ttcalc (every import statement counts,
including those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: ttcalc's stages, lowest first; a module may import its own stage and those before it
STAGES = ["base", "data", "priors", "model", "diagnostics", "train", "adapt", "calculator", "app"]
BASE = {"ttcalc", "ttcalc.units", "ttcalc.paths"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the ttcalc/md_protocols modules ``path`` imports at run time."""
    out = set()
    tree = ast.parse(path.read_text())
    # names imported only for type annotations are no runtime dependency
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute imports)"
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("ttcalc", "md_protocols")}


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / package).rglob("*.py")}


MODULES = {**_modules("ttcalc"), **_modules("md_protocols")}


def _aliases() -> dict[str, str]:
    """The package root's public names (lazy attributes, ``ttcalc.spectral``/``shifts``) and the
    modules that hold them, so ``from ttcalc import TTTCalculator`` counts as the calculator's."""
    import ttcalc

    return {**{f"ttcalc.{k}": f"{m}.{n}" for k, (m, n) in ttcalc._LAZY.items()}, **ttcalc._MODULES}


ALIASES = _aliases()


def _resolve(name: str) -> str | None:
    """The module an imported name refers to (``a.b.c`` may be a module or a name in ``a.b``)."""
    for alias, real in ALIASES.items():
        if name == alias or name.startswith(alias + "."):
            name = real + name[len(alias):]
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _stage(module: str) -> int:
    if module in BASE:
        return 0
    return STAGES.index(module.split(".")[1])


def test_md_protocols_imports_nothing_from_ttcalc():
    offenders = {m: sorted(i for i in _imports(p) if i.startswith("ttcalc"))
                 for m, p in _modules("md_protocols").items()}
    assert not {m: i for m, i in offenders.items() if i}


@pytest.mark.parametrize("module", sorted(_modules("ttcalc")))
def test_imports_point_down_the_stages(module):
    if module in ("ttcalc", "ttcalc.__main__"):
        return  # the package's lazy public API and ``python -m ttcalc`` (the command line) name everything
    own = _stage(module)
    up = sorted(i for i in _imports(MODULES[module])
                if i.startswith("ttcalc") and (r := _resolve(i)) and _stage(r) > own)
    assert not up, f"{module} (stage {STAGES[own]}) imports from later stages: {up}"


def test_names_of_the_package_root_resolve_to_their_modules():
    assert _resolve("ttcalc.TTTCalculator") == "ttcalc.calculator"
    assert _resolve("ttcalc.load_pretrained") == "ttcalc.model.pretrained"
    assert _resolve("ttcalc.spectral.pair_distances") == "ttcalc.diagnostics.spectral"
    assert _resolve("ttcalc.__version__") == "ttcalc"
    assert _stage(_resolve("ttcalc.TTTCalculator")) > _stage("ttcalc.data.rmd17")


def _with_packages(module: str, importer: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` importing it runs first (bar the importer's own)."""
    parts = module.split(".")
    parents = {".".join(parts[:k]) for k in range(2, len(parts))}
    own = {".".join(importer.split(".")[:k]) for k in range(1, importer.count(".") + 1)}
    return ({module} | parents) - own - {"ttcalc", "md_protocols"}


def test_no_import_cycles():
    graph = {m: {n for i in _imports(p) if (r := _resolve(i)) for n in _with_packages(r, m) if n != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path[path.index(n):] + [n])}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_every_stage_is_a_folder():
    top = {p.name for p in (ROOT / "ttcalc").iterdir() if not p.name.startswith("__")}
    assert {"data", "priors", "model", "diagnostics", "train", "adapt", "app"} <= top
    loose = sorted(p for p in top if p.endswith(".py"))
    assert loose == ["calculator.py", "paths.py", "units.py"]


def test_public_names_survive_the_layout():
    import ttcalc
    import ttcalc.diagnostics.shifts
    import ttcalc.diagnostics.spectral
    import ttcalc.shifts
    import ttcalc.spectral
    from ttcalc.shifts import diagnose

    assert ttcalc.spectral is ttcalc.diagnostics.spectral and ttcalc.shifts is ttcalc.diagnostics.shifts
    assert ttcalc.spectral.__name__ == "ttcalc.diagnostics.spectral"  # one module, its own identity
    assert diagnose is ttcalc.diagnostics.shifts.diagnose
    assert callable(ttcalc.load_model) and callable(ttcalc.load_pretrained) and ttcalc.TTTCalculator
    with pytest.raises(AttributeError):
        ttcalc.no_such_name

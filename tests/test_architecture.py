"""House rules checked on the source: file size, no import cycle, no private name imported across modules."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_mmfuse"
#: Longest a source file may grow (the team's "~600 lines", with a little slack).
MAX_LINES = 650


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported names) pairs of every import statement in a module, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base, tuple(alias.name for alias in node.names)


def _edges(name: str, path: Path) -> set[str]:
    targets = set()
    for module, names in _imports(name, path):
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        targets.update(submodules)
        if len(submodules) < len(names) or not names:
            if module in MODULES:
                targets.add(module)
    targets.discard(name)
    return targets


def test_no_source_file_is_longer_than_the_house_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these files (over {MAX_LINES} lines): {long}"


def test_no_import_cycle_between_modules():
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    offences = []
    for name, path in MODULES.items():
        for module, names in _imports(name, path):
            if not module.startswith("napari_mmfuse"):
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__") and f"{module}.{imported}" not in MODULES:
                    offences.append(f"{name} imports {module}.{imported}")
    assert not offences, "give these a public name in the module that owns them: " + "; ".join(offences)


@pytest.mark.parametrize("name", ["napari_mmfuse.operations", "napari_mmfuse.provenance", "napari_mmfuse.pipeline"])
def test_the_operation_layer_does_not_import_qt_or_napari(name):
    for module, _ in _imports(name, MODULES[name]):
        assert not module.startswith(("napari.", "qtpy", "magicgui")) and module != "napari", (name, module)

"""The package's import graph has no cycle, counting imports inside functions too (a lazy
import that only dodges a cycle is still a cycle)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asl"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


EXTENSIONS = {"asl._C"}  # setup.py's compiled modules: outside the Python graph (built or not)


def _compiled(package: str, name: str) -> bool:
    return f"{package}.{name}" in EXTENSIONS


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules or _compiled(base, a.name) else base
                           for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 30 and "asl.prefill" in graph["asl.generation"]  # the graph was really read
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_extensions_are_setup_pys():
    setup = (PACKAGE.parent / "setup.py").read_text()
    assert all(f'"{name}"' in setup for name in EXTENSIONS)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_reference_is_for_tests_only():
    """asl.reference is the oracle the tests compare against: production code must not use it."""
    users = sorted(name for name, targets in import_graph().items() if "asl.reference" in targets)
    assert users == [], f"{users} import asl.reference"


def test_the_core_never_imports_the_bench():
    """asl.bench measures the library; nothing outside it may depend on it (`import asl` must not
    load it), so the library can be used, and changed, without the benchmark."""
    users = sorted(name for name, targets in import_graph().items() if not name.startswith("asl.bench")
                   and any(t == "asl.bench" or t.startswith("asl.bench.") for t in targets))
    assert users == [], f"{users} import asl.bench"


def private_imports(path: Path, package_name: str, ours) -> list[str]:
    """`from X import _name` where X is one of our modules (a leading underscore marks what a
    module keeps to itself: another module reaching for it couples to a detail)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = resolve(package_name, path.name == "__init__.py", node) if node.level else node.module or ""
        if not ours(base):
            continue
        found += [f"{path.name}: from {base} import {a.name}" for a in node.names
                  if a.name.startswith("_") and not a.name.startswith("__") and not _compiled(base, a.name)]
    return found


def test_no_module_imports_another_modules_private_names():
    benchmarks = PACKAGE.parent / "benchmarks"
    local = {p.stem for p in benchmarks.glob("*.py")}
    found = []
    for path in PACKAGE.rglob("*.py"):
        found += private_imports(path, module_name(path), lambda m: m == "asl" or m.startswith("asl."))
    for path in benchmarks.glob("*.py"):
        found += private_imports(path, path.stem, lambda m: m.split(".")[0] in local | {"asl"})
    assert len(local) > 5 and found == [], found


def test_import_asl_loads_no_bench_module():
    import subprocess
    import sys

    code = "import asl, sys; print([m for m in sys.modules if m.startswith('asl.bench')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_import_asl_makes_waiting_threads_sleep_unless_told_otherwise():
    """benchmarks/threads_busy.py: spinning OpenMP threads slow a busy machine's run 1.3-2.2x."""
    import os
    import subprocess
    import sys

    code = "import os, asl; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                          text=True, check=True).stdout.strip() == "ACTIVE"

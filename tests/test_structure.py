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

"""The house rules of the package layout (docs/design.md): imports run one way, the four walls
hold, and the README's layout names every module there is."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "opengato"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `path` imports, at the top, inside functions or for type checking."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_module_imports_one_that_imports_it_back(graph):
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_four_walls():
    modules = _modules()
    imports = {name: _imports(path, modules) for name, path in modules.items()}

    def uses(name: str, prefix: str) -> bool:
        return any(m == prefix or m.startswith(prefix + ".") for m in imports[name])

    for name in imports:
        if name.startswith("opengato.tokens"):
            assert not uses(name, "torch"), f"{name} imports torch: the tokenizer is pure numpy"
        if name.startswith("opengato.model"):
            assert not uses(name, "gymnasium"), f"{name} imports gymnasium: the model knows no env"
        if name.startswith("opengato.experts"):
            assert not uses(name, "opengato.model"), f"{name}: experts know no model"
        assert name == "opengato.cli" or not uses(name, "opengato.cli"), f"{name} imports the CLI"


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Package layout") :]
    block = block[: block.index("```", block.index("```") + 3)]
    named = set(re.findall(r"[a-z_]+\.py|[a-z_]+/", block))
    for path in _modules().values():
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue
        if rel.name == "__init__.py":
            assert f"{rel.parent.name}/" in named, f"README layout misses {rel.parent}/"
        else:
            assert rel.name in named, f"README layout misses {rel}"

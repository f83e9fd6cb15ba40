"""The shape of the code: one package per op, development tooling outside the installed packages, no import
circles, no function over 60 lines outside Triton kernels."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
INSTALLED = ("mgiad_kernels", "mgiad")  # what setup.py's find_packages installs
CODE = INSTALLED + ("tools", "examples", "benchmarks")
MAX_FUNCTION_LINES = 60
# modules that only development tooling may import: none of them may live under an installed package
TOOLING = {"standin_driver", "codegen_report", "compile_check", "kernel_bench", "host_bench", "model_bench",
           "param_table", "demo", "c_build"}


def _modules(packages=CODE):
    """{dotted module name: path} of every Python file under ``packages``."""
    out = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The modules of ``modules`` that ``name`` imports, at module level or in a function: ``from X import y``
    imports X.y where that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict) -> list | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated at the end), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _is_triton_kernel(node) -> bool:
    return any("triton.jit" in ast.unparse(d) or "triton.autotune" in ast.unparse(d) for d in node.decorator_list)


def _long_functions(path: pathlib.Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(node)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_over_60_lines_outside_triton_kernels():
    assert [line for path in _modules().values() for line in _long_functions(path)] == []


def test_the_length_rule_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    long_one = tmp_path / "long.py"
    long_one.write_text(f"def long():\n{body}\n\n\n@triton.jit\ndef kernel():\n{body}\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _long_functions(long_one) == [f"long.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"]
    finally:
        ROOT = saved


@pytest.mark.parametrize("package", INSTALLED)
def test_no_tooling_module_is_installed(package):
    installed = {name.rpartition(".")[2] for name in _modules((package,))}
    assert installed & TOOLING == set()


def test_runtime_knows_no_op():
    """The runtime layer imports neither op package, and the backend switch is only imported at the top."""
    modules = _modules(("mgiad_kernels",))
    for name, path in modules.items():
        imported = _imports(name, path, modules)
        if name.startswith("mgiad_kernels.runtime"):
            assert not {m for m in imported if m.startswith(("mgiad_kernels.conv", "mgiad_kernels.smoothing"))}, name
        if name.startswith("mgiad_kernels.conv"):
            assert not {m for m in imported if m.startswith("mgiad_kernels.smoothing")}, name

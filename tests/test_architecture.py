"""The package's import graph: layers import only the layers before them, and no module circle exists."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the iddm modules it imports anywhere in its file (top level, functions, TYPE_CHECKING blocks)."""
    modules = {_module_name(path): path for path in (SRC / "iddm").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "iddm":
                for alias in node.names:  # `from iddm.pkg import module` depends on the module itself
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.split(".")[0] == "iddm"}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among modules (a package importing its own sub-modules does not count), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(module: str) -> set[str]:
        return {t for t in graph[module] if not t.startswith(module + ".")}

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circle_in_the_package():
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()))


def test_the_circle_check_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) is None


def test_schedule_hooks_and_artifacts_do_not_import_the_trainer():
    graph = import_graph()
    assert "iddm.schedule.trainer" not in graph["iddm.schedule.hooks"] | graph["iddm.schedule.artifacts"]


def test_each_file_name_of_the_run_and_weight_layouts_is_spelled_once():
    """``iddm_prior.json``, ``SHA256SUMS``, ``iddm_run.json``: one module defines each; the others import it."""
    for literal in ('"iddm_prior.json"', '"SHA256SUMS"', '"iddm_run.json"', '"iddm_model.json"'):
        spelled = [p.name for p in (SRC / "iddm").rglob("*.py") if literal in p.read_text()]
        assert len(spelled) == 1, (literal, spelled)


def test_no_module_or_function_grows_past_what_one_reader_holds():
    """Long units were split by concern (metrics by attack family, pretrain into corpus, run and output)."""
    too_long = []
    for path in (SRC / "iddm").rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 520:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_the_threat_model_quotes_only_numbers_that_its_linked_results_files_hold():
    """Docs quote the results files the benchmarks write, and link them, so a rerun cannot leave a stale number."""
    import re

    docs = SRC.parent / "docs"
    text = (docs / "threat_model.md").read_text()
    section = text[text.index("## What was measured") :]
    section = section[: section.index("\n## ", 4)]
    linked = sorted(set(re.findall(r"\((results/[\w.-]+\.md)\)", section)))
    assert linked, "the measured section links no docs/results file"
    results = "\n".join((docs / name).read_text() for name in linked)
    quoted = set(re.findall(r"(?<![\d.])\d\.\d\d(?:±\d\.\d\d)?(?![\d])", section))
    missing = sorted(number for number in quoted if number not in results)
    assert quoted and not missing, f"numbers not in {linked}: {missing}"

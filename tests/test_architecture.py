"""The shape of the code, checked from the source: imports run one way (DESIGN.md's layers), no
import cycle (function-level imports included), modules and functions short enough to read.

Layers, lowest first (a module may import its own layer and the ones below):
  0 base      errors, version, cli, config_docs, config, storage, parallel, flops, dsp,
              workdir_lock, preemption, progress, summary, latent_io, sampling, stderr_noise
  1 data      f3_jax/data/ (knows nothing of models)
  1 models    f3_jax/models/, f3_jax/losses/ (know nothing of data, stages or the command
              lines)
  2 metrics   f3_jax/metrics/ (audio metrics and probes: may read audio through data/)
  2 state     checkpoint, exports, frozen, prefetch, step_saver, distributed
  3 inference f3_jax/inference/ (Tokenizer, Generator)
  3 evaluation f3_jax/evaluation/
  4 stages    f3_jax/stages/
  5 aot       f3_jax/aot/ (compiling the stages for TPU topologies, behind aot_compile)
  6 commands  train, eval, tokenize, generate, latent_cache, llm_check, aot_compile, compare,
              ablate: never each other (eval.py never imports train.py)
  6 api       the package itself, whose lazy attributes are the Tokenizer and the Generator
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "f3_jax"
COMMANDS = {
    "train", "eval", "tokenize", "generate", "latent_cache", "llm_check", "aot_compile",
    "compare", "ablate",
}  # fmt: skip
BASE = {
    "errors", "version", "cli", "config_docs", "config", "storage", "parallel",
    "flops", "dsp", "workdir_lock", "preemption", "progress", "summary", "latent_io", "sampling",
    "stderr_noise",
}  # fmt: skip
STATE = {"checkpoint", "exports", "frozen", "prefetch", "step_saver", "distributed"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")[1:]  # without "f3_jax"
    if not parts:
        return 6, "api"
    head = parts[0]
    if head in COMMANDS:
        return 6, "commands"
    if head == "aot":
        return 5, "aot"
    if head == "stages":
        return 4, "stages"
    if head in ("inference", "evaluation"):
        return 3, head
    if head in STATE:
        return 2, "state"
    if head == "data":
        return 1, "data"
    if head in ("models", "losses"):
        return 1, "models"
    if head == "metrics":
        return 2, "metrics"
    if head in BASE:
        return 0, "base"
    raise AssertionError(f"{module}: add it to a layer in tests/test_architecture.py")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """f3_jax modules imported anywhere in the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("f3_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("f3_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def test_no_import_cycles():
    """Tarjan's strongly connected components of the import graph: each must be one module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_follow_the_layers():
    wrong = []
    for module, imported in GRAPH.items():
        rank, name = _layer(module)
        for target in imported:
            target_rank, target_name = _layer(target)
            if target_rank > rank or (rank == target_rank and name != target_name and rank != 6):
                wrong.append(f"{module} ({name}) imports {target} ({target_name})")
            if name == "commands" and target_name == "commands" and target != "f3_jax.cli":
                wrong.append(f"{module} imports the command {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_modules_are_short():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in MODULES.values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _declarative(fn: ast.FunctionDef) -> bool:
    """A table: nearly every statement an assignment (a config's defaults)."""
    body = [s for s in fn.body if not isinstance(s, ast.Expr)]  # docstrings, calls of helpers
    assigns = [s for s in body if isinstance(s, (ast.Assign, ast.AnnAssign))]
    return len(assigns) >= 0.8 * max(len(body), 1)


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: p.name)
def test_functions_are_short(path):
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and not _declarative(node)
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"

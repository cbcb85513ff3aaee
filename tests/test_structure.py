"""The structure stays as one source of truth per concept: checked on the source tree itself.

* no import cycles between segtune's modules (``if TYPE_CHECKING`` imports excluded);
* no registered name compared as a string outside its own package (strategies, losses,
  architectures, update methods, loggers, tile blends, transferability scores and levels, export
  formats; names that are also ordinary words elsewhere, like ``none`` or ``random``, are not checked);
* the CLI help, ``segtune models`` and the README name every registered architecture, strategy
  and loss (read from the registries, not written out twice); the README names every name of
  every registry;
* no ``torch.load`` without ``weights_only=True`` and no ``pickle.load(s)`` in the product;
* every module has ``__all__``; tests run offline (``SEGTUNE_OFFLINE=1``);
* no test hooks in the product, no ``_ = name`` keep-alive assignments, no empty packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from segtune.cli import build_parser, main
from segtune.losses import list_losses
from segtune.models import list_architectures
from segtune.strategies import list_strategies

SRC = Path(__file__).resolve().parents[1] / "src" / "segtune"
README = Path(__file__).resolve().parents[1] / "README.md"


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # imports for type checkers only never run
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        out[".".join(parts)] = (f, tree)
    return out


def _imports(name: str, f: Path, tree: ast.Module, known: set[str]) -> set[str]:
    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    deps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("segtune"):
                continue
            deps.add(base)
            deps.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("segtune"))
    # a module's own parent packages are imported before it anyway: not an edge
    return {d for d in deps if d in known and d != name and not name.startswith(d + ".")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    mods = _modules()
    graph = {m: _imports(m, f, t, set(mods)) for m, (f, t) in mods.items()}
    assert _cycles(graph) == []
    # the detector itself finds a cycle
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _registry(module: str, attr: str):
    import importlib

    return getattr(importlib.import_module(module), attr).names


@pytest.mark.parametrize("names, home", [
    (list_strategies, "strategies"),
    (list_losses, "losses"),
    (list_architectures, "models"),
    (_registry("segtune.incremental.methods", "METHOD_REGISTRY"), "incremental"),
    (_registry("segtune.tracking.loggers", "LOGGERS"), "tracking"),
    (_registry("segtune.inference.tiling", "BLENDS"), "inference"),
    (_registry("segtune.selection.scores", "SCORES"), "selection"),
    (_registry("segtune.selection.levels", "LEVELS"), "selection"),
    (_registry("segtune.export.formats", "FORMATS"), "export"),
])
def test_registered_names_are_not_compared_as_strings_elsewhere(names, home) -> None:
    """``if cfg.strategy.name == "head"`` outside strategies/ would make registering a strategy
    insufficient: ask the object (``strategy.encoder_frozen``, ``.pretrained``, ...) instead."""
    registered = set(names())
    offenders = []
    for name, (f, tree) in _modules().items():
        if name.startswith(f"segtune.{home}"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                for c in consts:
                    if isinstance(c.value, str) and c.value in registered:
                        offenders.append(f"{f.name}:{node.lineno} {ast.unparse(node)}")
                for c in node.comparators:
                    if isinstance(c, (ast.Tuple, ast.List, ast.Set)):
                        hits = [e.value for e in c.elts if isinstance(e, ast.Constant) and e.value in registered]
                        if hits:
                            offenders.append(f"{f.name}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_help_models_and_readme_list_every_registered_name(capsys) -> None:
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    help_text = " ".join(train.format_help().split())
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    readme = README.read_text(encoding="utf-8")
    for name in [*list_architectures(), *list_strategies(), *list_losses()]:
        assert name in help_text, name
        assert name in listing, name
        assert f"`{name}`" in readme, name


_ALL_REGISTRIES = [
    ("segtune.strategies.builtin", "STRATEGY_REGISTRY"), ("segtune.losses", "LOSS_REGISTRY"),
    ("segtune.models.factory", "ARCHITECTURES"), ("segtune.incremental.methods", "METHOD_REGISTRY"),
    ("segtune.incremental.heads", "INIT_REGISTRY"), ("segtune.tracking.loggers", "LOGGERS"),
    ("segtune.inference.tiling", "BLENDS"), ("segtune.selection.scores", "SCORES"),
    ("segtune.selection.levels", "LEVELS"), ("segtune.export.formats", "FORMATS"),
    ("segtune.formats.layouts", "LAYOUTS"), ("segtune.tuning.samplers", "SAMPLER_REGISTRY"),
    ("segtune.tuning.samplers", "PRUNER_REGISTRY"),
]


@pytest.mark.parametrize("module, attr", _ALL_REGISTRIES)
def test_readme_names_every_registered_name(module: str, attr: str) -> None:
    readme = README.read_text(encoding="utf-8")
    assert [n for n in _registry(module, attr)() if f"`{n}`" not in readme] == []


def test_every_registry_is_checked_by_the_readme_test() -> None:
    found = set()
    for name, (_f, tree) in _modules().items():
        for node in tree.body:
            if (isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call)
                    and ast.unparse(node.value.func) == "Registry"):
                found.add((name, ast.unparse(node.target)))
    assert found == set(_ALL_REGISTRIES)


def test_no_unsafe_unpickling() -> None:
    offenders = []
    for f, tree in _modules().values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if (func == "torch.load" and not safe) or func in ("pickle.load", "pickle.loads"):
                offenders.append(f"{f.name}:{node.lineno} {func}")
    assert offenders == []


def test_no_test_hooks_keepalives_or_empty_packages() -> None:
    for f, tree in _modules().values():
        text = f.read_text(encoding="utf-8")
        assert "SEGTUNE_TEST" not in text, f
        for node in tree.body:
            if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["_"]:
                raise AssertionError(f"{f}:{node.lineno}: `_ = ...` keeps an unused name alive")
        if f.name == "__init__.py":
            others = [p for p in f.parent.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"]
            assert others, f"{f.parent}: empty package"


def test_tests_run_offline() -> None:
    import os

    from segtune.hub import offline_reason

    assert offline_reason("example.invalid") == f"SEGTUNE_OFFLINE={os.environ['SEGTUNE_OFFLINE']}"


def test_predict_help_lists_every_tile_blend() -> None:
    from segtune.inference import list_blends

    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    help_text = " ".join(predict.format_help().split())
    assert [b for b in list_blends() if b not in help_text] == []


def test_every_module_declares_its_public_names() -> None:
    missing = [str(f.relative_to(SRC)) for f, tree in _modules().values()
               if not any(isinstance(n, (ast.Assign, ast.AnnAssign)) and "__all__" in ast.unparse(n).split("=")[0]
                          for n in tree.body)]
    assert missing == []

"""The layer rules of docs/architecture.md, checked on the source (AST, function-local imports
included), and shown to fail on planted violations."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("saeprobe", "sae_training", "analysis")
PEERS = {"sae_training": "analysis", "analysis": "sae_training"}


def read_floors(doc: Path) -> dict[str, int]:
    """``{module prefix: floor}`` from the ```layers block of the architecture doc."""
    block = re.search(r"```layers\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert block, f"{doc} has no ```layers block"
    floors: dict[str, int] = {}
    for line in block.group(1).strip().splitlines():
        number, rest = line.split(" ", 1)
        for name in rest.split(":", 1)[1].split():
            floors[name] = int(number)
    return floors


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {
        module_name(root, p): p
        for pkg in PACKAGES
        for p in sorted((root / pkg).rglob("*.py"))
        if "static" not in p.parts
    }


def imports(mod: str, path: Path, known: dict[str, Path]):
    """``(line, target module, imported names)`` of every import of a project module that
    runs (module level or inside functions; ``if TYPE_CHECKING:`` blocks excluded)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # `if TYPE_CHECKING:` imports never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{target}.{n}" in known]
            for n in subs:  # `from pkg import submodule`
                yield node.lineno, f"{target}.{n}", []
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                yield node.lineno, target, rest


def floor_of(mod: str, floors: dict[str, int]) -> int | None:
    best = None
    for prefix, floor in floors.items():
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, floor)
    return None if best is None else best[1]


def check(root: Path, doc: Path) -> list[str]:
    """Every violation of the rules, one line each (empty when the tree is clean)."""
    floors = read_floors(doc)
    known = modules(root)
    problems, graph = [], {m: set() for m in known}
    for mod, path in known.items():
        src_floor = floor_of(mod, floors)
        if src_floor is None:
            problems.append(f"{mod}: not on any floor of {doc.name}")
            continue
        top = mod.split(".")[0]
        for line, target, names in imports(mod, path, known):
            where = f"{path.relative_to(root)}:{line}"
            if target not in known:
                problems.append(f"{where}: imports {target}, which does not exist")
                continue
            if target != mod:
                graph[mod].add(target)
            dst_floor = floor_of(target, floors)
            if dst_floor is not None and dst_floor > src_floor:
                problems.append(
                    f"{where}: {mod} (floor {src_floor}) imports {target} (floor {dst_floor})"
                )
            if PEERS.get(top) == target.split(".")[0]:
                problems.append(
                    f"{where}: {top} imports {target} (the two never import each other)"
                )
            if top in PEERS and target.startswith("saeprobe"):
                private = [p for p in target.split(".") if p.startswith("_")]
                private += [n for n in names if n.startswith("_")]
                if private:
                    problems.append(f"{where}: {top} uses private saeprobe names {private}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_tree_follows_the_layer_rules():
    problems = check(ROOT, ROOT / "docs" / "architecture.md")
    assert not problems, "\n".join(problems)


@pytest.fixture
def tree(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(
            ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("static", "*.pyc")
        )
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "architecture.md", tmp_path / "docs")
    return tmp_path


def _plant(tree: Path, rel: str, code: str) -> list[str]:
    path = tree / rel
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code + "\n", encoding="utf-8")
    return check(tree, tree / "docs" / "architecture.md")


def test_planted_upward_import_fails(tree):
    got = _plant(
        tree, "saeprobe/store/reader.py", "def f():\n    from saeprobe.capture import capture\n"
    )
    assert any("saeprobe.store.reader (floor 1) imports saeprobe.capture" in p for p in got), got


def test_planted_cycle_fails(tree):
    got = _plant(tree, "saeprobe/dtypes.py", "def f():\n    import saeprobe.atomic\n")
    _plant(tree, "saeprobe/atomic.py", "from . import dtypes")
    got = check(tree, tree / "docs" / "architecture.md")
    assert any(p.startswith("import cycle:") and "saeprobe.dtypes" in p for p in got), got


def test_planted_peer_and_private_imports_fail(tree):
    got = _plant(
        tree,
        "analysis/tags.py",
        "def f():\n    import sae_training\n    from saeprobe._types import Item\n",
    )
    assert any("analysis imports sae_training" in p for p in got), got
    assert any("private saeprobe names ['_types']" in p for p in got), got
    got = _plant(tree, "sae_training/recipes.py", "from saeprobe.store.reader import _seed_of")
    assert any("private saeprobe names ['_seed_of']" in p for p in got), got


@pytest.mark.parametrize(
    "package",
    ["saeprobe", "sae_training", "analysis", "saeprobe.store", "saeprobe.capture", "saeprobe.sae",
     "saeprobe.whitening", "saeprobe.retrieval", "saeprobe.run", "saeprobe.study", "saeprobe.data.mbeir"],
)  # fmt: skip
def test_every_public_name_resolves(package):
    import importlib

    mod = importlib.import_module(package)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def test_import_saeprobe_loads_no_heavy_library():
    """``import saeprobe, sae_training, analysis`` leaves transformers, sae_lens,
    transformer_lens and plotly unloaded (they load on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, saeprobe, sae_training, analysis; "
        "print(sorted(m for m in ('transformers', 'sae_lens', 'transformer_lens', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

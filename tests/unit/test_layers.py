"""The package is laid out by layer: every module imports l4opt modules only from its own layer
or the layers below (l4opt.LAYERS, lowest first), inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import l4opt

PKG = Path(l4opt.__file__).resolve().parent


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """(line, imported l4opt module) for every import in a file, nested ones included."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; use l4opt.<layer>..."
            mod = node.module or ""
            if mod == "l4opt":
                for a in node.names:
                    yield node.lineno, f"l4opt.{a.name}"
            elif mod.startswith("l4opt."):
                yield node.lineno, mod
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("l4opt."):
                    yield node.lineno, a.name


def test_no_module_imports_from_a_layer_above_it():
    order = {name: i for i, name in enumerate(l4opt.LAYERS)}
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        me = ".".join(rel.parts)
        mine = _layer(me)
        if mine == "__init__":
            continue
        for line, mod in _imports(f):
            theirs = _layer(mod)
            if theirs not in order:
                continue  # l4opt.__version__ and the like
            if order[theirs] > order[mine]:
                bad.append(f"{me}:{line} imports {mod} ({mine} < {theirs})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_every_subpackage_is_a_layer():
    found = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert found == set(l4opt.LAYERS), found ^ set(l4opt.LAYERS)

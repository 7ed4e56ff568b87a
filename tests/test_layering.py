"""Dependencies point one way: kernels <- layers <- models <- data <- checkpoints <- training <- export
<- tpu.

Reads every module of official_halonet with `ast` (nothing is imported, so it takes milliseconds)
and collects the official_halonet packages each one imports, at module level or inside a function.
A package may import itself and the packages before it in LAYERS; an import of a later package is
an upward import, and a cycle between packages is impossible without one. The top-level modules
in LEAVES import no package of official_halonet, so every package may import them.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "official_halonet")
LAYERS = ("kernels", "layers", "models", "data", "checkpoints", "training", "export", "tpu")
LEAVES = ("console",)  # official_halonet/console.py: the entry points' quiet console


def _package_of(module: str) -> str:
  """'official_halonet.training.runner' -> 'training'; '' for the top-level package itself."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def imported_packages(path: str, package: str):
  """(line, imported package) for every official_halonet import in the file at `path`."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from this package
        names = [f"official_halonet.{package}"]
      elif node.module == "official_halonet":  # from official_halonet import data
        names = [f"official_halonet.{alias.name}" for alias in node.names]
      else:
        names = [node.module or ""]
    else:
      continue
    found += [(node.lineno, _package_of(n)) for n in names
              if n.startswith("official_halonet.") and _package_of(n) not in LEAVES]
  return found


def package_imports():
  """{package: {(file, line, imported package), ...}} over official_halonet/<package>/*.py."""
  graph = {}
  for package in sorted(os.listdir(ROOT)):
    folder = os.path.join(ROOT, package)
    if not os.path.isdir(folder) or package.startswith(("_", ".")):
      continue
    for name in sorted(os.listdir(folder)):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        for line, imported in imported_packages(path, package):
          if imported != package:
            graph.setdefault(package, set()).add((f"{package}/{name}", line, imported))
  return graph


def test_every_package_has_a_layer():
  packages = {p for p in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, p))
              and not p.startswith(("_", "."))}
  assert packages == set(LAYERS), f"packages not in LAYERS (or gone): {packages ^ set(LAYERS)}"


def test_no_upward_import():
  upward = sorted(f"{where}:{line} imports official_halonet.{imported}"
                  for package, edges in package_imports().items()
                  for where, line, imported in edges
                  if LAYERS.index(imported) > LAYERS.index(package))
  assert not upward, "upward imports (order: " + " <- ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_no_cycle_between_packages():
  graph = {p: {imported for _, _, imported in edges} for p, edges in package_imports().items()}
  state = {}

  def visit(package, path):
    if state.get(package) == "done":
      return
    if state.get(package) == "open":
      pytest.fail("import cycle: " + " -> ".join(path + [package]))
    state[package] = "open"
    for imported in sorted(graph.get(package, ())):
      visit(imported, path + [package])
    state[package] = "done"

  for package in sorted(graph):
    visit(package, [])


def test_the_check_sees_an_upward_import(tmp_path):
  """The reader finds module-level, from-package and function-level imports alike."""
  path = tmp_path / "m.py"
  path.write_text("import official_halonet.export.hub\n"
                  "from official_halonet import training\n"
                  "def f():\n  from official_halonet.data import pipeline\n")
  assert sorted(imported_packages(str(path), "models")) == [
      (1, "export"), (2, "training"), (4, "data")]


def test_leaf_modules_import_no_package():
  for leaf in LEAVES:
    path = os.path.join(ROOT, f"{leaf}.py")
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    imported = [node.lineno for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                and any((name or "").startswith("official_halonet") for name in (
                    [a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module]))]
    assert not imported, f"{leaf}.py imports official_halonet at lines {imported}"

"""The shape of cnn/: no import circle anywhere, and no import from a later
tier of the README's Layout (foundation -> parts -> the config -> training
-> after training). Every import of a cnn module counts, at module level or
inside a function. Every module must be in the Layout (but package markers
holding only a docstring): a new file gets a line there, in its tier."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CNN = REPO / "cnn"


def layout_tiers() -> list[tuple[str, list[str]]]:
  """The Layout's tiers, in order: (name, the cnn/ paths listed under it)."""
  text = (REPO / "README.md").read_text()
  block = text.split("## Layout", 1)[1].split("```", 2)[1]
  tiers: list[tuple[str, list[str]]] = []
  for line in block.splitlines():
    marker = re.match(r"\s+--- (.+?) ---", line)
    if marker:
      tiers.append((marker.group(1), []))
    elif line.startswith("cnn/") and tiers:
      tiers[-1][1].append(line.split()[0])
  return tiers


def module_name(path: Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
  return {module_name(p): p for p in CNN.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
  """The cnn modules `path` imports (a name imported from a package counts as
  its submodule where there is one)."""
  def resolve(name: str) -> str:
    while name not in known:
      name = name.rpartition(".")[0]
    return name

  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {resolve(a.name) for a in node.names if a.name.startswith("cnn.")}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
        node.module or "").startswith("cnn"):
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        found.add(full if full in known else resolve(node.module))
  return found - {module_name(path), "cnn"}


def tier_of(path: Path, tiers) -> int | None:
  """The index of the tier whose listed path is the longest prefix of `path`."""
  rel = path.relative_to(REPO).as_posix()
  best = max(((len(p), i) for i, (_, paths) in enumerate(tiers) for p in paths
              if rel == p or (p.endswith("/") and rel.startswith(p))), default=None)
  return None if best is None else best[1]


def graph() -> dict[str, set[str]]:
  known = modules()
  return {name: imports_of(path, known) for name, path in known.items()}


def has_code(path: Path) -> bool:
  """False for a package marker that holds only its docstring."""
  body = ast.parse(path.read_text()).body
  return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def test_the_layout_names_five_tiers_and_every_module():
  tiers = layout_tiers()
  assert [name.split(" ")[0] for name, _ in tiers] == [
      "foundation", "parts:", "the", "training", "after"], tiers
  unplaced = [name for name, path in modules().items()
              if tier_of(path, tiers) is None and has_code(path)]
  assert not unplaced, f"not in the README's Layout: {unplaced}"


def test_no_import_reaches_a_later_tier():
  tiers, known = layout_tiers(), modules()
  upward = []
  for name, deps in graph().items():
    mine = tier_of(known[name], tiers)
    for dep in deps:
      theirs = tier_of(known[dep], tiers)
      if mine is not None and theirs is not None and theirs > mine:
        upward.append(f"{name} ({tiers[mine][0]}) imports {dep} ({tiers[theirs][0]})")
  assert not upward, "\n".join(upward)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in edges:
    if v not in index:
      visit(v)
  return found


def test_no_import_circle():
  assert circles(graph()) == []


def test_the_circle_finder_finds_circles():
  """The checks above cannot pass vacuously."""
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert circles({"a": {"b"}, "b": set()}) == []
  known = modules()
  assert "cnn.settings" in graph()["cnn.config_validation"] and len(known) > 60


@pytest.mark.parametrize("section_owner", ["cnn/optim.py", "cnn/datasets/__init__.py",
                                           "cnn/augment/__init__.py", "cnn/model_fn.py",
                                           "cnn/checkpoint.py"])
def test_section_owners_know_only_the_vocabulary(section_owner):
  """The aggregator imports the owners; an owner imports cnn.schema, never cnn.settings."""
  deps = imports_of(REPO / section_owner, modules())
  assert "cnn.schema" in deps and "cnn.settings" not in deps

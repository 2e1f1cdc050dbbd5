"""The shape of the code base: no import cycle, light imports, short
functions in train/, method names compared only in the registries, a
README that stays the front door."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- the import graph -----------------------------------------------------------


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """Every ``agt_jax`` module ``path`` imports (top level or in a function)."""
  out = set()
  pkg = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("agt_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
          pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
          + ([base] if base else [])
        )
      if base.startswith("agt_jax"):
        out.add(base)
        out |= {f"{base}.{a.name}" for a in node.names}
  return out


def _module_graph():
  files = {}
  for p in (ROOT / "agt_jax").rglob("*.py"):
    rel = p.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    files[".".join(parts)] = p
  graph = {
    m: {i for i in _imports(p, m) if i in files and i != m}
    for m, p in files.items()
  }
  return graph


def test_the_import_graph_has_no_cycle():
  graph = _module_graph()
  assert "agt_jax.train.loop" in graph and graph["agt_jax.train.loop"]
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      # A package's __init__ importing its own submodules is not a cycle.
      if m.startswith(n + "."):
        continue
      if state.get(n) == "open":
        raise AssertionError(
          "import cycle: " + " -> ".join(stack[stack.index(n) :] + [n])
        )
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_the_cycle_check_finds_a_cycle(monkeypatch):
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
  monkeypatch.setattr(
    sys.modules[__name__],
    "_module_graph",
    lambda: {**graph, "agt_jax.train.loop": {"a"}},
  )
  with pytest.raises(AssertionError, match="import cycle: a -> b -> c -> a"):
    test_the_import_graph_has_no_cycle()


def test_importing_the_losses_loads_no_heavy_dependency():
  code = (
    "import sys, agt_jax.losses, agt_jax.train.steps\n"
    "heavy = ('orbax', 'grain', 'tensorflow_datasets', 'sklearn', "
    "'matplotlib')\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  ).stdout.strip()
  assert out == "[]", out


def _functions(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
      yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_train_is_over_80_lines():
  long = [
    f"{p.name}:{name} ({n} lines)"
    for p in sorted((ROOT / "agt_jax" / "train").glob("*.py"))
    for name, n in _functions(p)
    if n > 80
  ]
  assert not long, long


# `config.loss == "x"`, `options.trainer in (...)`, `cfg.kd != "x"`, ...
_NAME_TEST = re.compile(
  r"\.(trainer|loss|reweight|kd)\s*(==|!=|\bin\b|\bnot in\b)\s*[(\"']"
)


def test_method_names_are_compared_only_in_the_registries():
  """Names resolve through agt_jax.methods and train/trainers.py; nothing
  else compares trainer, loss, reweight or kd to a string."""
  allowed = {"agt_jax/methods.py", "agt_jax/train/trainers.py"}
  hits = []
  for folder in ("agt_jax", "experiments", "benchmarks"):
    for p in sorted((ROOT / folder).rglob("*.py")):
      rel = str(p.relative_to(ROOT))
      for k, line in enumerate(p.read_text().splitlines(), 1):
        if rel not in allowed and _NAME_TEST.search(line):
          hits.append(f"{rel}:{k}: {line.strip()}")
  assert not hits, hits
  assert _NAME_TEST.search('if config.loss == "ride":')  # the check bites
  assert _NAME_TEST.search("if c.trainer in ('gbg', 'transfer'):")


def test_readme_is_the_front_door():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 300
  for link in re.findall(r"\]\((docs/[^)#]+)", text):
    assert (ROOT / link).exists(), link

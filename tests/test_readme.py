"""The README's example runs, and its test command is what CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme() -> str:
  return (ROOT / "README.md").read_text()


def test_readme_losses_example_runs():
  text = _readme()
  match = re.search(
    r"<!-- readme-example -->\s*```python\n(.*?)```", text, re.S
  )
  assert match, "README example block not found"
  namespace: dict = {}
  exec(compile(match.group(1), "README.md", "exec"), namespace)
  assert namespace["per_element"].shape == (64, 8)


def test_ci_runs_the_readme_test_command():
  text = _readme()
  block = re.search(r"<!-- ci:test-command -->\s*```bash\n(.*?)```", text, re.S)
  assert block and "pytest" in block.group(1)
  ci = (ROOT / ".ci" / "run").read_text()
  assert "ci:test-command" in ci and "set -euo pipefail" in ci
  # The README leads with the install-and-run command, then the tests.
  first_bash = text.index("```bash")
  assert "pip install -e ." in text[first_bash : first_bash + 200]

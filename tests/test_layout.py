"""The layering the code promises: evaluation never imports training, and tuning's modules form no circle."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO


def test_evaluation_imports_nothing_from_training():
    check = "import evaluation.evaluate, sys; assert not [m for m in sys.modules if m.startswith('training')]"
    completed = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]


def imported_modules(path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_evaluation_module_imports_training_even_lazily():
    for path in sorted((REPO / "evaluation").rglob("*.py")):
        assert not [m for m in imported_modules(path) if m.split(".")[0] == "training"], path


def test_the_trial_and_its_distributed_variant_do_not_import_each_other():
    assert "tuning.trial" not in imported_modules(REPO / "tuning" / "distributed.py")
    assert "tuning.trial" not in imported_modules(REPO / "tuning" / "train_and_score.py")
    assert "tuning.distributed" not in imported_modules(REPO / "tuning" / "train_and_score.py")

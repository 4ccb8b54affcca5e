"""clients/ speaks HTTP only: it never imports the service or the model, and never
needs torch (tensors are duck-typed) or numpy at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"service", "model", "torch"}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at top level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top))
    return found


def test_no_source_file_imports_service_model_or_torch() -> None:
    files = sorted((ROOT / "clients").rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        for module, line, top_level in _imports(path):
            root = module.split(".")[0]
            assert root not in FORBIDDEN, f"{path.name}:{line} imports {module}"
            assert not (root == "numpy" and top_level), f"{path.name}:{line} imports numpy at import time"


def test_importing_the_sdk_and_cli_loads_none_of_them() -> None:
    code = (
        "import sys, clients, clients.cli\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'service', 'model', 'torch', 'numpy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

"""Import direction: ``cxrnet.models`` and ``cxrnet.data`` import neither Lightning nor each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cxrnet

PACKAGE = Path(cxrnet.__file__).parent


def _imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


def test_models_and_data_do_not_import_each_other_or_lightning_in_source() -> None:
    for folder, other in (("models", "cxrnet.data"), ("data", "cxrnet.models")):
        imported = _imported_modules(PACKAGE / folder)
        bad = {
            n
            for n in imported
            if n.split(".")[0] in {"lightning", "pytorch_lightning"} or n.startswith(other)
        }
        assert not bad, f"cxrnet/{folder} imports {sorted(bad)}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_importing_models_or_data_loads_neither_lightning_nor_the_other() -> None:
    lightning = {"lightning", "pytorch_lightning"}
    models = _loaded_after("import cxrnet.models")
    assert not {m for m in models if m.split(".")[0] in lightning}
    assert not {m for m in models if m.startswith("cxrnet.data")}
    data = _loaded_after(
        "import cxrnet.data.dataset, cxrnet.data.phantoms, cxrnet.data.synthetic, cxrnet.data.items"
    )
    assert not {m for m in data if m.split(".")[0] in lightning}
    assert not {m for m in data if m.startswith("cxrnet.models")}

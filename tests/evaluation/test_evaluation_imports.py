"""The evaluation core and the report writers stay free of scikit-learn and of pyplot's global state."""

from __future__ import annotations

import subprocess
import sys


def assert_not_imported(modules: str, banned: tuple[str, ...]) -> None:
    """Import ``modules`` in a fresh interpreter and fail if any of ``banned`` got imported with them."""
    code = f"import sys, {modules}; bad = [m for m in {banned!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_sklearn_and_no_pyplot_at_import():
    assert_not_imported("cxrnet.evaluation, cxrnet.report", ("sklearn", "matplotlib.pyplot"))


def test_predict_never_imports_matplotlib():
    """Predict draws overlays without matplotlib: importing it must not cost a second per process."""
    assert_not_imported("cxrnet.predict, cxrnet.report, cxrnet.report.overlay", ("matplotlib", "sklearn"))


def test_plots_are_still_reachable_from_the_package():
    from cxrnet import report
    from cxrnet.report import plots

    assert report.plot_roc is plots.plot_roc

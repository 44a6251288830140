"""The evaluation core and the report writers stay free of scikit-learn and of pyplot's global state."""

from __future__ import annotations

import subprocess
import sys


def test_no_sklearn_and_no_pyplot_at_import():
    code = (
        "import sys, cxrnet.evaluation, cxrnet.report; "
        "bad = [m for m in ('sklearn', 'matplotlib.pyplot') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_predict_never_imports_matplotlib():
    """Predict draws overlays without matplotlib: importing it must not cost a second per process."""
    code = (
        "import sys, cxrnet.predict, cxrnet.report, cxrnet.report.overlay; "
        "bad = [m for m in ('matplotlib', 'sklearn') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_plots_are_still_reachable_from_the_package():
    from cxrnet import report
    from cxrnet.report import plots

    assert report.plot_roc is plots.plot_roc

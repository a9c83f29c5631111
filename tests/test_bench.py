"""The benchmarks still run: ``bench/run.py --quick``, every measurement at tiny sizes.

It asserts nothing about speed (bench/README.md): only that each measurement
starts its processes, measures and stops them without an error. It runs here,
in a lane of its own (tests/README.md, "Lanes"), rather than before the tests
in ``.ci/run``, so its minute overlaps with the rest of the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(330)  # about 50 s alone, more beside the other lanes
def test_every_benchmark_runs_in_its_smoke_mode(tmp_path: Path) -> None:
    report = tmp_path / "quick.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "FAILED" not in output, output[-4000:]
    assert report.exists(), output[-2000:]

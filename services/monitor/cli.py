"""``tgflow monitor check-rules FILE...``: validate rule files and run their unit tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from services.monitor.rules.loader import RuleLoadError
from services.monitor.rules.testing import run_file


def check_rules(files: list[str], out: TextIO | None = None) -> int:
    """Return 0 when every file loads and its tests pass, 1 otherwise."""
    out = out or sys.stdout
    ok = True
    for name in files:
        try:
            report = run_file(Path(name))
        except RuleLoadError as exc:
            print(f"FAILED {name}: {exc}", file=out)
            ok = False
            continue
        if report.failures:
            ok = False
            print(f"FAILED {name}: {report.failed} of {report.tests} tests", file=out)
            for failure in report.failures:
                print(f"  {failure}", file=out)
        else:
            print(f"OK {name}: {report.rules} rules, {report.tests} tests passed", file=out)
    return 0 if ok else 1

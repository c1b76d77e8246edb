"""House rule: small modules and functions (tools/code_size.py; limits from issue 12)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "code_size.py"


def test_no_module_over_400_lines_and_no_function_over_80():
    spec = importlib.util.spec_from_file_location("code_size", TOOL)
    code_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code_size)
    problems = code_size.oversized(400, 80)
    assert not problems, "\n".join(problems)

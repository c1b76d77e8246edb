"""List modules and functions of `keras_sideways` above a size limit (the layout's house rule).

Usage: ``python tools/code_size.py [--module-lines 400] [--function-lines 80]``; exits 1 when
something is over. `tests/test_code_size.py` runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keras_sideways"


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in one file, nested ones too."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def oversized(module_lines: int, function_lines: int) -> list[str]:
    """One line per module or function over its limit."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent)
        lines = len(path.read_text().splitlines())
        if lines > module_lines:
            problems.append(f"{name}: {lines} lines (limit {module_lines})")
        for function, length in function_lengths(path):
            if length > function_lines:
                problems.append(f"{name}: {function} is {length} lines (limit {function_lines})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module-lines", type=int, default=400)
    parser.add_argument("--function-lines", type=int, default=80)
    args = parser.parse_args()
    problems = oversized(args.module_lines, args.function_lines)
    print("\n".join(problems) or "every module and function is within the limits")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

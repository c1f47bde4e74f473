"""The zoo's results as the Markdown table in tests/zoo/README.md."""

from __future__ import annotations

import torch

HEADER = """# The model zoo

Tiny random-weight models of real architectures (`architectures.py`), each compiled at two depths through
both entry points on the CPU (`test_zoo.py`); every row's output equals eager (fp32, relative error ≤ 1e-5).
Regenerate with `REGIONC_ZOO_TABLE=tests/zoo/README.md python -m pytest -q tests/zoo/test_zoo.py`.
Written by torch {torch}.

| architecture | entry point | block tracing | blocks found (depth 3) | unique pieces compiled | block instances reused | warm start | fallbacks |
|---|---|---|---|---|---|---|---|
"""


def write_table(rows: list[dict], path: str) -> None:
    lines = [HEADER.format(torch=torch.__version__)]
    for row in sorted(rows, key=lambda r: (r["library"], r["name"], r["entry"])):
        lines.append(f"| {row['name']} | {row['entry']} | {row['strategy']} | {row['blocks'] or '—'} | {row['unique']} | "
                     f"{row['reused']} | {row['warm'] or '—'} | {'; '.join(row['fallbacks']) or '—'} |\n")
    with open(path, "w") as f:
        f.writelines(lines)

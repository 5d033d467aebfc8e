"""The benchmarks' output: an aligned two-column table on stdout and the same rows as JSON under reports/."""

from __future__ import annotations

import json
from pathlib import Path


def report(rows: list[tuple[str, str]], json_name: str) -> None:
    """Print ``rows`` (label, figure) as a table and write them to ``reports/<json_name>``."""
    width = max(len(label) for label, _ in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    Path("reports").mkdir(exist_ok=True)
    (Path("reports") / json_name).write_text(json.dumps(dict(rows), indent=2))

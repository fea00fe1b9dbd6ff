"""Every chapter's claims before and after a change: which verdicts flipped, which intervals widened.

    python benchmarks/claims_diff.py BEFORE/checks.json AFTER/checks.json

A chapter states each claim through `Chapter.expect`, which records in `<results>/<profile>/
checks.json` whether it held and what was measured (often an estimate with its 95% interval,
"0.994 [0.981, 1.000]"). Cutting a run's size must keep every verdict and leave every interval
as narrow or narrower (issue 28): this lists each claim whose record changed, the widths of the
intervals in it before and after, and a verdict per claim: flipped, wider, tighter, changed (a
measurement without interval, or intervals that cannot be paired), new or gone.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

INTERVAL = re.compile(r"\[(-?[\d.]+(?:e-?\d+)?), (-?[\d.]+(?:e-?\d+)?)\]")


def widths(measured: str) -> list[float]:
    """The width of every "[low, high]" interval in a measurement, in order."""
    return [float(high) - float(low) for low, high in INTERVAL.findall(measured)]


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per claim whose record differs: its verdict and what was measured on each side."""
    rows = []
    for claim in sorted(before.keys() | after.keys()):
        old, new = before.get(claim), after.get(claim)
        if old == new:
            continue
        row = {"claim": claim, "before": old and old["measured"], "after": new and new["measured"]}
        if old is None or new is None:
            rows.append(row | {"verdict": "new" if old is None else "gone"})
            continue
        old_widths, new_widths = widths(old["measured"]), widths(new["measured"])
        if old["holds"] != new["holds"]:
            verdict = "flipped"
        elif not old_widths or len(old_widths) != len(new_widths):
            verdict = "changed"
        elif any(b > a + 1e-9 for a, b in zip(old_widths, new_widths)):
            verdict = "wider"
        else:
            verdict = "tighter"
        rows.append(row | {"verdict": verdict, "widths": (old_widths, new_widths)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = (json.loads(path.read_text()) for path in (args.before, args.after))
    rows = compare(before, after)
    for row in rows:
        print(f"{row['verdict']:8} {row['claim']}")
        print(f"         before: {row['before']}\n         after:  {row['after']}")
    counts = {verdict: sum(row["verdict"] == verdict for row in rows)
              for verdict in ("flipped", "wider", "tighter", "changed", "new", "gone")}
    print(f"{len(after)} claims after, {len(rows)} changed: "
          + ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mutation score per module from `mutmut results --all true` (read on stdin).

    mutmut results --all true | python tools/mutation_score.py [--min 80]

A mutant that no test reaches ("no tests") counts as a survivor; "not
checked" (outside this run) is left out. Exits 1 when a module checked is
below --min percent.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

LINE = re.compile(r"^\s*(?P<module>[\w.]+)\.[^.\s]+__mutmut_\d+: (?P<status>.+?)\s*$")
KILLED = {"killed", "timeout", "segfault", "suspicious"}
SURVIVED = {"survived", "no tests", "skipped"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min", type=float, default=80.0)
    args = ap.parse_args()
    per = collections.defaultdict(collections.Counter)
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        per[m["module"]][m["status"]] += 1
    low = []
    print(f"{'module':34} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    for module, c in sorted(per.items()):
        k = sum(v for s, v in c.items() if s in KILLED)
        s = c["survived"] + c["skipped"]
        n = c["no tests"]
        if k + s + n == 0:
            continue
        score = 100.0 * k / (k + s + n)
        print(f"{module:34} {k:7d} {s:9d} {n:9d} {score:6.1f}%")
        if score < args.min:
            low.append(module)
    if low:
        print(f"below {args.min:g}%: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())

"""The score of one mutmut run: ``python bench/mutation_score.py EQUIVALENT_LIST RESULTS`` (called by mutation.sh).

Prints the surviving mutants (survived or no tests) on stderr and one score line on stdout; the mutants named in
the equivalent list are left out of the score; timeouts count as killed."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main(listed: Path, results: Path) -> None:
    equivalent = {}
    for line in listed.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(" ")
            equivalent[name] = why.strip()
    status = {}
    for line in results.read_text().splitlines():
        m = re.match(r"\s*([\w.\[\]<>ǁ-]+__mutmut_\d+): (.+)", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    counted = {k: v for k, v in status.items() if k not in equivalent}
    killed = sum(v in ("killed", "timeout") for v in counted.values())
    for name in sorted(k for k, v in counted.items() if v not in ("killed", "timeout")):
        print(f"  {counted[name]}: {name}", file=sys.stderr)
    print(
        f"mutants {len(status)}, equivalent (left out) {len(status) - len(counted)}, killed {killed}/{len(counted)} "
        f"= {100 * killed / max(len(counted), 1):.1f} %"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

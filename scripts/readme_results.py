"""Copy the generated result tables into README.md (between the results markers), so the README
shows exactly what the last real run wrote: metrics/summary.md and, when present, the
variants' tables metrics/variants/remove_all.md and minilm.md, the benchmark table metrics/bench.md
(bench/run_bench.py) and the multi-seed table metrics/seeds.md (bench/seeds.py --md).

    python scripts/readme_results.py          # rewrite README.md
    python scripts/readme_results.py --check  # exit 1 if README.md is out of date
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = {
    "results": ROOT / "metrics/summary.md",
    "results-remove-all": ROOT / "metrics/variants/remove_all.md",
    "results-minilm": ROOT / "metrics/variants/minilm.md",
    "bench": ROOT / "metrics/bench.md",
    "seeds": ROOT / "metrics/seeds.md",
}


def render(readme: str) -> str:
    for name, source in BLOCKS.items():
        if not source.is_file():
            continue
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        body = source.read_text(encoding="utf-8").strip() + "\n"
        readme = pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)
    return readme


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    current = path.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md: results tables differ from metrics/: run python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Copy the generated result tables into the README and docs (between their markers), so they
show exactly what the last real run wrote: metrics/summary.md into README.md, the multi-seed table
metrics/seeds.md (bench/seeds.py --md) into docs/models.md, and the variants' tables
metrics/variants/*.md into docs/experiments.md.

    python scripts/readme_results.py          # rewrite them from metrics/ in the work tree
    python scripts/readme_results.py --check  # exit 1 if any is out of date with the committed metrics/
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
# (document, marker, the metrics file whose text goes between <!-- marker:start/end -->)
BLOCKS = [
    ("README.md", "results", "metrics/summary.md"),
    ("docs/models.md", "seeds", "metrics/seeds.md"),
    ("docs/experiments.md", "results-remove-all", "metrics/variants/remove_all.md"),
]
DOCUMENTS = sorted({doc for doc, _, _ in BLOCKS})

Reader = Callable[[str], "str | None"]


def read_worktree(path: str) -> str | None:
    file = ROOT / path
    return file.read_text(encoding="utf-8") if file.is_file() else None


def read_committed(path: str, rev: str = "HEAD") -> str | None:
    """`path` as committed at `rev`: a user's own run rewrites metrics/, the committed run does not."""
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def render(document: str, text: str, read: Reader = read_worktree) -> str:
    """`text` (the document `document`) with each of its blocks replaced by its metrics file."""
    for doc, name, source in BLOCKS:
        body = read(source) if doc == document else None
        if body is None:
            continue
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for document in DOCUMENTS:
        path = ROOT / document
        current = path.read_text(encoding="utf-8")
        wanted = render(document, current, read_committed if check else read_worktree)
        if wanted != current:
            stale.append(document)
            if not check:
                path.write_text(wanted, encoding="utf-8")
    if check and stale:
        print(f"{', '.join(stale)}: results tables differ from the committed metrics/: "
              "run python scripts/readme_results.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

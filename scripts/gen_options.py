"""Write docs/options.md, the options reference, from the schema and the commands' arguments.

    python scripts/gen_options.py           # (re)write it
    python scripts/gen_options.py --check   # exit 1 when it is out of date (tests/test_options_doc.py does the same)
"""
from __future__ import annotations

import sys
from pathlib import Path

from wubugen.cli import build_parser
from wubugen.config.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def main(argv: list[str]) -> int:
    text = render(build_parser())
    if "--check" in argv:
        if DOC.exists() and DOC.read_text() == text:
            return 0
        print(f"{DOC} is out of date: run python scripts/gen_options.py", file=sys.stderr)
        return 1
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

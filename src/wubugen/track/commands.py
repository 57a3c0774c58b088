"""`wubugen report RUN`: the HTML report of a run directory or of a phase plan's root (track/html_report.py)."""
from __future__ import annotations

from wubugen.config import HelpFormatter

REPORT_EXAMPLES = """examples:
  wubugen report runs/guide                 # a plan's root: every phase on one page
  wubugen report runs/phase1 --out phase1.html
  chromium --headless --screenshot=report.png --window-size=1400,2000 runs/guide/report.html   # as a picture"""


def _cmd(args) -> int:
    from wubugen.track.html_report import write_report

    out = write_report(args.run, args.out)
    print(f"report: {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of a run or a phased plan: curves, health, samples",
                       description=__doc__, formatter_class=HelpFormatter, epilog=REPORT_EXAMPLES)
    p.add_argument("run", metavar="RUN", help="a run directory, or the root of a `wubugen phases` plan")
    p.add_argument("--out", default=None, metavar="FILE.html", help="where to write it (default RUN/report.html)")
    p.set_defaults(func=_cmd)

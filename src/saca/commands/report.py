"""CLI commands: report (a parameterised notebook -> HTML with papermill), report-index (issue 14)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("report", help="execute a report notebook with papermill and render it to HTML",
                       description="Run NOTEBOOK (workflow/notebooks/*.ipynb) with the parameters of --parameters "
                       "injected (papermill), keep the executed notebook as OUT with .ipynb and write OUT (HTML, "
                       "code cells hidden). Inputs the notebook reads that are missing are named.")
    p.add_argument("--notebook", required=True, type=Path)
    p.add_argument("--parameters", default="{}", help="JSON object of the notebook's parameters (papermill)")
    p.add_argument("--out", required=True, type=Path, help="the HTML file (results/reports/NAME.html)")
    p.set_defaults(func=cmd_report)
    q = sub.add_parser("report-index", help="the index page of the reports")
    q.add_argument("--reports", nargs="+", required=True, metavar="FILE=DESCRIPTION")
    q.add_argument("--out", required=True, type=Path)
    q.set_defaults(func=cmd_report_index)


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from saca import SacaError
    from saca.report import check_parameters, run_notebook

    try:
        params = json.loads(args.parameters)
    except json.JSONDecodeError as err:
        raise SacaError(f"--parameters: malformed JSON ({err})") from err
    if not isinstance(params, dict):
        raise SacaError("--parameters: expected a JSON object of notebook parameters")
    check_parameters(params)  # before the kernel starts
    out = run_notebook(args.notebook, args.out, params)
    log.info("wrote %s", out)
    return 0


def cmd_report_index(args: argparse.Namespace) -> int:
    from saca import SacaError
    from saca.io import write_text
    from saca.report import index_html

    items = []
    for item in args.reports:
        if "=" not in item:
            raise SacaError(f"--reports {item!r}: expected FILE=DESCRIPTION")
        f, d = item.split("=", 1)
        if not (args.out.parent / f).is_file():
            raise SacaError(f"--reports: {args.out.parent / f} does not exist")
        items.append((f, d))
    write_text(args.out, index_html(items))
    return 0

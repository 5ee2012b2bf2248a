"""`skqk claims`: the paper's claims checked against saved results, as the tables of README.md and docs/results.md."""

from __future__ import annotations

from skqk.cli.options import add_command


def add_parsers(sub) -> None:
    p = add_command(
        sub,
        "claims",
        help="the claims tables (verdict and evidence per claim) from saved results; --update rewrites them in place",
    )
    p.add_argument("--results", default="docs/figures", help="folder of the saved results.json (default docs/figures)")
    p.add_argument(
        "--table", choices=["results", "readme"], default="results", help="which table to print (default results)"
    )
    p.add_argument(
        "--update",
        nargs="+",
        metavar="FILE",
        help="rewrite the tables between <!-- claims:begin STYLE --> and <!-- claims:end --> in these files",
    )
    p.add_argument(
        "--check", nargs="+", metavar="FILE", help="fail if these files' tables differ from the saved results"
    )


def cmd_claims(args) -> None:
    from pathlib import Path

    from skqk.experiments.claims import claims, claims_table, update, with_tables

    rows = claims(args.results)
    if args.check:
        stale = [f for f in args.check if with_tables(text := Path(f).read_text(), rows, f) != text]
        if stale:
            raise ValueError(
                f"the claims tables of {', '.join(stale)} differ from the results in {args.results}: run "
                f"skqk claims --results {args.results} --update {' '.join(stale)}"
            )
    if args.update:
        changed = update(args.update, rows)
        print(f"updated {', '.join(map(str, changed))}" if changed else "the tables were up to date")
    if not args.update and not args.check:
        print(claims_table(rows, args.table))


COMMANDS = {"claims": cmd_claims}

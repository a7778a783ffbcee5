"""``nestrank reproduce``: run the conditions of a reproduction file and check every figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app


@app.command("reproduce")
def reproduce_command(
    file: Annotated[Path, typer.Argument(help="Reproduction file (see reproductions/).", show_default=False)],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The dataset the conditions run on.")]
        = "../shared/data/scifact",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the conditions write their runs.")]
        = Path("out/reproduce"),
    only: Annotated[str | None, typer.Option("--only", help="Comma-separated condition names to run.")] = None,
    rerun: Annotated[bool, typer.Option("--rerun", help="Run the commands even when a condition's run exists.")]
        = False,
    list_only: Annotated[bool, typer.Option("--list", help="List the conditions and their commands; run nothing.")]
        = False,
) -> None:
    """Reproduce the figures of a file, e.g. `nestrank reproduce reproductions/scifact.toml --only bm25`.

    Exits 1 when a figure is off by more than its tolerance.
    """
    from rich.console import Console
    from rich.table import Table

    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.reproduce import load_conditions, reproduce

    conditions = load_conditions(file)
    if only is not None:
        wanted = [name.strip() for name in only.split(",") if name.strip()]
        unknown = set(wanted) - {c.name for c in conditions}
        if unknown:
            raise ConfigError(f"--only: no condition named {', '.join(sorted(unknown))} in {file} (it has "
                              f"{', '.join(c.name for c in conditions)})")
        conditions = [c for c in conditions if c.name in wanted]
    console = Console()
    if list_only:
        for condition in conditions:
            minutes = "" if condition.minutes is None else f" (~{condition.minutes:g} min)"
            console.print(f"[bold]{condition.name}[/bold]: {condition.metric} {condition.expected:g}{minutes}")
            for command in condition.commands:
                console.print(f"  {command}", markup=False, highlight=False)
        return
    check_output(out, directory=True)
    outcomes = reproduce(conditions, dataset=dataset, out=out, rerun=rerun,
                         log=lambda line: typer.echo(line, err=True))
    table = Table(title=f"{file} ({dataset})")
    for column in ("condition", "metric", "expected", "got", "ok", "minutes"):
        table.add_column(column, justify="left" if column in ("condition", "metric") else "right")
    for outcome in outcomes:
        c = outcome.condition
        table.add_row(c.name, f"{c.metric} ({c.split})", f"{c.expected:.4f}", f"{outcome.got:.4f}",
                      "yes" if outcome.ok else f"[red]no (±{c.tolerance:g})[/red]",
                      f"{outcome.minutes:.1f}" + ("" if outcome.ran else " (kept)"))
    console.print(table)
    if not all(outcome.ok for outcome in outcomes):
        raise typer.Exit(1)

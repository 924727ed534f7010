"""``xraycardiac models list|import|export``: the model cache from the command line.

Mounted by the top-level CLI as ``xraycardiac models ...``; usable alone as
``python -c "from xraycardiac.models.cli import app; app()"``. Nothing here imports torch, so
``list`` answers in a fraction of a second even on machines where torch is slow to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from xraycardiac.cli_errors import ErrorHandlingGroup
from xraycardiac.models.manifest import (
    ModelEntry,
    ModelIntegrityError,
    export_model,
    import_model,
    list_models,
    models_dir,
    verify_file,
)

app = typer.Typer(
    name="models",
    help="List, import and export model weights (sha256-checked; research only, not for clinical use).",
    no_args_is_help=True,
    add_completion=False,
    cls=ErrorHandlingGroup,
)


def _status(entry: ModelEntry, verify: bool) -> tuple[bool | None, str]:
    """(verified?, words) for one listed entry; None when not checked."""
    if not verify:
        return None, "not checked"
    assert entry.path is not None
    try:
        verify_file(entry.path, entry.sha256, model=entry.name)
    except FileNotFoundError:
        return False, "missing"
    except ModelIntegrityError:
        return False, "sha256 mismatch"
    return True, "yes"


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check each weights file's sha256 (reads the files).")
    ] = True,
) -> None:
    """List packaged and imported models, where their weights are and whether they verify."""
    entries = list_models()
    rows: list[dict[str, Any]] = []
    for entry in entries:
        ok, words = _status(entry, verify)
        rows.append(
            {
                **entry.to_dict(),
                "origin": entry.origin,
                "path": str(entry.path),
                "verified": ok,
                "status": words,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"No models. Import one with `xraycardiac models import PATH` (cache: {models_dir()}).")
        return
    table = Table(title="xraycardiac models")
    for column in ("name", "version", "licence", "intended use", "location", "verified?"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = {"yes": "green", "not checked": "yellow"}.get(row["status"], "red")
        table.add_row(
            row["name"],
            row["version"],
            row["licence"],
            row["intended_use"],
            f"{row['origin']}: {row['path']}",
            f"[{style}]{row['status']}[/{style}]",
        )
    console.print(table)


@app.command("import")
def import_cmd(
    path: Annotated[
        Path, typer.Argument(help="Model package: a directory or .zip with model.json + weights.")
    ],
) -> None:
    """Import a model package into the cache (checks its sha256 first)."""
    entry = import_model(path)
    typer.echo(f"Imported {entry.name} {entry.version} (sha256 {entry.sha256}) into {entry.directory}")


@app.command("export")
def export_cmd(
    name: Annotated[str, typer.Argument(help="Model name, as `xraycardiac models list` shows it.")],
    dest: Annotated[Path, typer.Argument(help="Destination directory, or a path ending in .zip.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Version to export (default: the highest).")
    ] = None,
) -> None:
    """Export a model (weights + model.json) to a directory or .zip, after checking its sha256."""
    out = export_model(name, dest, version=version)
    typer.echo(f"Exported {name} to {out}")

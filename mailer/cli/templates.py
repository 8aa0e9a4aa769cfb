"""`mailer templates export DIR`: copy the bundled templates somewhere the clinic can edit them."""

from __future__ import annotations

from pathlib import Path

import click

from mailer import bundled
from mailer.cli.context import UserError


@click.group("templates")
def templates() -> None:
    """The email and page templates that come with mailer."""


@templates.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that are already there.")
def export(directory: Path, force: bool) -> None:
    """Copy the bundled templates into DIRECTORY to customise; then set paths.templates to it.

    A template left out of (or deleted from) the copy still comes from mailer's own.
    """
    try:
        files = bundled.export_templates(directory, overwrite=force)
    except FileExistsError as exc:
        raise UserError(f"{exc}: already exists (use --force to overwrite the copies there)") from None
    except OSError as exc:
        raise UserError(f"{directory}: cannot copy the templates there: {exc.strerror or exc}") from None
    click.echo(f"Copied {len(files)} templates to {directory}/.")
    click.echo(f'Set paths.templates = "{directory.resolve()}" in config.toml to use them.')

"""`mailer backup FILE`: a consistent copy of the SQLite database, safe while mailer runs."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli.context import Context, UserError, pass_ctx


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def backup(ctx: Context, file: Path) -> None:
    """Copy the SQLite database to FILE (a new file), consistent even while `mailer serve` or
    `mailer send` runs, and check the copy. For PostgreSQL, use pg_dump (see README)."""
    from mailer import backup as backups
    from mailer import config

    try:
        settings = config.load(ctx.config_path)
        made = backups.copy(backups.sqlite_path(settings.database.url), file)
    except (config.ConfigError, backups.BackupError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"Backed up {made.source} to {made.target}: {made.pages} pages ({made.size / 1e6:.1f} MB), "
               "integrity ok.")

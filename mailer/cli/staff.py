"""`mailer staff add EMAIL` and `mailer staff password EMAIL`: logins for the staff pages."""

from __future__ import annotations

import os
import sys

import click

from mailer import staff as staff_accounts
from mailer.cli.context import Context, UserError, friendly, pass_ctx

PASSWORD_VARIABLE = "MAILER_STAFF_PASSWORD"


@click.group("staff")
def staff() -> None:
    """Logins for the staff pages (/admin)."""


def _password() -> str:
    """From a hidden prompt on a terminal (typed twice); otherwise from $MAILER_STAFF_PASSWORD."""
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password")
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if not password:
        raise UserError(f"no password: run this on a terminal to be asked for one, or set {PASSWORD_VARIABLE}")
    return password


@staff.command("add")
@click.argument("email")
@pass_ctx
@friendly
def add(ctx: Context, email: str) -> None:
    """Create a staff login. The password (at least 12 characters) is asked for on a terminal,
    otherwise read from $MAILER_STAFF_PASSWORD."""
    password = _password()
    try:
        # Checked before opening the database, so a typo costs nothing and says only what is wrong.
        staff_accounts.check_password_rules(password)
        with ctx.runtime.sessions.begin() as session:
            user = staff_accounts.create(session, email, password, ctx.now())
            address = user.email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"Staff login {address} created. Log in at {ctx.settings.web.base_url}/admin/login")


@staff.command("password")
@click.argument("email")
@pass_ctx
@friendly
def password(ctx: Context, email: str) -> None:
    """Set a new password for a staff login (a forgotten one, or after a lockout). Its open sessions end.
    Asked for on a terminal, otherwise read from $MAILER_STAFF_PASSWORD."""
    new_password = _password()
    try:
        staff_accounts.check_password_rules(new_password)
        with ctx.runtime.sessions.begin() as session:
            address = staff_accounts.set_password(session, email, new_password).email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"New password set for {address}.")

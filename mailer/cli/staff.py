"""`mailer staff add|list|role|disable|enable|password`: logins for the staff pages and their roles."""

from __future__ import annotations

import os
import sys

import click

from mailer import staff as staff_accounts
from mailer.cli.context import Context, UserError, cli_actor, friendly, pass_ctx
from mailer.models import STAFF_ROLES

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


ROLE_HELP = ("admin: everything, staff accounts, erasure; marketing: campaigns, compose, subscribers' figures, "
             "no inquiry messages; frontdesk: inquiries and their messages, no campaigns.")
ROLE_OPTION = click.option("--role", required=True, type=click.Choice(STAFF_ROLES), help=ROLE_HELP)


@staff.command("add")
@click.argument("email")
# `mailer staff add EMAIL` without a role is what scripts written before roles run: it keeps making the
# full login it always made (and says so), rather than breaking them.
@click.option("--role", default="admin", show_default=True, type=click.Choice(STAFF_ROLES), help=ROLE_HELP)
@pass_ctx
@friendly
def add(ctx: Context, email: str, role: str) -> None:
    """Create a staff login with a role (admin unless --role says otherwise). The password (at least 12
    characters) is asked for on a terminal, otherwise read from $MAILER_STAFF_PASSWORD."""
    password = _password()
    try:
        # Checked before opening the database, so a typo costs nothing and says only what is wrong.
        staff_accounts.check_password_rules(password)
        with ctx.runtime.sessions.begin() as session:
            user = staff_accounts.create(session, email, password, ctx.now(), role=role, actor=cli_actor())
            address = user.email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"Staff login {address} created with the role {role}. "
               f"Log in at {ctx.settings.web.base_url}/admin/login")


@staff.command("list")
@pass_ctx
@friendly
def list_(ctx: Context) -> None:
    """Every staff login with its role, whether it is disabled, and its last login."""
    zone = ctx.settings.zone
    with ctx.runtime.sessions() as session:
        users = staff_accounts.listing(session)
    if not users:
        click.echo("No staff logins yet (mailer staff add EMAIL --role ROLE).")
        return
    click.echo(f"{'email':<40} {'role':<10} {'status':<9} last login (local)")
    for user in users:
        status = "disabled" if user.disabled_at else "active"
        last = user.last_login_at.astimezone(zone).strftime("%Y-%m-%d %H:%M") if user.last_login_at else "never"
        click.echo(f"{user.email:<40} {user.role:<10} {status:<9} {last}")


@staff.command("role")
@click.argument("email")
@ROLE_OPTION
@pass_ctx
@friendly
def role(ctx: Context, email: str, role: str) -> None:
    """Give a staff login another role; its open sessions end. Written to the access log."""
    try:
        with ctx.runtime.sessions.begin() as session:
            user, before = staff_accounts.set_role(session, email, role, ctx.now(), actor=cli_actor())
            address = user.email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    if before == role:
        click.echo(f"{address} already has the role {role}; nothing changed.")
    else:
        click.echo(f"{address}: role {before} -> {role}. Their open sessions have ended.")


@staff.command("disable")
@click.argument("email")
@pass_ctx
@friendly
def disable(ctx: Context, email: str) -> None:
    """Stop a staff login: no more logins, and every open session of it ends at once."""
    try:
        with ctx.runtime.sessions.begin() as session:
            user, changed = staff_accounts.disable(session, email, ctx.now(), actor=cli_actor())
            address = user.email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"{address} disabled; every open session of it has ended." if changed
               else f"{address} was already disabled; any session of it has ended.")


@staff.command("enable")
@click.argument("email")
@pass_ctx
@friendly
def enable(ctx: Context, email: str) -> None:
    """Let a disabled staff login log in again."""
    try:
        with ctx.runtime.sessions.begin() as session:
            user, changed = staff_accounts.enable(session, email, ctx.now(), actor=cli_actor())
            address = user.email
    except staff_accounts.StaffError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"{address} can log in again." if changed else f"{address} was not disabled; nothing changed.")


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

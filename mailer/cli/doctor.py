"""`mailer doctor`: check the whole setup, one line per check; non-zero when anything failed."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

import click

from mailer.cli.context import Context, UserError, pass_ctx


def _dns_server(value: str | None) -> tuple[str, int] | None:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    if not value:
        return None
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest else "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--dns-server: expected HOST or HOST:PORT, got {value!r}")
    return host, int(port)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines (for scripts).")
@click.option("--dns-server", metavar="HOST:PORT", help="Ask this DNS server instead of the system's.")
@click.option("--send-test", metavar="EMAIL", help="Also send one test email to this address through the relay.")
@pass_ctx
def doctor(ctx: Context, as_json: bool, dns_server: str | None, send_test: str | None) -> None:
    """Check the setup: config, secrets, database, feed, the SMTP relay (TLS, certificate, AUTH, sender;
    nothing is sent), SPF, DKIM, DMARC and MX, the public address and its one-click unsubscribe, and
    the bounce and replies mailboxes. Each line starts with ✓ (fine), ! (look at it) or ✗ (must fix)
    and says what to do; the exit status is 1 when any line is ✗."""
    from mailer import audience
    from mailer.doctor import Options, examine, failed

    server = _dns_server(dns_server)
    if send_test is not None:
        try:
            send_test = audience.normalize_email(send_test)
        except audience.AudienceError as exc:
            raise UserError(f"--send-test: {exc}") from None
    options = Options(ctx.config_path, dict(os.environ), dns_server=server, send_test=send_test)
    results = examine(options, dt.datetime.now(dt.UTC))
    if as_json:
        click.echo(json.dumps({"ok": not failed(results), "checks": [r.as_dict() for r in results]},
                              indent=2, ensure_ascii=False))
    else:
        for result in results:
            click.echo(result.line())
        problems = sum(r.status == "fail" for r in results)
        notes = sum(r.status == "warn" for r in results)
        click.echo(f"{problems} to fix, {notes} to look at." if problems or notes else "All good.")
    sys.exit(1 if failed(results) else 0)

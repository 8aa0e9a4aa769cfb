"""Send-path benchmark: mailer against Postfix's smtp-source → smtp-sink ceiling and a naive baseline.

Run from the repository root (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_send.py                # 20,000 recipients, 3 rounds
    .venv/bin/python tests/benchmarks/bench_send.py --n 1000000 --rounds 1 --skip-latency

It installs Debian's postfix package if smtp-sink is missing (it never starts the postfix daemon), builds a
database of N subscribers (SQLite, and PostgreSQL when --pg-url or MAILER_TEST_POSTGRES_URL is set), makes one
newsletter campaign from the sample feed, and measures in one run, alternating rounds: the ceiling (smtp-source
→ smtp-sink, same message size and sessions), a naive Python baseline, `mailer send` on each database,
and `mailer tick` (the scheduler's path: every due job, the send among them); then `mailer send` against
`smtp-sink -w 1` (one second per reply) at 1, 4 and 16 connections. With `--old-tree DIR` (a checkout of an
earlier commit with its own `.venv`, made by the README's install command), `mailer send` of that code runs in
the same rounds, for a before/after ratio. Every other round runs them in the reverse order. It prints
messages/s, ratios, enqueue time and peak RSS, and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from mailer import config, db, schema  # noqa: E402
from mailer.outbound import workers  # noqa: E402
from mailer.publishing import campaigns, feeds, render  # noqa: E402

MAILER = str(Path(sys.executable).with_name("mailer"))
SAMPLE_FEED = ROOT / "mailer" / "sample" / "blog-feed.xml"
NOW = dt.datetime(2026, 11, 24, 0, 30, tzinfo=dt.UTC)  # 18:30 clinic time, just after the send time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_postfix_tools() -> None:
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return
    print("installing Debian's postfix package for smtp-sink/smtp-source (the daemon is not started)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env, stdout=subprocess.DEVNULL)


class Sink:
    """smtp-sink on a free loopback port; `delay` seconds before each DATA reply (whole seconds)."""

    def __init__(self, delay: int = 0) -> None:
        self.port = free_port()
        args = ["smtp-sink", "-u", "nobody", "-c"]
        if delay:
            args += ["-w", str(delay)]
        self.process = subprocess.Popen([*args, f"127.0.0.1:{self.port}", "1024"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def write_config(folder: Path, connections: int, root: Path = ROOT) -> Path:
    """`root`'s config.toml (an earlier tree knows only its own keys) with the benchmark's settings."""
    text_ = (root / "config.toml").read_text()
    text_ = text_.replace('templates = "templates"', f'templates = "{root / "templates"}"')
    text_ = text_.replace('var = "var"', f'var = "{folder / "var"}"')
    text_ = text_.replace("connections = 4", f"connections = {connections}")
    text_ = text_.replace("first_run_posts = 1", "first_run_posts = 3")
    text_ = text_.replace("batch_size = 200", "batch_size = 500")
    text_ = text_.replace('url = "mailer/sample/blog-feed.xml"', f'url = "{SAMPLE_FEED}"')  # for `mailer tick`
    path = folder / f"config-{connections}{'' if root == ROOT else '-before'}.toml"
    path.write_text(text_)
    return path


def build_database(url: str, n: int, settings: config.Settings) -> dict[str, float]:
    """N subscribers in set-based statements, a newsletter from the sample feed, enqueued; returns timings."""
    engine = db.make_engine(url)
    schema.upgrade(engine)
    sqlite = engine.dialect.name == "sqlite"
    series = ("WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) SELECT i FROM seq"
              if sqlite else "SELECT i FROM generate_series(1, :n) AS i")
    started = time.perf_counter()
    with engine.begin() as conn:
        stamp = NOW.replace(tzinfo=None) if sqlite else NOW
        false = "0" if sqlite else "false"
        conn.execute(text(
            "INSERT INTO contacts (email, name, created_at, link_key, followups_consent, soft_bounces) "
            f"SELECT 'reader' || i || '@example.com', 'Reader ' || i, :now, 'k' || i, {false}, 0 FROM ({series}) s"
        ), {"n": n, "now": stamp})
        conn.execute(text(
            "INSERT INTO consent_events (contact_id, purpose, action, source, wording, created_at) "
            "SELECT id, 'topic:newsletter', 'granted', 'benchmark', '', :now FROM contacts"), {"now": stamp})
        conn.execute(text(
            "INSERT INTO subscriptions (contact_id, topic, status, updated_at, consent_event_id) "
            "SELECT contact_id, 'newsletter', 'active', :now, id FROM consent_events"), {"now": stamp})
    populated = time.perf_counter() - started
    sessions = db.session_factory(engine)
    with sessions.begin() as session:
        feeds.ingest(session, settings.feed.model_copy(update={"url": str(SAMPLE_FEED), "first_run_posts": 3}), NOW)
        outcome = campaigns.make_newsletter(session, settings, NOW)
        assert outcome.campaign is not None, outcome.reason
    started = time.perf_counter()
    with sessions.begin() as session:
        enqueued = campaigns.dispatch(session, NOW, render.Renderer(settings))
    enqueue = time.perf_counter() - started
    engine.dispose()
    assert sum(enqueued.values()) == n, enqueued
    return {"populate_s": round(populated, 2), "enqueue_s": round(enqueue, 2)}


def reset_outbox(url: str) -> None:
    """Every message waiting again, as after a fresh enqueue (whose ANALYZE the dispatch does itself)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET state = 'queued', attempts = 0, sent_at = NULL, lease_until = NULL, "
                          "claimed_by = NULL, message_id = NULL"))
        conn.execute(text("UPDATE campaigns SET state = 'sending'"))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE outbox"))
    engine.dispose()


def run_mailer_send(url: str, config_path: Path, port: int, expected: int, processes: str = "1",
                    command: str = "send", tree: Path | None = None) -> dict[str, float]:
    """`mailer send` (or `mailer tick` at the benchmark's moment) as a command; `tree`: the code of an
    earlier commit instead of this checkout's."""
    env = {**os.environ, "MAILER_DATABASE_URL": url, "MAILER_SMTP_URL": f"smtp://127.0.0.1:{port}",
           "MAILER_SECRET_KEY": "benchmark-secret", "MAILER_BASE_URL": "https://mail.therapycentral.example",
           "MAILER_CONFIG": str(config_path)}
    program = [MAILER]
    if tree is not None:
        # The earlier tree's own install: sharing this one's (PYTHONPATH, `python -m`) imports this
        # checkout's modules wherever the editable install maps them, and "before" would measure "after".
        program = [str(tree / ".venv" / "bin" / "mailer")]
    if command == "tick":
        args = ["tick", "--at", NOW.isoformat()]  # the whole tick: ingest, newsletter, follow-ups, delivery
    else:
        args = ["send"] + ([] if processes == "auto" else ["--processes", processes])  # "auto": the default
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *program, *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"mailer {command} failed: {result.stderr[-2000:]}")
    sent = int(re.search(r"sent (\d+)", result.stdout).group(1))
    if sent != expected:
        raise RuntimeError(f"mailer send sent {sent}, expected {expected}: {result.stdout}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return {"seconds": elapsed, "rate": sent / elapsed, "peak_rss_mb": rss_kb / 1024}


def message_sample(settings: config.Settings, url: str) -> bytes:
    """One real message of the campaign, for its size and for smtp-source -F."""
    engine = db.make_engine(url)
    with db.session_factory(engine)() as session:
        campaign = campaigns.listing(session, 1)[0]
        prepared = render.Renderer(settings).prepare_campaign(campaign)
    engine.dispose()
    values = render.sample_values(settings.web.base_url)
    return prepared.build(render.Recipient("reader1@example.com", "Reader 1", values, "<1.x@therapycentral.example>"), NOW)


def run_ceiling(port: int, count: int, sessions: int, size: int) -> dict[str, float]:
    started = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-m", str(count), "-s", str(sessions), "-l", str(size),
                    "-f", "news@therapycentral.example", "-t", "reader@example.com", f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "rate": count / elapsed}


def run_naive(settings: config.Settings, url: str, port: int, count: int) -> dict[str, float]:
    """The first row of the issue's table: Jinja2 + premailer + EmailMessage per recipient, a new connection each."""
    engine = db.make_engine(url)
    with db.session_factory(engine)() as session:
        campaign = campaigns.listing(session, 1)[0]
        posts = list(campaign.posts)
        subject = campaign.subject
    engine.dispose()
    renderer = render.Renderer(settings)
    template = renderer.env.get_template("email/newsletter/digest.html")
    text_template = renderer.env.get_template("email/newsletter/digest.txt")
    views = renderer.post_views(posts)
    started = time.perf_counter()
    for i in range(count):
        recipient = {"first_name": f"Reader{i}", "preferences_url": f"https://x.example/p/{i}",
                     "unsubscribe_url": f"https://x.example/u/{i}", "confirm_url": ""}
        context = {"clinic": settings.clinic, "sender": settings.sender, "topics": settings.topics,
                   "base_url": settings.web.base_url, "recipient": recipient, "subject": subject, "preheader": "",
                   "marketing": True, "posts": views, "intro": "", "body_html": "", "body_text": "",
                   "archive_url": f"{settings.web.base_url}/archive/1-newsletter"}
        html_doc = render.inline_css(template.render(context))
        message = EmailMessage()
        message["From"] = f"{settings.sender.from_name} <{settings.sender.from_email}>"
        message["To"] = f"reader{i}@example.com"
        message["Subject"] = subject
        message["List-Unsubscribe"] = f"<{recipient['unsubscribe_url']}>"
        message.set_content(text_template.render(context))
        message.add_alternative(html_doc, subtype="html")
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.send_message(message)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "rate": count / elapsed}


def compile_bytecode() -> None:
    """Compile mailer's modules to bytecode, as `pip install` does for an installed package.

    A checkout installed in editable mode caches its bytecode on first import, unless
    PYTHONDONTWRITEBYTECODE is set (as it is on some CI machines): then every `mailer send` would
    compile its modules again, about a tenth of a second that an installed mailer never spends."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "mailer"), str(ROOT / "jobs")], check=True)


def python_speed() -> float:
    """Nanoseconds per iteration of a plain Python loop (best of 3), in a fresh interpreter.

    The ratios to the ceiling depend on how fast this machine runs Python next to how fast its kernel
    moves loopback TCP (smtp-source and smtp-sink are C): printed so runs on different days compare."""
    loop = "import time\nt=time.perf_counter()\nx=0\nfor i in range(5_000_000): x+=i\nprint(time.perf_counter()-t)"
    runs = [float(subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return round(min(runs) / 5_000_000 * 1e9, 1)


def make_database(kind: str, pg_url: str | None, folder: Path, label: str) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{folder / f'{label}.db'}", lambda: None
    name = f"mailer_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(pg_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="recipients (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections / smtp-source sessions")
    parser.add_argument("--naive-count", type=int, default=300, help="messages for the naive baseline")
    parser.add_argument("--pg-url", default=os.environ.get("MAILER_TEST_POSTGRES_URL", ""),
                        help="PostgreSQL server URL (a database is created and dropped)")
    parser.add_argument("--processes", nargs="+", default=["auto", "1"],
                        help="how `mailer send` runs: auto (the default config: a process per core) or a "
                             "--processes number (the connections are shared out)")
    parser.add_argument("--skip-latency", action="store_true", help="skip the smtp-sink -w runs")
    parser.add_argument("--no-tick", action="store_true", help="skip the `mailer tick` rows")
    parser.add_argument("--old-tree", type=Path, default=None,
                        help="a checkout of an earlier commit: its `mailer send` (default config) runs in the "
                             "same rounds (e.g. `git archive main | tar -x -C DIR`)")
    parser.add_argument("--json", default=str(ROOT / "tests" / "benchmarks" / "results" / "bench_send.json"))
    args = parser.parse_args()
    ensure_postfix_tools()
    compile_bytecode()
    if args.old_tree is not None:
        old_mailer = args.old_tree / ".venv" / "bin" / "mailer"
        if not old_mailer.exists():
            parser.error(f"{old_mailer} is missing: install that tree first (python3 -m venv .venv && "
                         ".venv/bin/pip install -e .)")
        subprocess.run([str(args.old_tree / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
                        str(args.old_tree / "mailer"), str(args.old_tree / "jobs")], check=True)
    kinds = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    results: dict[str, object] = {"n": args.n, "connections": args.connections, "rounds": args.rounds,
                                  "machine": {"cpus": os.cpu_count(), "python_loop_ns": python_speed(),
                                              "load_average_start": os.getloadavg()}}
    cleanups = []
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
        folder = Path(tmp)
        config_path = write_config(folder, args.connections)
        before_config = None if args.old_tree is None else write_config(folder, args.connections, args.old_tree)
        settings = config.load(config_path, {"MAILER_SECRET_KEY": "benchmark-secret",
                                             "MAILER_BASE_URL": "https://mail.therapycentral.example"})
        urls = {}
        try:
            for kind in kinds:
                url, drop = make_database(kind, args.pg_url, folder, "main")
                cleanups.append(drop)
                timings = build_database(url, args.n, settings)
                urls[kind] = url
                results[f"build_{kind}"] = timings
                print(f"{kind}: {args.n} subscribers in {timings['populate_s']} s; enqueue {timings['enqueue_s']} s")
            sample = message_sample(settings, urls["sqlite"])
            size = len(sample)
            results["message_bytes"] = size
            print(f"message size: {size} bytes")
            sink = Sink()
            # (database, processes, command, code): this checkout's send at each process count, its tick, and
            # the earlier commit's send with the default config.
            # Each compared pair side by side (send and the earlier send; send and tick), in one order on odd
            # rounds and the other on even ones, so what ran just before weighs on both alike.
            runs = []
            for kind in kinds:
                runs += [] if args.old_tree is None else [(kind, "auto", "send", args.old_tree)]
                runs += [(kind, args.processes[0], "send", None)]
                runs += [] if args.no_tick else [(kind, "auto", "tick", None)]
                runs += [(kind, p, "send", None) for p in args.processes[1:]]
            label = {(kind, p, command, tree): f"mailer_{kind}" + ("" if p == "auto" else f"_{p}p")
                     + ("_tick" if command == "tick" else "") + ("_before" if tree else "")
                     for kind, p, command, tree in runs}
            results["auto_processes"] = workers.count("auto", args.connections, args.n)
            series: dict[str, list[dict[str, float]]] = {"ceiling": [], "naive": [], **{label[r]: [] for r in runs}}
            try:
                for round_no in range(args.rounds):
                    series["ceiling"].append(run_ceiling(sink.port, args.n, args.connections, size))
                    series["naive"].append(run_naive(settings, urls["sqlite"], sink.port, args.naive_count))
                    for run in runs if round_no % 2 == 0 else runs[::-1]:
                        kind, processes, command, tree = run
                        reset_outbox(urls[kind])
                        series[label[run]].append(
                            run_mailer_send(urls[kind], before_config if tree else config_path, sink.port, args.n,
                                            processes, command, tree))
                    line = ", ".join(f"{name} {runs[-1]['rate']:.0f}/s" for name, runs in series.items())
                    print(f"round {round_no + 1}: {line}")
            finally:
                sink.stop()
            medians = {name: statistics.median(r["rate"] for r in runs) for name, runs in series.items()}
            results["rates"] = {k: round(v, 1) for k, v in medians.items()}
            results["raw"] = series
            for name in label.values():
                rate = medians[name]
                short = name.removeprefix("mailer_")
                results[f"ratio_{short}_to_ceiling"] = round(rate / medians["ceiling"], 3)
                results[f"ratio_{short}_to_naive"] = round(rate / medians["naive"], 1)
                results[f"peak_rss_mb_{short}"] = round(max(r["peak_rss_mb"] for r in series[name]), 1)
            for kind in kinds:  # the redesign's targets, as ratios within this run
                send = medians[f"mailer_{kind}"]
                if f"mailer_{kind}_tick" in medians:
                    results[f"ratio_{kind}_tick_to_send"] = round(medians[f"mailer_{kind}_tick"] / send, 3)
                if f"mailer_{kind}_before" in medians:
                    results[f"ratio_{kind}_send_to_before"] = round(send / medians[f"mailer_{kind}_before"], 3)
            results["load_average"] = os.getloadavg()
            if not args.skip_latency:
                results["latency"] = latency_runs(folder, settings, kinds, args.pg_url, cleanups)
        finally:
            for drop in cleanups:
                drop()
    report(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"JSON written to {out}")
    return 0


def latency_runs(folder: Path, settings: config.Settings, kinds: list[str], pg_url: str, cleanups: list) -> dict:
    """smtp-sink -w 1 (each DATA reply after one second): throughput at 1, 4 and 16 connections."""
    out: dict[str, dict[str, float]] = {}
    sink = Sink(delay=1)
    try:
        for kind in kinds:
            rates = {}
            for connections in (1, 4, 16):
                count = 6 * connections
                url, drop = make_database(kind, pg_url, folder, f"lat{connections}")
                cleanups.append(drop)
                build_database(url, count, settings)
                rates[connections] = run_mailer_send(url, write_config(folder, connections), sink.port, count)["rate"]
                print(f"latency {kind}: {connections} connections → {rates[connections]:.2f}/s")
            out[kind] = {
                "rates": {str(k): round(v, 2) for k, v in rates.items()},
                "scaling_1_to_16": round(rates[16] / rates[1] / 16, 3),
            }
    finally:
        sink.stop()
    return out


def report(results: dict) -> None:
    print("\n== results (medians of the alternating rounds) ==")
    machine = results.get("machine", {})
    print(f"  (machine: {machine.get('cpus')} cores; a plain Python loop takes {machine.get('python_loop_ns')} ns "
          f"per iteration; load average at the end {results.get('load_average')})")
    if "auto_processes" in results:
        print(f"  (mailer_sqlite / mailer_postgresql: the default config, {results['auto_processes']} processes here)")
    for name, rate in results.get("rates", {}).items():
        print(f"  {name:<18} {rate:>8.1f} msg/s")
    for key, value in results.items():
        if key.startswith(("ratio_", "peak_rss", "build_")):
            print(f"  {key:<32} {value}")
    for kind, data in results.get("latency", {}).items():
        print(f"  latency {kind}: {data['rates']} msg/s; 1→16 scaling {data['scaling_1_to_16']} of linear")


if __name__ == "__main__":
    raise SystemExit(main())

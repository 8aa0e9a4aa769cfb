"""Installs anywhere: the wheel carries its templates, default config and sample data; `mailer init`
writes a config where there is none; `mailer templates export` copies the templates to customise."""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer import bundled, config
from mailer.cli import main
from mailer.publishing import render
from tests.conftest import ROOT

# What a source distribution of the project holds: enough to build the wheel away from the checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "mailer", "jobs", "templates")

# Runs the installed `mailer` with an audit hook that notes every file or folder opened or listed in
# the checkout (the dependencies, which the test lends from its own environment, aside).
AUDITED_MAILER = textwrap.dedent("""
    import os, sys
    checkout, lent, *args = sys.argv[1:]
    touched = []

    def hook(event, arguments):
        if event in ("open", "os.listdir", "os.scandir", "sqlite3.connect") and arguments:
            target = arguments[0]
            if isinstance(target, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(target))
                if path.startswith(checkout + os.sep) and not (path + os.sep).startswith(lent + os.sep):
                    touched.append(f"{event} {path}")

    sys.addaudithook(hook)
    from mailer.cli import main
    try:
        main(args, prog_name="mailer")
    finally:
        if touched:
            print("read from the checkout: " + ", ".join(touched[:5]), file=sys.stderr)
            os._exit(99)
""")


def _build_wheel(where: Path) -> Path:
    """The wheel, built from a copy of the sources (the checkout gets no build/ or egg-info)."""
    source = where / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    wheels = where / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("mailer-*.whl")
    return wheel


def _fresh_environment(where: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel installed; its dependencies are lent from the test's
    own environment through a .pth line (a plain path: the .pth files there are not run, so the
    editable install of the checkout stays out)."""
    target = where / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    lent = Path(sysconfig.get_paths()["purelib"])
    (site_packages / "lent_dependencies.pth").write_text(f"{lent}\n")
    return python, lent


@pytest.mark.slow
def test_the_wheel_installs_and_runs_in_an_empty_folder_without_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "build")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mailer/jobs/deliver.py" in names and not any(name.startswith("jobs/") for name in names)
    assert "mailer/templates/email/followup/thank-you.html" in names
    assert "mailer/defaults/config.toml" in names and "mailer/sample/blog-feed.xml" in names

    python, lent = _fresh_environment(tmp_path / "env", wheel)
    script = tmp_path / "audited_mailer.py"
    script.write_text(AUDITED_MAILER)
    folder = tmp_path / "clinic"
    folder.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}  # no MAILER_*, no PYTHONPATH

    def mailer(*args: str, cwd: Path = folder) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-I", str(script), str(ROOT), str(lent), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=180)

    where = subprocess.run([str(python), "-I", "-c", "import mailer; print(mailer.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "env"))

    init = mailer("init")
    assert init.returncode == 0, init.stderr
    assert "Wrote config.toml" in init.stdout and "Database schema created" in init.stdout
    assert (folder / "config.toml").read_text() == bundled.default_config_path().read_text()
    assert (folder / "var" / "mailer.db").is_file()

    demo = mailer("demo")
    assert demo.returncode == 0, demo.stderr
    assert "This run sent 9 emails" in demo.stdout
    files = sorted((folder / "var" / "outbox").glob("*.eml"))
    assert len(files) == 9
    thank_you = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    assert any(m["Subject"] == "Thank you for getting in touch with Therapy Central" for m in thank_you)

    export = mailer("templates", "export", "my-templates")
    assert export.returncode == 0, export.stderr
    assert (folder / "my-templates" / "email" / "_layouts" / "base.html").is_file()

    # Without `mailer init` at all, the demo runs on the bundled configuration.
    bare = tmp_path / "bare"
    bare.mkdir()
    straight = mailer("demo", cwd=bare)
    assert straight.returncode == 0, straight.stderr
    assert "uses mailer's default configuration" in straight.stdout and "This run sent 9 emails" in straight.stdout
    assert len(list((bare / "var" / "outbox").glob("*.eml"))) == 9 and not (bare / "config.toml").exists()

    # The same run of the checkout's own (editable) install does read the checkout: the hook sees it.
    control = subprocess.run([sys.executable, "-I", str(script), str(ROOT), str(lent), "templates", "export", "x"],
                             cwd=folder, env=env, capture_output=True, text=True, timeout=180)
    assert control.returncode == 99 and "read from the checkout" in control.stderr


def test_init_writes_the_commented_config_once_and_creates_the_database(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("MAILER_CONFIG", "MAILER_DATABASE_URL", "MAILER_SMTP_URL", "MAILER_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    first = CliRunner().invoke(main, ["init"])
    assert first.exit_code == 0, first.output
    assert "Wrote config.toml" in first.output
    written = (tmp_path / "config.toml").read_text()
    assert written.startswith("# mailer — configuration, written by `mailer init`.")
    settings = config.load(tmp_path / "config.toml", {"MAILER_SECRET_KEY": "x" * 40})
    assert settings.templates_dir == bundled.templates_dir()
    assert Path(settings.database.url.removeprefix("sqlite:///")) == tmp_path / "var" / "mailer.db"

    (tmp_path / "config.toml").write_text(written + "\n# the clinic's own edit\n")
    second = CliRunner().invoke(main, ["init"])
    assert second.exit_code == 0 and "Wrote" not in second.output and "up to date" in second.output
    assert (tmp_path / "config.toml").read_text().endswith("# the clinic's own edit\n")  # never overwritten


def test_init_into_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nowhere" / "config.toml"), "init"])
    assert result.exit_code == 1
    assert result.output.startswith("mailer: error: ") and "cannot write the default config" in result.output
    assert len(result.output.splitlines()) == 1


def test_the_development_config_and_the_bundled_one_say_the_same(tmp_path: Path) -> None:
    """One set of keys and comments: the two files differ only in their header, the feed and the templates."""
    def body(path: Path) -> list[str]:
        text = path.read_text()
        return text[text.index("[clinic]"):].splitlines()

    ours, bundled_lines = body(ROOT / "config.toml"), body(bundled.default_config_path())
    assert len(ours) == len(bundled_lines)
    differing = {(a, b) for a, b in zip(ours, bundled_lines, strict=True) if a != b}
    assert differing == {('url = "mailer/sample/blog-feed.xml"', 'url = "https://therapycentral.example/blog/feed.xml"'),
                         ('templates = "templates"', 'templates = ""')}
    assert tomllib.loads(bundled.default_config_path().read_text())["paths"]["templates"] == ""


def test_templates_export_copies_everything_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "clinic-templates"
    first = CliRunner().invoke(main, ["templates", "export", str(target)])
    assert first.exit_code == 0, first.output
    copied = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    assert copied == bundled.template_files() and len(copied) > 20
    assert f'paths.templates = "{target}"' in first.output

    (target / "email" / "_partials" / "footer.html").write_text("edited")
    again = CliRunner().invoke(main, ["templates", "export", str(target)])
    assert again.exit_code == 1 and "already exists (use --force" in again.output
    assert (target / "email" / "_partials" / "footer.html").read_text() == "edited"
    forced = CliRunner().invoke(main, ["templates", "export", "--force", str(target)])
    assert forced.exit_code == 0
    assert (target / "email" / "_partials" / "footer.html").read_text() != "edited"


def test_the_clinic_copy_comes_first_and_mailer_fills_in_what_it_lacks(tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "email" / "_partials").mkdir(parents=True)
    footer = (bundled.templates_dir() / "email" / "_partials" / "footer.html").read_text()
    (own / "email" / "_partials" / "footer.html").write_text(footer.replace("{{ clinic.name }}", "{{ clinic.name }} (our own footer)", 1))
    settings = config.load(ROOT / "config.toml", {"MAILER_SECRET_KEY": "k" * 40})
    settings = settings.model_copy(update={"paths": settings.paths.model_copy(update={"templates": str(own)})})
    assert settings.template_search_path == [own, bundled.templates_dir()]
    prepared = render.Renderer(settings).prepare("email/system/confirm", subject="Confirm", preheader="",
                                                 marketing=False)
    html_doc = prepared.html.fill(render.sample_values("https://x.example"))
    assert "(our own footer)" in html_doc and "Please confirm your subscription" in html_doc
    assert settings.template_file("pages/_style.css") == bundled.templates_dir() / "pages" / "_style.css"


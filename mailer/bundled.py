"""What ships inside the package: the default templates, the commented default config, the sample data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The templates that come with mailer.

    An installed wheel has them in mailer/templates; in a checkout (an editable install) they are the
    top-level templates/ folder, which setup.py maps to that place in the wheel.
    """
    packaged = PACKAGE / "templates"
    return packaged if packaged.is_dir() else PACKAGE.parent / "templates"


def default_config_path() -> Path:
    """The commented configuration `mailer init` writes where there is none."""
    return PACKAGE / "defaults" / "config.toml"


def sample_dir() -> Path:
    """The sample clinic's blog feeds, subscribers and inquiries (what `mailer demo` uses)."""
    return PACKAGE / "sample"


def write_default_config(path: Path) -> None:
    """Write the commented default config at `path`; FileExistsError if something is there already."""
    text = default_config_path().read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text)


def template_files() -> list[Path]:
    """Every bundled template file, relative to the templates folder, in a stable order."""
    root = templates_dir()
    return sorted(path.relative_to(root) for path in root.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)


def export_templates(target: Path, *, overwrite: bool = False) -> list[Path]:
    """Copy the bundled templates under `target`; FileExistsError naming the first file in the way."""
    root = templates_dir()
    files = template_files()
    if not overwrite:
        for name in files:
            if (target / name).exists():
                raise FileExistsError(str(target / name))
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target / name)
    return files

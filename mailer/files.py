"""Files and folders mailer makes under var/ (the database, previews, .eml files, the development key):
private to the service's user, 0600 and 0700, whatever the umask of the process that makes them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path | str) -> Path:
    """The folder, created with its missing parents as 0700 (folders that exist keep their mode)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another process made it a moment ago
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask; this does not
    return path


def write_private(path: Path | str, data: str | bytes) -> Path:
    """Write a file readable by this user only (created 0600; an existing one is made 0600 first)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def tighten(path: Path | str) -> None:
    """Make an existing file of ours 0600 (one left readable by others by an older version); never raises."""
    try:
        info = os.stat(path)
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, FILE_MODE)
    except OSError:
        pass

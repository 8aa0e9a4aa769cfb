"""`mailer demo` on a fresh folder: the whole main job, quickly, and nothing twice on a second run."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

MAILER = str(Path(sys.executable).with_name("mailer"))


def test_demo_runs_the_main_job_and_repeats_safely(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # nothing configured: no MAILER_* at all
    started = time.monotonic()
    first = subprocess.run([MAILER, "--config", str(ROOT / "config.toml"), "demo", "--var", str(tmp_path / "var")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert elapsed < 30
    out = first.stdout
    assert "This run sent 9 emails" in out
    assert "Inquiry from jordan.lee@example.com (agreed to follow-ups): 2 follow-up emails sent" in out
    assert "Inquiry from sam.ortiz@example.org (did not agree to follow-ups): no follow-up emails sent" in out
    files = sorted((tmp_path / "var" / "outbox").glob("*.eml"))
    assert len(files) == 9
    subjects = {email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["Subject"] for f in files}
    # The sample posts' titles and summaries name conditions: the digests go out under the neutral subject.
    assert "Therapy Central: 1 new article(s) on our blog" in subjects
    assert not any("Ketamine" in subject for subject in subjects)
    previews = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("HTML preview: ")]
    assert previews and all(Path(p).read_text().startswith("<!DOCTYPE html>") for p in previews)
    assert first.stderr == ""

    second = subprocess.run([MAILER, "--config", str(ROOT / "config.toml"), "demo", "--var", str(tmp_path / "var")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "This run sent 0 emails" in second.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 9

"""Packaging beside pyproject.toml: the top-level jobs/ folder installs as the package mailer.jobs."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mailer", "mailer.*"]), "mailer.jobs"],
    package_dir={"mailer.jobs": "jobs"},
)

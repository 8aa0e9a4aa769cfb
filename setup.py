"""Packaging beside pyproject.toml: top-level folders that install inside the mailer package.

jobs/ installs as the package mailer.jobs and templates/ as mailer/templates (the templates mailer
falls back to), while both stay top-level folders of the repository.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mailer", "mailer.*"]), "mailer.jobs", "mailer.templates"],
    package_dir={"mailer.jobs": "jobs", "mailer.templates": "templates"},
)

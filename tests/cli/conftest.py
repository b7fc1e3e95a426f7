"""Registers the CLI tests' fixtures (defined with their helpers in clihelpers.py)."""

from clihelpers import cli, cluster3, launcher_dir

__all__ = ["cli", "cluster3", "launcher_dir"]

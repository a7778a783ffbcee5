"""Imports every command module so its commands register on the app."""

from nestrank.cli import common  # noqa: F401

"""CLI commands for calibrating marginals to option chains (see deepquant.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

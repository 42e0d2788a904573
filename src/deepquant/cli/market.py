"""CLI commands of the market engine (see deepquant.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

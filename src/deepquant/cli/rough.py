"""CLI commands of the rough engine (see deepquant.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

"""CLI commands of the neural engine (see deepquant.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

"""The ``deepquant`` command line (thin: parse, call the library, print, write files).

Each engine keeps its commands in its own module and lists them in ``COMMANDS``:
``cli/market.py`` (marginals, chain, calibrate), ``cli/mmot.py`` (bounds, solve, demo),
``cli/neural.py`` (generate, validate-data, train, evaluate) and ``cli/rough.py`` (american).
Heavy imports (torch, ray) happen inside the commands, never at import time.
"""

from __future__ import annotations

import click

from deepquant import __version__
from deepquant.cli import calibrate, market, mmot, neural, quotes, rough
from deepquant.neural.threads import prefer_passive_wait

__all__ = ["main"]


class _Group(click.Group):
    """The command group; a ``MemoryError`` of any command (a size too large for the machine)
    ends as a one-line error (exit code 1) instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MemoryError as exc:
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            sizes = [p.opts[0] for p in (command.params if command else ())
                     if isinstance(p, click.Option) and p.name in _SIZES]
            hint = f" (e.g. {', '.join(sizes)})" if sizes else ""
            raise click.ClickException(
                f"out of memory ({str(exc) or 'MemoryError'}); reduce the sizes given{hint}"
            ) from None


_SIZES = ("grid_size", "grid_sizes", "sum_grid_size", "n_paths", "n_regression", "batch_size",
          "num", "runs", "n_dates", "steps_per_date", "periods")
"""Options (Python names) that size a command's arrays, named in its out-of-memory line."""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deepquant")
def main() -> None:
    """deep-quant: exotic option prices with quantified uncertainty."""
    # before any command imports torch: --threads 2 under OMP_NUM_THREADS=1 would otherwise
    # spin on a busy core (deepquant.neural.threads)
    prefer_passive_wait()


for _module in (market, calibrate, mmot, neural, rough, quotes):
    for _command in _module.COMMANDS:
        main.add_command(_command)

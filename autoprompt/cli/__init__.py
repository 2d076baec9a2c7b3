"""The ``autoprompt`` command: a thin click layer over the library.

Every AutoPromptError becomes one line on stderr and exit code 2; commands that report
metrics take ``--json`` and then print exactly one JSON object on stdout. The commands live in
this package's modules (optimize, compare, commands, runs) and are registered on ``main`` here.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from autoprompt.cli.commands import bench, dashboard, evaluate, labels, models, predict, tasks
from autoprompt.cli.compare import compare_methods
from autoprompt.cli.demos import demos
from autoprompt.cli.optimize import optimize
from autoprompt.cli.runs import export, runs
from autoprompt.errors import AutoPromptError

log = logging.getLogger("autoprompt")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so a run stops the same clean way."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise _Terminated


def _close_progress_bars() -> None:
    """Bars an interrupt left open would redraw themselves below the last line at exit."""
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        in_main_thread = threading.current_thread() is threading.main_thread()  # (signals can only be set there)
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            return super().invoke(ctx)
        except AutoPromptError as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad flag: the same one line, not click's usage block
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            _close_progress_bars()
            terminated = isinstance(exc, _Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            ctx.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="autoprompt")
def main(verbose: int, quiet: bool) -> None:
    """Find the prompt that makes a local language model do a labelled task best."""
    level = logging.WARNING if quiet else logging.INFO if verbose <= 1 else logging.DEBUG
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level if (verbose or quiet) else logging.INFO)
    log.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # transformers missing is reported where it is needed
        pass


for _command in (optimize, compare_methods, evaluate, predict, tasks, labels, models, runs, export, dashboard, bench,
                 demos):
    main.add_command(_command)

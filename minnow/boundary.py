"""The CLI's one error boundary: whatever a command raises becomes one message on stderr and an exit code.

Exit codes: 0 done; 1 a bug in Minnow; 2 the user's input (recipe, data, models, run directory); 3 the machine
(disk full, read-only or forbidden path, port in use, out of memory); 130 interrupted. The traceback is never on
screen unless ``--debug``; for faults and bugs it is appended to the run directory's ``minnow.log`` (or, when no
run directory is left, ``minnow-error.log`` in the system's temp folder).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape

from .core.faults import classify

F = TypeVar("F", bound=Callable)
FALLBACK_LOG = Path(tempfile.gettempdir()) / "minnow-error.log"
err = Console(stderr=True)


class State:
    debug = False
    log: Path | None = None


def log_to(path: Path) -> None:
    """Send tracebacks of this command to ``path`` (a run directory's log) while its folder exists."""
    State.log = path


def _write_log(exc: BaseException) -> Path | None:
    log = State.log if State.log is not None and State.log.parent.is_dir() else FALLBACK_LOG
    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} minnow {' '.join(sys.argv[1:])}\n"
    try:
        with log.open("a", encoding="utf-8") as f:
            f.write(text + "".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return log


def guard(fn: F) -> F:
    """Run a command; any failure prints one message and exits with its code (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except BaseException as e:
            fault = classify(e)
            if State.debug:
                err.print("".join(traceback.format_exception(e)), markup=False, highlight=False, end="")
            log = _write_log(e) if fault.log_traceback else None
            where = f" (traceback in {log})" if log else ""
            err.print(f"[bold red]error:[/] {escape(fault.message)}{escape(where)}", highlight=False, soft_wrap=True)
            raise typer.Exit(fault.exit_code) from None

    return wrapper  # type: ignore[return-value]

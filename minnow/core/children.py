"""Child processes that die with their parent: a `minnow` killed with -9 leaves no model builder running.

On Linux the child asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), before it
starts the command; elsewhere :func:`run` is :func:`subprocess.run`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(1)

    return preexec


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """:func:`subprocess.run`, the child killed if this process dies first (Linux)."""
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = _die_with(os.getpid())
    return subprocess.run(command, **kwargs)

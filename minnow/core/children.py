"""Child processes that die with their parent: a `minnow` killed with -9 leaves no model builder running.

On Linux the command starts through a small trampoline that asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``) and then becomes the command; no ``preexec_fn`` runs in the
forked child, which is unsafe in a process with threads (torch's). Elsewhere :func:`run` is :func:`subprocess.run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):  # the parent died before the request was made\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """:func:`subprocess.run`, the child killed if this process dies first (Linux)."""
    if sys.platform.startswith("linux"):
        command = [sys.executable, "-c", TRAMPOLINE, str(os.getpid()), *command]
    return subprocess.run(command, **kwargs)

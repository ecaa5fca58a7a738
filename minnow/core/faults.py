"""Any exception as the one message a user sees: input problems (exit 2), faults of the machine (exit 3), or a bug
(exit 1). Environment faults are recognised by their errno or type anywhere in the exception's chain."""

from __future__ import annotations

import errno
from typing import NamedTuple

from .errors import EnvironmentFault, MinnowError

BUG_EXIT = 1
INTERRUPTED_EXIT = 130

# errno → (what happened, what to do)
OS_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space (or set runs_dir to a bigger disk), then rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free some space (or set runs_dir to another disk), then rerun"),
    errno.EROFS: ("read-only file system", "point runs_dir (or --output) at a writable folder"),
    errno.EACCES: ("permission denied", "make the path writable for this user, or choose another folder"),
    errno.EPERM: ("operation not permitted", "make the path writable for this user, or choose another folder"),
    errno.EADDRINUSE: ("address already in use", "stop the other server or choose another port"),
    errno.ENOMEM: ("out of memory", "lower distill.batch_size or distill.max_seq_len, or close other programs"),
}
# errno → what to check: a path the user gave, or a run directory changed by hand.
OS_INPUT = {
    errno.ENOENT: "a file or folder is missing (was the run directory changed by hand?)",
    errno.ENOTDIR: "a path the recipe names (runs_dir, data.path, ...) runs through a file, not a folder",
    errno.EISDIR: "a folder where a file was expected",
    errno.ENAMETOOLONG: "a file name too long for this file system (shorten the recipe's name or runs_dir)",
}
MEMORY_HINT = "lower distill.batch_size, distill.max_seq_len or distill.eval_batch_size, or close other programs"


class Fault(NamedTuple):
    exit_code: int
    message: str
    log_traceback: bool


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))
    )


def classify(exc: BaseException) -> Fault:
    """The exit code and one-line message for ``exc``, and whether its traceback is worth keeping in the log."""
    if isinstance(exc, KeyboardInterrupt):
        return Fault(INTERRUPTED_EXIT, "interrupted; `minnow run --resume RUN_DIR` continues a run", False)
    if isinstance(exc, MinnowError):
        return Fault(exc.exit_code, str(exc), isinstance(exc, EnvironmentFault))
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in OS_FAULTS:
            what, todo = OS_FAULTS[link.errno]
            where = f": {link.filename}" if link.filename else ""
            return Fault(EnvironmentFault.exit_code, f"{what}{where}; {todo}", True)
        if isinstance(link, OSError) and link.errno in OS_INPUT:
            where = f": {link.filename}" if link.filename else ""
            return Fault(MinnowError.exit_code, f"{OS_INPUT[link.errno]}{where}", True)
        if _out_of_memory(link):
            return Fault(EnvironmentFault.exit_code, f"out of memory ({type(link).__name__}); {MEMORY_HINT}", True)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Fault(BUG_EXIT, f"unexpected {type(exc).__name__}{': ' + reason if reason else ''} (a bug in Minnow)", True)

"""Quiet trials: everything ModelOpt, ONNX Runtime and TorchScript print goes to the trial's log
file (fd-level capture), and a user's exception is told with the line of their own code."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

from l4opt.files import safe_append_fd


@contextlib.contextmanager
def capture(log_path, progress: bool = False, root=None):
    """Send everything written to stdout/stderr (Python and native: ModelOpt's tqdm bars and
    logging, ONNX Runtime's and TorchScript's C++ output) to `log_path`. Yields a stream for
    our own progress bars (the real terminal) when `progress`, else None."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    old = sys.stdout, sys.stderr
    tty = None
    if progress:
        real = old[1]
        try:
            is_fd = real.fileno() == 2
        except (AttributeError, OSError, ValueError):
            is_fd = False  # a notebook's stream: not a file descriptor, keeps working
        tty = os.fdopen(os.dup(saved[1]), "w", buffering=1) if is_fd else real
    # inside a run directory (`root`), a log that is a symlink is refused, never appended to
    fd = safe_append_fd(log_path, root) if root is not None else \
        os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    text = os.fdopen(fd, "a", buffering=1, errors="replace")
    sys.stdout = sys.stderr = text
    try:
        yield tty
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        sys.stdout, sys.stderr = old
        text.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if tty is not None and tty is not old[1]:
            tty.close()


def user_error(exc: BaseException) -> str:
    """'KeyError: 'x'' with the innermost frame of user code, when there is one."""
    tb = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in tb if "/l4opt/" not in f.filename.replace("\\", "/")
            and "site-packages" not in f.filename]
    where = f" (at {Path(mine[-1].filename).name}:{mine[-1].lineno} in {mine[-1].name})" \
        if mine else ""
    return f"{type(exc).__name__}: {exc}{where}"

"""A small error hierarchy: every failure l4opt raises on purpose says what was wrong and what to do."""
from __future__ import annotations


class L4OptError(Exception):
    """Base of every error l4opt raises deliberately."""


class BadInput(L4OptError, ValueError):
    """The caller gave something l4opt cannot use (unknown name, bad data, bad path)."""


class UnsupportedOnL4(BadInput):
    """A recipe or format the L4 (sm_89, Ada) cannot run."""


class MissingDependency(L4OptError, ImportError):
    """An optional dependency is absent; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, why: str = ""):
        self.module, self.extra = module, extra
        msg = f"{module!r} is not installed; install it with: pip install 'l4opt[{extra}]'"
        super().__init__(f"{why}: {msg}" if why else msg)


class StageFailed(L4OptError, RuntimeError):
    """A pipeline stage failed; says which stage and which artifact."""

    def __init__(self, stage: str, message: str, artifact: str | None = None):
        self.stage, self.artifact, self.message = stage, artifact, message
        where = f" (artifact: {artifact})" if artifact else ""
        super().__init__(f"{stage} failed{where}: {message}")

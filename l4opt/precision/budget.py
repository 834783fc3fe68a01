"""An accuracy budget: the largest allowed drop of the task metric, or the smallest mean cosine."""
from __future__ import annotations

import math
from dataclasses import dataclass

from l4opt.errors import BadInput


@dataclass(frozen=True)
class Budget:
    """Largest allowed drop of the task metric (absolute, or relative to the unquantized
    value), or smallest allowed mean cosine to the unquantized outputs."""

    max_drop: float | None = None
    relative: bool = False
    min_cosine: float | None = None

    def __post_init__(self):
        if (self.max_drop is None) == (self.min_cosine is None):
            raise BadInput("give exactly one budget: max_drop (task metric) or min_cosine")
        if self.max_drop is not None and not (isinstance(self.max_drop, (int, float))
                                              and math.isfinite(self.max_drop)
                                              and self.max_drop >= 0):
            raise BadInput(f"max_drop {self.max_drop!r} must be a finite number >= 0 (the "
                           f"largest allowed drop of the task metric, e.g. 0.01)")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise BadInput(f"min_cosine {self.min_cosine} is not a cosine in [-1, 1]")
        if self.relative and self.max_drop is None:
            raise BadInput("relative applies to max_drop only")

    def met(self, m: dict) -> bool:
        """Whether drift `m` (a candidate's metrics or a trial row) meets the budget; a missing
        or NaN value never does."""
        try:
            if self.min_cosine is not None:
                return float(m["cos_mean"]) >= self.min_cosine
            drop = float(m["metric_drop_rel"] if self.relative else m["metric_drop"])
        except (KeyError, TypeError, ValueError):
            return False
        return drop <= self.max_drop + 1e-12

    def describe(self) -> str:
        if self.min_cosine is not None:
            return f"mean cosine >= {self.min_cosine}"
        return f"metric drop <= {self.max_drop}{' (relative)' if self.relative else ''}"

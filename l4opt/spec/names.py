"""User-supplied names (workloads, recipes, engines) as safe file names: never a raw path part."""
from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_SLUG = 48


def slug(name: str) -> str:
    """A file-name-safe, readable, unique form of `name`: ASCII slug + a short hash.

    'team/mlp-v2' -> 'team-mlp-v2-3f2a9c1b'; '../../x' -> 'x-…'; '' -> 'unnamed-…'. The hash of
    the exact name keeps two names that slug alike apart."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:MAX_SLUG].strip(".-_")
    digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{s or 'unnamed'}-{digest}"


def safe_filename(*parts: str, suffix: str = "") -> str:
    """One file name from several user names, e.g. safe_filename(workload, recipe, suffix='.json')."""
    return "-".join(slug(p) for p in parts) + suffix

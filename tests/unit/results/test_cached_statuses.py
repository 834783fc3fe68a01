"""A finished trial is served from the store whatever its verdict: ok, collapsed and no-op rows
are results (an identical sweep returns at once); a failed one is recomputed."""
from __future__ import annotations

import pytest

from l4opt.results.store import Store


@pytest.mark.parametrize("status,served", [("ok", True), ("collapsed", True), ("no-op", True),
                                           ("failed", False)])
def test_cached_serves_every_finished_status(tmp_path, status, served):
    st = Store(tmp_path)
    try:
        st.put({"key": "k1", "kind": "trial", "workload": "w", "recipe": "r", "status": status,
                "created_at": "2026-12-01T00:00:00+00:00", "artifacts": {}})
        assert (st.cached("k1") is not None) is served
    finally:
        st.close()

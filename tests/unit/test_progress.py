"""Progress bars in a notebook are text, not widgets (issue 21 items 1 and 7): each cell's bars
are lines of one output updated in place, so a saved notebook holds no widget view that is
dead after a reload, and no widget comm makes JupyterLab ask for a subshell (whose status
messages it shows as Idle while the cell runs). Run in a real kernel through nbclient."""
import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

CELL = """
from l4opt.env import progress
outer = progress(range(2), desc="outer", unit="trial")
for i in outer:
    for _ in progress(range(3), desc=f"inner {i}", leave=False):
        pass
outer.close()
for _ in progress(range(2), desc="disabled", disable=True):
    pass
"""


def test_bars_in_a_kernel_are_one_text_output_per_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL), nbformat.v4.new_code_cell(CELL)]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    for cell in nb.cells:
        outs = cell.outputs
        assert [o.output_type for o in outs] == ["display_data"], outs
        data = outs[0].data
        assert set(data) == {"text/plain"}  # no application/vnd.jupyter.widget-view+json
        text = data["text/plain"]
        assert text.startswith("outer: 100%") and "2/2" in text, text
        assert "inner" not in text and "disabled" not in text  # closed with leave=False


def test_bars_outside_a_kernel_are_tqdm_on_the_given_file():
    import io

    from l4opt.env import progress

    out = io.StringIO()
    for _ in progress(range(3), desc="here", file=out, mininterval=0):
        pass
    assert "here: 100%" in out.getvalue()

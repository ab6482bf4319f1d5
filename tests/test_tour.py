"""docs/tour.ipynb, the guided tour: git holds it without outputs, and every cell runs top to bottom in a fresh
kernel (nbclient, as Jupyter's "run all") on the tiny world and CLIP of the tests, a few steps per live section."""
import os
import re

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOUR = os.path.join(ROOT, "docs", "tour.ipynb")


def test_the_tour_is_stored_without_outputs():
    notebook = nbformat.read(TOUR, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_every_cell_of_the_tour_runs(tiny_world, tiny_clip, monkeypatch):
    monkeypatch.setenv("POSTCLIP_TOUR_WORLD", str(tiny_world))  # the kernel inherits the environment
    monkeypatch.setenv("POSTCLIP_TOUR_CLIP", tiny_clip)
    monkeypatch.setenv("POSTCLIP_TOUR_STEPS", "3")
    notebook = nbformat.read(TOUR, as_version=4)
    # from docs/, as Jupyter opens it; a failing cell raises CellExecutionError with the cell and its traceback
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "docs")}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "".join(o.get("text", "") for cell in code for o in cell.outputs if o.output_type == "stream")
    figures = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == sum("plt.show()" in cell.source for cell in code)  # every figure drawn
    by_hand, by_code = re.search(r"HyCD by the formula: (\S+);  common.losses.hycd_loss: (\S+)", text).groups()
    assert by_hand == by_code  # the formula of docs/methods.md §1 is the code's loss
    assert re.search(r"after 3 steps: centroid distance \S+ -> \S+, relative gap", text)
    assert float(re.search(r"the teacher follows .* to (\S+)\n", text).group(1)) < 1e-5  # the EMA rule, §2

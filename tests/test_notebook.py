"""notebooks/colab_tpu.ipynb executes top to bottom on the CPU (8 simulated devices), so it cannot rot."""

from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_colab_notebook_runs_top_to_bottom_on_cpu():
    notebook = nbformat.read(ROOT / "notebooks" / "colab_tpu.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "8 devices, platform cpu" in text
    assert "trained 6 steps" in text
    assert "self-speculative output identical to autoregressive: True" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # training curves, the speedup bars, the benchmark plot

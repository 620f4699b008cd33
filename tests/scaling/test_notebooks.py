"""The notebooks of experiments/notebooks run from top to bottom, headless (nbclient), on the
runs tables committed beside the scaling experiment: a broken notebook fails the suite."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = os.path.join(ROOT, "experiments", "notebooks")


@pytest.mark.parametrize("name", ["chinchilla.ipynb", "dense_vs_moe.ipynb", "wsm_vs_wsd.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    # The kernel's matplotlib draws inline (image/png outputs), whatever MPLBACKEND says here.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One BLAS thread in the kernel: its fits ran 6-8 s alone but 40-45 s beside the suite's
    # workers, whose cores OpenBLAS's spinning threads fought for.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot was drawn

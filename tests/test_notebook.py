"""examples/digits.ipynb is executed (nbclient, a kernel on this venv's python), not just stored."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "digits.ipynb"


def kernel_on_this_python(root: Path) -> str:
    """A kernelspec that runs ipykernel with the interpreter running the tests (the venv's)."""
    spec = root / "kernels" / "pgsight-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pgsight test", "language": "python"}))
    return "pgsight-test"


def outputs(cell) -> str:
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in cell.get("outputs", []))


def test_digits_notebook_runs_offline(pgsight_server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("PGSIGHT_EXAMPLE_DATA", str(tmp_path / "data"))
    kernel = kernel_on_this_python(tmp_path / "jupyter")
    with pgsight_server.database() as dsn:
        monkeypatch.setenv("PGSIGHT_DSN", dsn)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(outputs(c) for c in code)
    assert "1797 digits in table digits" in text
    assert "job 1 CONVERT digits.px_emb" in text and "1797 of 1797 rows computed" in text
    assert "SELECT id, image_path, label, px_emb <=> ml.embed_image('px', 'digits/0.png') AS search_result" in text
    assert "precision@10 of pixels on digits: 0.9" in text or "precision@10 of pixels on digits: 1.0" in text
    search = next(c for c in code if c.source.startswith("%%pgsight\nSEARCH IMAGE"))
    html = search.outputs[-1]["data"]["text/html"]
    assert html.count("<tr>") == 1 + 10 and "<td>digits/0.png</td>" in html  # the query image is its own top hit
    images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(images) == 2  # PRINT IMAGE and sheet()

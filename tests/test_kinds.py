"""The model-kind registry (pgsight.worker.models.kinds) agrees with ml.model_kinds, option defaults
have one source, adapters stay pure, and kinds from outside pgsight still plug in (PGSIGHT_KINDS)."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pgsight.worker.kit.options import defaults, parse
from pgsight.worker.models import Adapter
from pgsight.worker.models.kinds import BUILTIN, Kind, kind

WORKER = Path(__file__).resolve().parent.parent / "worker"


def overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(Adapter, method)


def test_registry_matches_model_kinds(dsn):
    with psycopg.connect(dsn) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT kind, modalities, outputs, train_options FROM ml.model_kinds")}
    assert set(rows) == set(BUILTIN)
    for name, k in BUILTIN.items():
        modalities, outputs, train_options = rows[name]
        adapter = k.adapter_class()
        assert issubclass(adapter, Adapter) and adapter.kind == name
        assert k.trainable == (train_options is not None), name
        assert (k.options is not None) == k.trainable, name
        if k.trainable:
            assert callable(k.train_fn())
            # one source of defaults: the options dataclass; kinds.sql repeats them exactly
            assert defaults(k.options_type()) == train_options, name
        if k.evaluate is not None:
            assert callable(k.evaluate_fn())
        assert overrides(adapter, "embed_images") == (outputs == "embedding"), name
        # outputs 'answer': text, answers to questions or generated (ml.generate)
        assert overrides(adapter, "answer") or overrides(adapter, "generate") or outputs != "answer", name
        assert ("text" in modalities) == (overrides(adapter, "embed_texts") or overrides(adapter, "answer")), name


def test_options_parse_nulls_and_numbers():
    from pgsight.worker.models.vilt.options import ViltOptions

    o = parse(ViltOptions, {**defaults(ViltOptions), "max_epochs": None, "learning_rate": 1, "unknown": 3})
    assert o.max_epochs == 20 and o.learning_rate == 1.0 and isinstance(o.learning_rate, float)
    assert dataclasses.is_dataclass(o)


def test_adapters_are_pure():
    """No adapter module imports the database driver or the worker's job code (directly or not)."""
    banned = ("psycopg", "pgsight.worker.training", "pgsight.worker.kit", "pgsight.worker.loop", "pgsight.worker.registry")
    for path in sorted(WORKER.glob("models/*/adapter.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(banned)], path
    modules = [f"pgsight.worker.models.{p.parent.name}.adapter" for p in sorted(WORKER.glob("models/*/adapter.py"))]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            f"print(sorted(m for m in sys.modules if m.startswith({banned!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_outside_kinds_plug_in(monkeypatch, tmp_path):
    (tmp_path / "legacy_kind.py").write_text(
        "from pgsight.worker.models.pixels.adapter import PixelsAdapter\n"
        "class Legacy(PixelsAdapter):\n    kind = 'legacy'\nADAPTER = Legacy\n")
    (tmp_path / "new_kind.py").write_text(
        "from pgsight.worker.models.kinds import Kind\n"
        "from pgsight.worker.models.pixels.adapter import PixelsAdapter\n"
        "def train(ctx):\n    return {}\n"
        "KIND = Kind('newk', adapter=PixelsAdapter, train=train)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PGSIGHT_KINDS", "legacy=legacy_kind, newk=new_kind")
    assert kind("legacy").adapter_class().__name__ == "Legacy" and not kind("legacy").trainable
    assert kind("newk").trainable and kind("newk").train_fn()(None) == {}
    assert isinstance(kind("clip"), Kind)
    with pytest.raises(ValueError, match="unknown model kind 'nope'.*legacy.*newk"):
        kind("nope")

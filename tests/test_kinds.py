"""The model-kind registry (pgsight.worker.models.kinds) agrees with ml.model_kinds, option defaults
have one source, adapters stay pure, and kinds from outside pgsight still plug in (PGSIGHT_KINDS)."""
from __future__ import annotations

import ast
import dataclasses
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


def _module_file(name: str) -> Path | None:
    """The repository file of a pgsight.worker module (None for other modules)."""
    if not name.startswith("pgsight.worker"):
        return None
    rel = Path(*name.split(".")[2:])
    for candidate in (WORKER / rel.with_suffix(".py"), WORKER / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


def test_adapters_are_pure():
    """No adapter module imports, directly or through pgsight's own modules, the database driver or
    the worker's job code (third-party libraries import neither)."""
    banned = ("psycopg", "pgsight.worker.training", "pgsight.worker.kit", "pgsight.worker.loop",
              "pgsight.worker.registry", "pgsight.worker.db")
    adapters = sorted(WORKER.glob("models/*/adapter.py"))
    assert len(adapters) >= 5
    for adapter in adapters:
        seen, todo = set(), [adapter]
        while todo:
            path = todo.pop()
            for name in _imports(path):
                assert not name.startswith(banned), f"{adapter} imports {name} (through {path})"
                found = _module_file(name)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)


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

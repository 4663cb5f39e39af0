"""Typed training options. Each trainable kind has a frozen dataclass of its ml.build_model options
(`<kind>/options.py`); its field defaults are THE defaults: udf/kinds.sql's `train_options` row
repeats them for the SQL side (ml.build_model merges and type-checks options before a job exists),
and tests/test_kinds.py fails when the two differ."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass's defaults as the JSON object udf/kinds.sql holds."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def parse(cls: type[T], options: Mapping[str, Any]) -> T:
    """`options` (a job's, already merged with the defaults by ml.build_model) as a `cls`. A JSON null
    for an option whose default is not null means the default; integers given for float options
    become floats; keys the dataclass does not know are ignored (a job submitted by an older pgsight)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        value = options[f.name]
        if value is None and f.default is not None:
            continue
        if hints[f.name] in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[f.name] = value
    return cls(**values)

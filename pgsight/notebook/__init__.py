"""The notebook: the `%pgsight` / `%%pgsight` IPython magic (pgsight/notebook/magic.py).

    %load_ext pgsight
"""
from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    from pgsight.notebook import magic

    magic.load_ipython_extension(ipython)

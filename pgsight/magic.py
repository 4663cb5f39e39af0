"""Kept for `%load_ext pgsight.magic` in existing notebooks: the magic is pgsight/notebook/magic.py,
and `%load_ext pgsight` loads it."""
from __future__ import annotations

from pgsight.notebook.magic import PgsightMagics, load_ipython_extension

__all__ = ["PgsightMagics", "load_ipython_extension"]

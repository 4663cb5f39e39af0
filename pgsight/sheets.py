"""Kept for existing imports (`from pgsight.sheets import sheet`): contact sheets are
pgsight/tools/sheets.py."""
from __future__ import annotations

from pgsight.tools.sheets import contact_sheet, query_rows, save_query_sheet, sheet

__all__ = ["contact_sheet", "query_rows", "save_query_sheet", "sheet"]

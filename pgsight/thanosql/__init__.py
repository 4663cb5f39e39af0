"""ThanoSQL statements: translated to pgsight's `ml.*` SQL (pgsight/thanosql/translate.py, with the
tokenizing and quoting helpers of sqltext.py) and run with progress (pgsight/thanosql/runner.py, what
`pgsight sql` and the notebook magic use).

    from pgsight.thanosql import translate, translate_script
    from pgsight.thanosql.runner import Runner
"""
from __future__ import annotations

from pgsight.thanosql.translate import (
    Step,
    ThanoSQLError,
    Translation,
    literal,
    quote_ident,
    split_statements,
    tokenize,
    translate,
    translate_script,
)

__all__ = ["Step", "ThanoSQLError", "Translation", "literal", "quote_ident", "split_statements", "tokenize",
           "translate", "translate_script"]

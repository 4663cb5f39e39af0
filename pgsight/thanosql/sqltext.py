"""SQL text helpers for the ThanoSQL translator: quoting, splitting a script into statements with
sqlglot's PostgreSQL tokenizer, and the shape of a parsed query (what may be edited in place)."""
from __future__ import annotations

import json
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType


class ThanoSQLError(ValueError):
    """A statement that cannot be translated; str() says what was wrong and how to write it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


def literal(value: str) -> str:
    if "\x00" in value:
        raise ThanoSQLError("a string contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    plain = name[:1].isalpha() or name[:1] == "_"
    plain = plain and all(c.isascii() and (c.islower() or c.isdigit() or c == "_") for c in name)
    return name if plain else '"' + name.replace('"', '""') + '"'


def json_literal(options: dict[str, Any]) -> str:
    return literal(json.dumps(options)) + "::jsonb"


def tokenize(text: str) -> list[Token]:
    try:
        return sqlglot.tokenize(text, dialect="postgres")
    except TokenError as e:
        raise ThanoSQLError(f"cannot read the SQL: {e}", "check for an unterminated quote or comment") from None


def split_statements(text: str) -> list[tuple[str, list[Token]]]:
    """(statement text, its tokens with offsets into that text), split at top-level semicolons."""
    out: list[tuple[str, list[Token]]] = []
    current: list[Token] = []
    for tok in [*tokenize(text), None]:
        if tok is None or tok.token_type == TokenType.SEMICOLON:
            if current:
                start, end = current[0].start, current[-1].end + 1
                stmt = text[start:end]
                out.append((stmt, tokenize(stmt)))
            current = []
        else:
            current.append(tok)
    return out


def is_word(text: str) -> bool:
    return text.replace("_", "a").isalnum() and not text[:1].isdigit() and text.isascii()


def from_clause(select: exp.Expr) -> exp.Expr | None:
    f = select.args.get("from_") or select.args.get("from")
    return f.this if f is not None else None


def is_simple(tree: exp.Expr) -> bool:
    """A plain SELECT ... FROM ... [WHERE] that may get columns, ORDER BY and LIMIT added in place."""
    return isinstance(tree, exp.Select) and from_clause(tree) is not None and not any(
        tree.args.get(k) for k in ("with_", "order", "limit", "offset", "distinct", "group", "having", "locks",
                                   "windows", "qualify", "fetch"))


def has_star(tree: exp.Expr) -> bool:
    return any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
               for e in tree.expressions)


def add_columns(query: str, extra: str) -> str:
    """`extra` added to the select list of a simple query, just before its top-level FROM."""
    depth = 0
    for tok in tokenize(query):
        if tok.token_type == TokenType.L_PAREN:
            depth += 1
        elif tok.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and tok.token_type == TokenType.FROM:
            return f"{query[:tok.start].rstrip()}, {extra}\n{query[tok.start:]}"
    raise ThanoSQLError("the query has no FROM")

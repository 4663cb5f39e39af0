"""ThanoSQL statements, translated to pgsight's `ml.*` SQL.

A statement is tokenized with sqlglot's PostgreSQL tokenizer; its head (`BUILD MODEL m USING SimCLR
OPTIONS (...) AS`) is read by the small recursive-descent parser below, and the query after AS is
handed to sqlglot's parser, which checks it and says which table it reads. Anything that is not a
ThanoSQL statement passes through as plain SQL. The result is a `Translation`: steps that
`pgsight.thanosql.runner` executes (with progress), and `script()`, the same as SQL to paste into psql.

    GET THANOSQL MODEL vilt AS tutorial_vilt          -> ml.load_model
    BUILD MODEL m USING SimCLR OPTIONS (...) AS SELECT  -> ml.build_model + ml.wait (psql script: CALL ml.build_model_and_wait)
    CONVERT USING m OPTIONS (...) AS SELECT ... FROM t  -> ml.create_embedding + ml.wait
    SEARCH IMAGE USING m OPTIONS (...) AS SELECT        -> ORDER BY col <=> ml.embed_image/embed_text LIMIT k
    PREDICT USING m OPTIONS (...) AS SELECT ... FROM t  -> ml.create_prediction + ml.wait, then the SELECT
    PRINT IMAGE AS SELECT                               -> a contact sheet of the rows
    COPY t [OPTIONS (...)] FROM 'dir or file.csv'       -> a table of image paths (client side)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.tokens import Token, TokenType

from pgsight.thanosql.sqltext import (
    ThanoSQLError,
    add_columns,
    from_clause,
    has_star,
    is_simple,
    is_word,
    json_literal,
    literal,
    quote_ident,
    split_statements,
    tokenize,
)

__all__ = ["Step", "ThanoSQLError", "Translation", "literal", "quote_ident", "split_statements", "tokenize",
           "translate", "translate_script"]

#: models that GET THANOSQL MODEL knows: ThanoSQL name -> (kind, hub id)
KNOWN_MODELS = {
    "vilt": ("vilt", "dandelin/vilt-b32-finetuned-vqa"),
    "clip": ("clip", "openai/clip-vit-base-patch32"),
    "pixels": ("pixels", None),
}
#: BUILD MODEL ... USING <algorithm> -> model kind
BUILD_KINDS = {"simclr": "simclr", "clip": "clip", "vilt": "vilt"}
WAIT = "1 day"  # how long the psql script's CALL ml.*_and_wait waits (the CLI and the magic wait with a progress bar)

SYNTAX = {
    "GET": "GET THANOSQL MODEL <vilt|clip|pixels> [OPTIONS (overwrite=True, source='<hub id or dir>')] [AS <name>]",
    "BUILD": "BUILD MODEL <name> USING <SimCLR|CLIP|ViLT> OPTIONS (image_col='image_path', ...) AS SELECT ...",
    "CONVERT": "CONVERT USING <model> OPTIONS (image_col='image_path', result_col='convert_result') "
               "AS SELECT * FROM <table>",
    "SEARCH": "SEARCH IMAGE USING <model> OPTIONS (search_by='image'|'text', search_input='...', "
              "emb_col='convert_result', top_k=10) AS SELECT * FROM <table>",
    "PREDICT": "PREDICT USING <model> OPTIONS (image_col='image_path', question='...', "
               "column_name='predict_result') AS SELECT image_path FROM <table>",
    "PRINT": "PRINT IMAGE [OPTIONS (image_col='image_path')] AS SELECT image_path, ... FROM <table>",
    "COPY": "COPY <table> [OPTIONS (overwrite=True, recursive=True, label_from_folder=True)] FROM '<dir or file.csv>'",
}
HEADS = ("GET", "BUILD", "CONVERT", "SEARCH", "PREDICT", "PRINT")


@dataclass
class Step:
    """One thing to do. action: 'sql' (run it), 'job' (sql is an expression returning a job id: run
    it, then wait for the job), 'sheet' (run the query, draw a contact sheet), 'copy' (load a folder
    or CSV file into a table, on the client)."""
    action: str
    sql: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    comment: str = ""


@dataclass
class Translation:
    kind: str             # 'SQL' for plain SQL, else the ThanoSQL statement ('BUILD MODEL', ...)
    source: str           # the statement as written
    steps: list[Step]

    def script(self) -> str:
        """The translation as SQL for psql (client-side steps as comments)."""
        out: list[str] = []
        for s in self.steps:
            if s.comment:
                out.extend("-- " + line for line in s.comment.splitlines())
            if s.action == "job":  # submit, commit and wait: the procedure form of ml.<call>
                head, _, args = s.sql.partition("(")
                out.append(f"CALL {head}_and_wait({args[:-1]}, timeout => {literal(WAIT)});")
            elif s.action in ("sql", "sheet"):
                out.append(s.sql.rstrip() + ";")
        return "\n".join(out)


def is_thanosql(tokens: list[Token]) -> bool:
    words = [t.text.upper() for t in tokens[:4]]
    if not words:
        return False
    if words[0] in HEADS:
        return True
    # COPY t OPTIONS (...) FROM '...' / COPY t FROM 'path' (a client-side load; PostgreSQL's own COPY
    # with a column list, STDIN, or options of its own passes through)
    return (words[0] == "COPY" and len(words) >= 3 and
            (words[2] == "OPTIONS" or (len(tokens) == 4 and words[2] == "FROM" and tokens[3].token_type == TokenType.STRING)))


def translate_script(text: str) -> list[Translation]:
    return [translate_tokens(stmt, toks) if is_thanosql(toks) else Translation("SQL", stmt, [Step("sql", stmt)])
            for stmt, toks in split_statements(text)]


def translate(statement: str) -> Translation:
    """Translate one ThanoSQL statement (a trailing semicolon is fine)."""
    parts = split_statements(statement)
    if len(parts) != 1:
        raise ThanoSQLError(f"expected one statement, got {len(parts)}", "separate statements with ';' and "
                            "use translate_script, or run them one at a time")
    stmt, toks = parts[0]
    if not is_thanosql(toks):
        raise ThanoSQLError(f"not a ThanoSQL statement: {stmt[:60]!r}",
                            "ThanoSQL statements start with " + ", ".join(HEADS) + " or COPY")
    return translate_tokens(stmt, toks)


def translate_tokens(text: str, tokens: list[Token]) -> Translation:
    p = _Parser(text, tokens)
    head = p.word()
    handler = {"GET": _get, "BUILD": _build, "CONVERT": _convert, "SEARCH": _search, "PREDICT": _predict,
               "PRINT": _print, "COPY": _copy}[head]
    p.head = head
    return handler(p)


# -- the parser ----------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text, self.tokens, self.i, self.head = text, tokens, 0, ""

    def error(self, message: str, tok: Token | None = None) -> ThanoSQLError:
        tok = tok if tok is not None else self.peek()
        return ThanoSQLError(self.where(tok.start if tok is not None else None) + message,
                             "write it as " + SYNTAX.get(self.head, ""))

    def where(self, offset: int | None) -> str:
        if offset is None:
            return "at the end of the statement: "
        line = self.text.count("\n", 0, offset) + 1
        return f"line {line}, col {offset - (self.text.rfind(chr(10), 0, offset) + 1) + 1}: "

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.token_type not in (TokenType.STRING, TokenType.IDENTIFIER) \
            and tok.text.upper() in words

    def word(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error("the statement ends too early")
        self.i += 1
        return tok.text.upper()

    def expect(self, *words: str) -> None:
        tok = self.peek()
        if not self.at(*words):
            got = repr(tok.text) if tok is not None else "the end of the statement"
            raise self.error(f"expected {' or '.join(repr(w) if not w.isalpha() else w for w in words)}, got {got}")
        self.i += 1

    def name(self, what: str) -> str:
        tok = self.peek()
        if tok is None or not (tok.token_type == TokenType.IDENTIFIER or is_word(tok.text)) or self.at("AS", "OPTIONS", "USING", "FROM"):
            raise self.error(f"expected {what}, got {repr(tok.text) if tok else 'the end of the statement'}")
        self.i += 1
        return tok.text

    def options(self, allowed: dict[str, Any] | None = None) -> dict[str, Any]:
        """OPTIONS (key=value, ...) if present; `allowed` maps the accepted keys to their defaults."""
        if not self.at("OPTIONS"):
            return dict(allowed or {})
        self.i += 1
        self.expect("(")
        opts: dict[str, Any] = {}
        while not self.at(")"):
            tok = self.peek()
            key = self.name("an option name").lower()
            if allowed is not None and key not in allowed:
                raise self.error(f"unknown option {key!r} for {self.head}; known: {', '.join(allowed)}", tok)
            if key in opts:
                raise self.error(f"option {key!r} is given twice", tok)
            self.expect("=")
            opts[key] = self.value()
            if not self.at(")"):
                self.expect(",", ")")
        self.i += 1
        return {**(allowed or {}), **opts}

    def value(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a value")
        self.i += 1
        kind, text = tok.token_type, tok.text
        if kind in (TokenType.STRING, TokenType.IDENTIFIER):
            return text
        after = self.peek()
        if kind == TokenType.DASH and after is not None and after.token_type == TokenType.NUMBER:
            return -self.value()
        if kind == TokenType.NUMBER:
            return float(text) if any(c in text for c in ".eE") else int(text)
        if text.upper() in ("TRUE", "FALSE"):
            return text.upper() == "TRUE"
        if text.upper() in ("NONE", "NULL"):
            return None
        if is_word(text):
            return text  # search_by=image
        raise self.error(f"expected a value (a 'string', a number, True, False or None), got {text!r}", tok)

    def option_error(self, message: str) -> ThanoSQLError:
        return ThanoSQLError(f"{self.head} OPTIONS: {message}", "write it as " + SYNTAX.get(self.head, ""))

    def end(self) -> None:
        tok = self.peek()
        if tok is not None:
            raise self.error(f"unexpected {tok.text!r} after the end of the statement")

    def query(self) -> tuple[str, exp.Query]:
        """AS <query>: the query's text as written, and sqlglot's tree of it."""
        self.expect("AS")
        tok = self.peek()
        if tok is None:
            raise self.error("expected a query after AS")
        text = self.text[tok.start:]
        self.i = len(self.tokens)
        try:
            trees = sqlglot.parse(text, read="postgres")
        except ParseError as e:
            err = e.errors[0] if e.errors else {}
            description = str(err.get("description", e)).split("<Token")[0].strip()
            near = err.get("highlight")
            line = self.text.count("\n", 0, tok.start) + int(err.get("line", 1))
            raise ThanoSQLError(
                f"line {line}: the query after AS does not parse: {description}"
                + (f" {near!r}" if near else ""),
                "after AS comes one SELECT statement, e.g. AS SELECT * FROM my_table") from None
        if len(trees) != 1 or not isinstance(trees[0], exp.Query):
            raise ThanoSQLError(f"after AS, {self.head} expects one SELECT query, got {text[:40]!r}",
                                "write it as " + SYNTAX[self.head])
        return text, trees[0]


def _one_table(p: _Parser, tree: exp.Expr, why: str) -> str:
    """The table a simple `SELECT ... FROM t [WHERE ...]` reads (quoted, schema-qualified as written)."""
    src = from_clause(tree) if isinstance(tree, exp.Select) else None
    if src is None or not isinstance(src, exp.Table) or tree.args.get("joins") or tree.args.get("with_"):
        raise ThanoSQLError(f"{p.head}: the query after AS must read one table (SELECT ... FROM my_table), {why}",
                            "write it as " + SYNTAX[p.head])
    parts = [i for i in (src.args.get("db"), src.this) if i is not None]
    return ".".join(quote_ident(i.name if i.quoted else i.name.lower()) for i in parts)


def _check_positive_int(p: _Parser, key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise p.option_error(f"{key} must be a positive integer, got {value!r}")


def _require_str(p: _Parser, opts: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if not isinstance(opts.get(key), str) or not opts[key]:
            raise p.option_error(f"{key} is required and must be a string, got {opts.get(key)!r}")


def _drop_if_exists(fn: str, table: str, col: str, kind: str) -> Step:
    return Step("sql", f"SELECT ml.{fn}(t.table_name, t.result_col) FROM ml.tasks t\n"
                       f"WHERE t.table_name = {literal(table)}::regclass AND t.result_col = {literal(col)} "
                       f"AND t.kind = {literal(kind)}", {"quiet": True}, comment="overwrite=True: drop the old column first")


# -- the statements ------------------------------------------------------------------------------------
def _get(p: _Parser) -> Translation:
    if p.at("DATASET") or (p.at("THANOSQL") and p.tokens[p.i + 1:p.i + 2] and p.tokens[p.i + 1].text.upper() == "DATASET"):
        raise ThanoSQLError("GET THANOSQL DATASET is not supported: pgsight downloads no data sets",
                            "load your images with COPY my_table FROM 'dir' or `pgsight load-images DIR --table t`")
    p.expect("THANOSQL")
    p.expect("MODEL")
    model = p.name("a model name (" + ", ".join(KNOWN_MODELS) + ")")
    opts = p.options()
    name = model
    if p.at("AS"):
        p.i += 1
        name = p.name("the new model's name")
    p.end()
    overwrite = opts.pop("overwrite", False)
    source = opts.pop("source", None)
    if model.lower() not in KNOWN_MODELS:
        raise ThanoSQLError(f"unknown ThanoSQL model {model!r}; pgsight knows {', '.join(KNOWN_MODELS)}",
                            "for another checkpoint, SELECT ml.load_model(name, kind, '<hub id or directory>')")
    kind, hub = KNOWN_MODELS[model.lower()]
    source = source if source is not None else hub
    if overwrite is True:
        opts["overwrite"] = True
    args = [literal(name), literal(kind), literal(source) if source else "NULL"] + ([json_literal(opts)] if opts else [])
    return Translation("GET MODEL", p.text, [Step("sql", f"SELECT ml.load_model({', '.join(args)})")])


def _build(p: _Parser) -> Translation:
    p.expect("MODEL")
    name = p.name("the model's name")
    p.expect("USING")
    algo_tok = p.peek()
    algo = p.name("an algorithm (" + ", ".join(BUILD_KINDS) + ")")
    if algo.lower() not in BUILD_KINDS:
        raise p.error(f"unknown algorithm {algo!r}; pgsight trains {', '.join(BUILD_KINDS)}", algo_tok)
    opts = p.options()
    query, _tree = p.query()
    for key in ("batch_size", "max_epochs"):
        if key in opts:
            _check_positive_int(p, key, opts[key])
    kind = BUILD_KINDS[algo.lower()]
    sql = f"ml.build_model({literal(name)}, {literal(kind)}, {literal(query)}, {json_literal(opts)})"
    return Translation("BUILD MODEL", p.text, [Step("job", sql, {"model": name})])


def _convert(p: _Parser) -> Translation:
    p.expect("USING")
    model = p.name("a model name")
    opts = p.options({"image_col": "image_path", "text_col": None, "result_col": "convert_result",
                      "batch_size": None, "overwrite": False})
    _query, tree = p.query()
    p.end()
    table = _one_table(p, tree, "whose rows get the new column")
    modality, col = ("text", opts["text_col"]) if opts["text_col"] else ("image", opts["image_col"])
    _require_str(p, {"column": col, "result_col": opts["result_col"]}, "column", "result_col")
    if opts["batch_size"] is not None:
        _check_positive_int(p, "batch_size", opts["batch_size"])
    steps = [_drop_if_exists("drop_embedding", table, opts["result_col"], "embedding")] if opts["overwrite"] else []
    steps.append(Step("job", f"ml.create_embedding({literal(table)}, {literal(model)}, {literal(col)}, "
                             f"{literal(opts['result_col'])}, {literal(modality)})",
                      {"table": table, "column": opts["result_col"]},
                      comment=f"{table}.{opts['result_col']} is computed for every row and kept in sync on "
                              "INSERT/UPDATE" + ("\nbatch_size is a worker setting: pgsight worker --batch-size N"
                                                 if opts["batch_size"] else "")))
    return Translation("CONVERT", p.text, steps)


def _search(p: _Parser) -> Translation:
    p.expect("IMAGE")
    p.expect("USING")
    model = p.name("a model name")
    opts = p.options({"search_by": None, "search_input": None, "emb_col": "convert_result",
                      "result_col": "search_result", "top_k": 1000})
    query, tree = p.query()
    p.end()
    by = str(opts["search_by"] or "").lower()
    if by not in ("image", "text"):
        raise p.option_error(f"search_by must be 'image' or 'text', got {opts['search_by']!r} (audio and video "
                             "are not supported)")
    _require_str(p, opts, "search_input", "emb_col", "result_col")
    _check_positive_int(p, "top_k", opts["top_k"], allow_none=True)
    fn = "ml.embed_image" if by == "image" else "ml.embed_text"
    distance = f"{quote_ident(opts['emb_col'])} <=> {fn}({literal(model)}, {literal(opts['search_input'])})"
    limit = f"\nLIMIT {opts['top_k']}" if opts["top_k"] is not None else ""
    result = quote_ident(opts["result_col"])
    if is_simple(tree):
        sql = f"{add_columns(query, f'{distance} AS {result}')}\nORDER BY {result}{limit}"
    else:
        names = {e.alias_or_name for e in tree.expressions} if isinstance(tree, exp.Select) else set()
        if isinstance(tree, exp.Select) and not has_star(tree) and opts["emb_col"] not in names:
            raise ThanoSQLError(f"SEARCH IMAGE: the query must return the column emb_col={opts['emb_col']!r}",
                                "add it to the select list, or SELECT * FROM <table>")
        sql = f"SELECT q.*, q.{distance} AS {result}\nFROM ({query}) AS q\nORDER BY {result}{limit}"
    return Translation("SEARCH IMAGE", p.text, [Step("sql", sql, comment=f"{result} is the cosine distance "
                                                                         "(smaller is closer)")])


def _predict(p: _Parser) -> Translation:
    p.expect("USING")
    model = p.name("a model name")
    opts = p.options({"image_col": "image_path", "question": None, "column_name": "predict_result",
                      "result_col": None, "batch_size": None, "overwrite": False})
    query, tree = p.query()
    p.end()
    table = _one_table(p, tree, "whose rows get the answers")
    col = opts["result_col"] or opts["column_name"]
    _require_str(p, {**opts, "column_name": col}, "question", "image_col", "column_name")
    steps = [_drop_if_exists("drop_prediction", table, col, "prediction")] if opts["overwrite"] else []
    steps.append(Step("job", f"ml.create_prediction({literal(table)}, {literal(model)}, {literal(opts['image_col'])}, "
                             f"{literal(opts['question'])}, {literal(col)})", {"table": table, "column": col},
                      comment=f"{table}.{col} (and {col}_score) are computed for every row and kept in sync"))
    names = {e.alias_or_name for e in tree.expressions} if isinstance(tree, exp.Select) else set()
    if is_simple(tree) and not has_star(tree) and col not in names:
        query = add_columns(query, f"{quote_ident(col)}, {quote_ident(col + '_score')}")
    steps.append(Step("sql", query))
    return Translation("PREDICT", p.text, steps)


def _print(p: _Parser) -> Translation:
    p.expect("IMAGE")
    opts = p.options({"image_col": None, "thumb": 128})
    query, _tree = p.query()
    p.end()
    _check_positive_int(p, "thumb", opts["thumb"])
    return Translation("PRINT IMAGE", p.text, [Step("sheet", query, {k: v for k, v in opts.items() if v is not None},
                                                    comment="PRINT IMAGE: `pgsight show` or %pgsight draws "
                                                            "these rows as a contact sheet")])


def _copy(p: _Parser) -> Translation:
    tok = p.peek()
    quoted = tok is not None and tok.token_type == TokenType.IDENTIFIER
    table_tok = p.name("a table name")
    table = table_tok if quoted else table_tok.lower()
    opts = p.options({"overwrite": False, "recursive": False, "label_from_folder": False})
    p.expect("FROM")
    path_tok = p.peek()
    if path_tok is None or path_tok.token_type != TokenType.STRING:
        raise p.error("expected a quoted path after FROM")
    p.i += 1
    p.end()
    for key in ("overwrite", "recursive", "label_from_folder"):
        if not isinstance(opts[key], bool):
            raise p.option_error(f"{key} must be True or False, got {opts[key]!r}")
    path = path_tok.text
    flags = "".join(f" --{k.replace('_', '-')}" for k in ("recursive", "label_from_folder", "overwrite") if opts[k])
    comment = (f"client side: reads {path!r} on this machine (a folder of images, or a CSV file with a header)\n"
               f"like: pgsight load-images {path!r} --table {quote_ident(table)}{flags}")
    return Translation("COPY", p.text, [Step("copy", "", {"table": table, "path": path, **opts}, comment=comment)])

"""ThanoSQL statements as the seeds write them, translated to ml.* SQL (no database needed)."""
from __future__ import annotations

import json

import pytest
import sqlglot

from pgsight.thanosql import ThanoSQLError, translate, translate_script

# -- the statements of the seeds, verbatim ----------------------------------------------------------------
GET_VILT = """GET THANOSQL MODEL vilt
OPTIONS (overwrite=True)
AS tutorial_vilt"""
PREDICT_VILT = """PREDICT USING tutorial_vilt
OPTIONS (
    image_col='image_path',
    question='How many people are there?',
    column_name='predict_result'
    )
AS
SELECT image_path
FROM coco_person_data"""
PRINT_COCO = """PRINT IMAGE 
AS
SELECT image_path 
FROM coco_person_data 
LIMIT 5"""
COPY_CSV = """COPY coco_person_data 
OPTIONS (overwrite=True)
FROM 'thanosql-dataset/coco_person_data/coco_person.csv'"""
BUILD_SIMCLR = """BUILD MODEL my_image_search_model
USING SimCLR
OPTIONS (
image_col='image_path',
max_epochs=1,
overwrite=True
)
AS
SELECT *
FROM mnist_train"""
CONVERT_MNIST = """CONVERT USING my_image_search_model
OPTIONS (
image_col='image_path',
result_col='convert_result'
)
AS
SELECT *
FROM mnist_test"""
SEARCH_MNIST = """SEARCH IMAGE
USING my_image_search_model
OPTIONS (
search_by='image',
search_input='thanosql-dataset/mnist_data/test/923.jpg',
emb_col='convert_result',
result_col='search_result'
)
AS
SELECT *
FROM mnist_test"""


def parses_as_postgres(sql: str) -> None:
    for stmt in sql.split(";\n"):
        if stmt.strip() and not stmt.lstrip().startswith("--"):
            sqlglot.parse_one(stmt.rstrip(";"), read="postgres")


def test_get_model_maps_to_load_model_with_the_hub_id():
    t = translate(GET_VILT)
    assert t.kind == "GET MODEL"
    assert t.script() == ("SELECT ml.load_model('tutorial_vilt', 'vilt', 'dandelin/vilt-b32-finetuned-vqa', "
                          "'{\"overwrite\": true}'::jsonb);")
    assert translate("GET THANOSQL MODEL clip").script() == \
        "SELECT ml.load_model('clip', 'clip', 'openai/clip-vit-base-patch32');"
    # a local checkpoint (offline), and kind options passed on
    assert translate("get thanosql model clip options (source='/models/tiny-clip') as c").steps[0].sql == \
        "SELECT ml.load_model('c', 'clip', '/models/tiny-clip')"
    assert translate("GET THANOSQL MODEL pixels OPTIONS (size=8) AS px;").steps[0].sql == \
        "SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}'::jsonb)"


def test_build_model_maps_to_build_model_and_wait():
    t = translate(BUILD_SIMCLR)
    [step] = t.steps
    assert step.action == "job" and step.params == {"model": "my_image_search_model"}
    assert step.sql.startswith("ml.build_model('my_image_search_model', 'simclr', 'SELECT *\nFROM mnist_train', ")
    opts = json.loads(step.sql.split(", '", 3)[3].split("'::jsonb")[0])
    assert opts == {"image_col": "image_path", "max_epochs": 1, "overwrite": True}
    assert t.script().startswith("CALL ml.build_model_and_wait(") and t.script().endswith(", timeout => '1 day');")
    parses_as_postgres(t.script())
    # other algorithms and every value type
    t = translate("BUILD MODEL c USING CLIP OPTIONS (text_col='caption', learning_rate=1e-5, base=None, seed=-1) "
                  "AS SELECT image_path, caption FROM pairs WHERE split = 'train'")
    assert "'clip'" in t.steps[0].sql and "'SELECT image_path, caption FROM pairs WHERE split = ''train'''" in t.steps[0].sql
    assert '"learning_rate": 1e-05, "base": null, "seed": -1' in t.steps[0].sql


def test_convert_maps_to_create_embedding_on_the_table_the_select_reads():
    t = translate(CONVERT_MNIST)
    assert t.script().splitlines()[-1] == ("CALL ml.create_embedding_and_wait('mnist_test', 'my_image_search_model', "
                                           "'image_path', 'convert_result', 'image', timeout => '1 day');")
    assert t.steps[0].params == {"table": "mnist_test", "column": "convert_result"}
    # defaults (image_path, convert_result), schema-qualified and quoted tables, text columns
    t = translate('CONVERT USING m AS SELECT * FROM public."My Photos" WHERE id > 3')
    assert t.steps[0].sql == "ml.create_embedding('public.\"My Photos\"', 'm', 'image_path', 'convert_result', 'image')"
    t = translate("CONVERT USING clip OPTIONS (text_col='caption', result_col='cap_emb') AS SELECT * FROM Photos")
    assert t.steps[0].sql == "ml.create_embedding('photos', 'clip', 'caption', 'cap_emb', 'text')"
    # overwrite: the old column is dropped first (only if it is a pgsight column)
    t = translate("CONVERT USING m OPTIONS (overwrite=True) AS SELECT * FROM t")
    assert [s.action for s in t.steps] == ["sql", "job"]
    assert "ml.drop_embedding" in t.steps[0].sql and "t.result_col = 'convert_result'" in t.steps[0].sql
    parses_as_postgres(t.script())


def test_search_image_orders_by_distance_with_a_limit():
    t = translate(SEARCH_MNIST)
    [step] = t.steps
    assert step.sql == ("SELECT *, convert_result <=> ml.embed_image('my_image_search_model', "
                        "'thanosql-dataset/mnist_data/test/923.jpg') AS search_result\n"
                        "FROM mnist_test\nORDER BY search_result\nLIMIT 1000")
    t = translate("SEARCH IMAGE USING clip OPTIONS (search_by='text', search_input='a dog''s toy', emb_col='e', "
                  "top_k=5) AS SELECT id, image_path FROM photos WHERE id > 10")
    assert t.steps[0].sql == ("SELECT id, image_path, e <=> ml.embed_text('clip', 'a dog''s toy') AS search_result\n"
                              "FROM photos WHERE id > 10\nORDER BY search_result\nLIMIT 5")
    # top_k=None returns every row; a query with its own ORDER BY/LIMIT is wrapped
    assert "LIMIT" not in translate("SEARCH IMAGE USING m OPTIONS (search_by=image, search_input='q.png', "
                                    "top_k=None) AS SELECT * FROM t").steps[0].sql
    wrapped = translate("SEARCH IMAGE USING m OPTIONS (search_by='image', search_input='q.png', top_k=3) "
                        "AS SELECT * FROM t ORDER BY id LIMIT 100").steps[0].sql
    assert wrapped.startswith("SELECT q.*, q.convert_result <=> ml.embed_image('m', 'q.png') AS search_result\n"
                              "FROM (SELECT * FROM t ORDER BY id LIMIT 100) AS q")
    parses_as_postgres(wrapped)


def test_predict_creates_the_column_waits_then_selects_it():
    t = translate(PREDICT_VILT)
    assert [s.action for s in t.steps] == ["job", "sql"]
    assert t.steps[0].sql == ("ml.create_prediction('coco_person_data', 'tutorial_vilt', 'image_path', "
                              "'How many people are there?', 'predict_result')")
    assert t.steps[1].sql == "SELECT image_path, predict_result, predict_result_score\nFROM coco_person_data"
    star = translate("PREDICT USING v OPTIONS (question='what?') AS SELECT * FROM t LIMIT 3")
    assert star.steps[1].sql == "SELECT * FROM t LIMIT 3"
    parses_as_postgres(t.script())


def test_print_image_and_copy_are_client_side_steps():
    t = translate(PRINT_COCO)
    assert [(s.action, s.sql) for s in t.steps] == [("sheet", "SELECT image_path \nFROM coco_person_data \nLIMIT 5")]
    c = translate(COPY_CSV)
    assert c.steps[0].action == "copy"
    assert c.steps[0].params == {"table": "coco_person_data", "path": "thanosql-dataset/coco_person_data/coco_person.csv",
                                 "overwrite": True, "recursive": False, "label_from_folder": False}
    assert "pgsight load-images" in c.script()
    assert translate("COPY Photos FROM '/data/photos'").steps[0].params["table"] == "photos"


def test_scripts_mix_thanosql_and_plain_sql():
    ts = translate_script(f"SELECT 1; {GET_VILT};\n-- a comment; with a semicolon\n"
                          "DO $$ BEGIN PERFORM 1; END $$; COPY t FROM STDIN; COPY t (a) FROM '/srv/x.csv'")
    assert [t.kind for t in ts] == ["SQL", "GET MODEL", "SQL", "SQL", "SQL"]
    assert ts[2].source == "DO $$ BEGIN PERFORM 1; END $$"
    assert ts[3].source == "COPY t FROM STDIN"


@pytest.mark.parametrize("statement, message", [
    ("BUILD MODEL m USING Foo AS SELECT 1", "line 1, col 21: unknown algorithm 'Foo'; pgsight trains simclr, clip, vilt"),
    ("BUILD MODEL m USING SimCLR OPTIONS (image_col='image_path' max_epochs=1) AS SELECT * FROM t",
     "expected ',' or ')', got 'max_epochs'"),
    ("BUILD MODEL m USING SimCLR OPTIONS (max_epochs=0) AS SELECT * FROM t", "max_epochs must be a positive integer"),
    ("BUILD MODEL m USING SimCLR AS SELECT * FROM WHERE", "the query after AS does not parse"),
    ("BUILD MODEL m USING SimCLR AS DELETE FROM t", "expects one SELECT query"),
    ("BUILD MODEL USING SimCLR AS SELECT 1", "expected the model's name, got 'USING'"),
    ("GET THANOSQL DATASET coco_person_data OPTIONS (overwrite=True)", "GET THANOSQL DATASET is not supported"),
    ("GET THANOSQL MODEL resnet AS r", "unknown ThanoSQL model 'resnet'; pgsight knows vilt, clip, pixels"),
    ("GET THANOSQL MODEL vilt AS", "expected the new model's name, got the end of the statement"),
    ("GET MODEL vilt", "expected THANOSQL, got 'MODEL'"),
    ("CONVERT USING m OPTIONS (image_col='a', bogus=1) AS SELECT * FROM t",
     "unknown option 'bogus' for CONVERT; known: image_col, text_col, result_col, batch_size, overwrite"),
    ("CONVERT USING m OPTIONS (image_col='a', image_col='b') AS SELECT * FROM t", "option 'image_col' is given twice"),
    ("CONVERT USING m AS SELECT * FROM a JOIN b ON true", "the query after AS must read one table"),
    ("CONVERT USING m AS SELECT 1", "the query after AS must read one table"),
    ("CONVERT USING m OPTIONS (image_col='x')", "expected AS, got the end of the statement"),
    ("SEARCH IMAGE USING m OPTIONS (search_by='audio', search_input='x') AS SELECT * FROM t",
     "search_by must be 'image' or 'text', got 'audio'"),
    ("SEARCH IMAGE USING m OPTIONS (search_by='text') AS SELECT * FROM t", "search_input is required"),
    ("SEARCH IMAGE USING m OPTIONS (search_by='text', search_input='x', top_k=0) AS SELECT * FROM t",
     "top_k must be a positive integer"),
    ("SEARCH IMAGE USING m OPTIONS (search_by='text', search_input='x') AS SELECT id FROM t ORDER BY id",
     "the query must return the column emb_col='convert_result'"),
    ("SEARCH TEXT USING m AS SELECT * FROM t", "expected IMAGE, got 'TEXT'"),
    ("PREDICT USING m OPTIONS (image_col='image_path') AS SELECT * FROM t", "question is required"),
    ("PRINT IMAGE SELECT image_path FROM t", "expected AS, got 'SELECT'"),
    ("COPY t OPTIONS (overwrite=yes) FROM 'x'", "overwrite must be True or False, got 'yes'"),
    ("COPY t OPTIONS (overwrite=True) FROM x", "expected a quoted path after FROM"),
    ("CONVERT USING m AS SELECT 'unterminated FROM t", "cannot read the SQL"),
])
def test_bad_statements_say_what_is_wrong_and_how_to_write_them(statement, message):
    with pytest.raises(ThanoSQLError) as err:
        translate(statement)
    assert message in str(err.value)
    assert "hint:" in str(err.value)

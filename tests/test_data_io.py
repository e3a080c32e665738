"""Tests for rlxf.data: records, and reading/writing them as JSONL, Parquet and saved datasets."""

from __future__ import annotations

import json
import os

import datasets
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlxf.data import (
    Comparison,
    Correction,
    Critique,
    DataError,
    Demonstration,
    Prompt,
    Ranking,
    Rating,
    RecordError,
    Unpaired,
    detect_kind,
    iter_records,
    read_records,
    write_records,
)
from rlxf.data import io as data_io

FORMATS = ["data.jsonl", "data.parquet", "data"]

SAMPLES = {
    "comparison": [Comparison("2+2=", "4", "5", strength=0.9), Comparison("Hi", "Hello!", "Go away.")],
    "ranking": [Ranking("Name a fruit", ("apple", "rock", "pear"), (2, 0, 1))],
    "rating": [Rating("Say hi", "hi", 4, (1, 5)), Rating("Say hi", "bye", 1.5, (1, 5))],
    "critique": [Critique("Say hi", "bye", "Off topic."),  # an old-style row beside rows with verdicts
                 Critique("2+3*4=", "3*4=12\n2+12=15\nanswer: 15", "2+12 is 14", "incorrect", 2),
                 Critique("1+1=", "answer: 2", "fine\nverdict: correct", "correct")],
    "correction": [Correction("Spell cat", "kat", "cat")],
    "demonstration": [Demonstration("Count to 3", "1 2 3")],
    "unpaired": [Unpaired("Say hi", "hi", True), Unpaired("Say hi", "no", False)],
    "prompt": [Prompt("What is 2+3?", {"answer": "5"}), Prompt("What is 1+1?", {"answer": "2"})],
}

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in-process (no downloads) with a tiny chat template."""
    vocab = {"[UNK]": 0, "hi": 1, "hello": 2, "go": 3, "away": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# -- round trips and column names ---------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("kind", list(SAMPLES))
def test_round_trip(tmp_path, kind, name):
    records = SAMPLES[kind]
    path = write_records(records, tmp_path / name)
    assert read_records(path, kind=kind) == records


def test_jsonl_uses_trl_column_names(tmp_path):
    write_records(SAMPLES["comparison"], tmp_path / "c.jsonl")
    write_records(SAMPLES["unpaired"], tmp_path / "u.jsonl")
    c_rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    u_rows = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert c_rows[1] == {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    assert c_rows[0]["strength"] == 0.9
    assert u_rows[0] == {"prompt": "Say hi", "completion": "hi", "label": True}


def test_parquet_and_saved_dataset_use_trl_column_names(tmp_path):
    write_records(SAMPLES["comparison"], tmp_path / "c.parquet")
    write_records(SAMPLES["unpaired"], tmp_path / "u")
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column_names == ["prompt", "chosen", "rejected", "strength"]
    assert table.column("strength").to_pylist() == [0.9, None]  # absent in row 1 -> null
    saved = datasets.load_from_disk(str(tmp_path / "u"))
    assert saved.column_names == ["prompt", "completion", "label"]
    assert saved[1] == {"prompt": "Say hi", "completion": "no", "label": False}


def test_reads_in_memory_dataset_with_extra_columns():
    ds = datasets.Dataset.from_dict(
        {"prompt": ["p"], "completion": ["c"], "label": [False], "source": ["web"]}
    )
    assert read_records(ds, kind="unpaired") == [Unpaired("p", "c", False)]


def test_iter_records_streams(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, "{bad"])
    rows = iter_records(path)
    assert next(rows) == Comparison("p", "a", "b")  # the bad line is not read yet
    with pytest.raises(DataError, match="line 2"):
        next(rows)


# -- conversational data (TRL's chat format) -----------------------------------------------


def test_conversational_rendered_with_chat_template(tmp_path, chat_tokenizer):
    row = {"prompt": [user("hi")], "chosen": [bot("hello")], "rejected": [bot("go away")]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    (record,) = read_records(path, tokenizer=chat_tokenizer)
    assert record == Comparison("<|user|>hi<|end|><|assistant|>", "hello<|end|>", "go away<|end|>")


def test_implicit_prompt_conversational(chat_tokenizer):
    ds = datasets.Dataset.from_list(
        [{"chosen": [user("hi"), bot("hello")], "rejected": [user("hi"), bot("go away")]}]
    )
    (record,) = read_records(ds, tokenizer=chat_tokenizer)
    assert record == Comparison("<|user|>hi<|end|><|assistant|>", "hello<|end|>", "go away<|end|>")


def test_conversational_ranking_and_unpaired(chat_tokenizer):
    ranking = {"prompt": [user("hi")], "completions": [[bot("a")], [bot("b")]], "order": [1, 0]}
    assert read_records(datasets.Dataset.from_list([ranking]), kind="ranking", tokenizer=chat_tokenizer) == [
        Ranking("<|user|>hi<|end|><|assistant|>", ("a<|end|>", "b<|end|>"), (1, 0))
    ]
    unpaired = {"prompt": [user("hi")], "completion": [bot("yo")], "label": True}
    assert read_records(datasets.Dataset.from_list([unpaired]), kind="unpaired", tokenizer=chat_tokenizer) == [
        Unpaired("<|user|>hi<|end|><|assistant|>", "yo<|end|>", True)
    ]


def test_conversational_without_chat_template_is_an_error(tmp_path, chat_tokenizer):
    row = {"prompt": [user("hi")], "chosen": [bot("hello")], "rejected": [bot("go away")]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    with pytest.raises(DataError, match=r"chat\.jsonl, line 1: field 'prompt'.*tokenizer with a chat template"):
        read_records(path)
    plain = PreTrainedTokenizerFast(tokenizer_object=chat_tokenizer.backend_tokenizer)
    with pytest.raises(DataError, match="chat template"):
        read_records(path, tokenizer=plain)


def test_mixed_text_and_messages_is_an_error(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "hi", "chosen": [bot("a")], "rejected": [bot("b")]}])
    with pytest.raises(DataError, match="field 'prompt' is plain text while 'chosen' holds chat messages"):
        read_records(path, tokenizer=chat_tokenizer)


def test_chat_response_without_prompt_is_an_error(chat_tokenizer):
    ds = datasets.Dataset.from_list([{"completion": [user("hi"), bot("yo")], "label": True}])
    with pytest.raises(DataError, match="row 0: field 'prompt' is missing"):
        read_records(ds, kind="unpaired", tokenizer=chat_tokenizer)


def test_implicit_prompt_needs_messages(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"chosen": "hi there", "rejected": "hi you"}])
    with pytest.raises(DataError, match="line 1: field 'prompt' is missing"):
        read_records(path)


# -- validation errors name file, line/row and field ---------------------------------------


def test_missing_field_names_file_line_and_field(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "comparisons.jsonl", [good, good, {"prompt": "p", "chosen": "a"}, good])
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value) == f"{path}, line 3: field 'rejected' is missing (expected a string)"
    assert err.value.field == "rejected" and err.value.where == "line 3"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": 3}, "field 'chosen' is 3 (int) (expected a non-empty string)"),
        ({"rejected": ""}, "field 'rejected' is empty"),
        ({"strength": "high"}, "field 'strength' is 'high' (str) (expected a number)"),
    ],
)
def test_wrong_type_or_empty_field(tmp_path, bad, message):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", **bad}
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    with pytest.raises(DataError, match=f"line 1: {message}".replace("(", r"\(").replace(")", r"\)")):
        read_records(path)


def test_blank_lines_keep_line_numbers(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, "", {"prompt": 1, "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match="line 3: field 'prompt'"):
        read_records(path)


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, '{"prompt": "p",'])
    with pytest.raises(DataError, match=r"c\.jsonl, line 2: not valid JSON"):
        read_records(path)
    write_jsonl(path, ['["p", "a", "b"]'])
    with pytest.raises(DataError, match="line 1: is a JSON list"):
        read_records(path)


def test_parquet_error_names_row_index(tmp_path):
    path = tmp_path / "u.parquet"
    datasets.Dataset.from_dict({"prompt": ["p", "p"], "completion": ["c", "c"], "label": [True, None]}).to_parquet(
        str(path)
    )
    with pytest.raises(DataError, match=r"u\.parquet, row 1: field 'label' is missing"):
        read_records(path, kind="unpaired")


def test_label_must_be_bool(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "c", "label": 1}])
    with pytest.raises(DataError, match="field 'label' is 1 \\(int\\) \\(expected true or false\\)"):
        read_records(path, kind="unpaired")


def test_rating_outside_scale():
    expected = r"field 'rating' is 6.0 \(expected a number within the scale \[1.0, 5.0\]\)"
    with pytest.raises(RecordError, match=expected):
        Rating("p", "r", 6, (1, 5))
    with pytest.raises(RecordError, match="field 'scale'"):
        Rating("p", "r", 3, (5, 1))


def test_rating_outside_scale_in_file(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completion": "c", "rating": 0, "scale": [1, 5]}])
    with pytest.raises(DataError, match="line 1: field 'rating' is 0.0"):
        read_records(path, kind="rating")


def test_ranking_order_must_be_a_permutation(tmp_path):
    with pytest.raises(RecordError, match="field 'order' has duplicate index 1"):
        Ranking("p", ("a", "b", "c"), (1, 1, 0))
    with pytest.raises(RecordError, match="ranks 2 of 3 responses"):
        Ranking("p", ("a", "b", "c"), (1, 0))
    with pytest.raises(RecordError, match="contains 3"):
        Ranking("p", ("a", "b", "c"), (0, 1, 3))
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "completions": ["a", "b"], "order": [0, 0]}])
    with pytest.raises(DataError, match="line 1: field 'order' has duplicate index 0"):
        read_records(path, kind="ranking")


# -- .json files, prompt-only and conversational SFT rows, kind detection --------------------

JSON_ROWS = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]


@pytest.mark.parametrize("layout", ["array", "field", "columns", "lines"])
def test_json_file_layouts(tmp_path, layout):
    path = tmp_path / "prefs.json"
    if layout == "array":
        path.write_text(json.dumps(JSON_ROWS))
    elif layout == "field":
        path.write_text(json.dumps({"data": JSON_ROWS}))
    elif layout == "columns":
        path.write_text(json.dumps({k: [r[k] for r in JSON_ROWS] for k in JSON_ROWS[0]}))
    else:
        datasets.Dataset.from_list(JSON_ROWS).to_json(str(path))  # HF writes JSON lines by default
    assert read_records(path) == [Comparison("p", "a", "b"), Comparison("q", "c", "d")]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": ["a", "b"], "chosen": ["x"]}', r"columns of different lengths \('prompt' has 2, 'chosen' has 1\)"),
    ("42", "holds a JSON int"),
    ('[{"prompt": "p", "chosen": "a", "rejected": "b"}, 7]', "row 1: is a JSON int"),
    ('{"a": 1, "b": "x"}', "neither rows nor columns"),
    ("[{", "not valid JSON"),
])
def test_bad_json_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_prompt_rows_keep_extra_columns_for_rewards(tmp_path, chat_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+3=", "answer": "5", "level": 1}])
    assert read_records(path, kind="prompt") == [Prompt("2+3=", {"answer": "5", "level": 1})]
    chat = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [user("hi")], "answer": "hello"}])
    (record,) = read_records(chat, kind="prompt", tokenizer=chat_tokenizer)
    assert record == Prompt("<|user|>hi<|end|><|assistant|>", {"answer": "hello"})


def test_conversational_sft_messages_split_at_the_last_reply(tmp_path, chat_tokenizer):
    row = {"messages": [user("hi"), bot("hello"), user("go"), bot("away")]}
    (record,) = read_records(write_jsonl(tmp_path / "sft.jsonl", [row]), kind="demonstration",
                             tokenizer=chat_tokenizer)
    assert record == Demonstration("<|user|>hi<|end|><|assistant|>hello<|end|><|user|>go<|end|><|assistant|>",
                                   "away<|end|>")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [user("hi")]}])
    with pytest.raises(DataError, match="line 1: field 'messages' has no assistant message"):
        read_records(bad, kind="demonstration", tokenizer=chat_tokenizer)


def test_detect_kind_reads_the_first_rows_columns(tmp_path):
    for kind, records in SAMPLES.items():
        assert detect_kind(write_records(records, tmp_path / f"{kind}.jsonl")) == kind
    assert detect_kind(write_jsonl(tmp_path / "m.jsonl", [{"messages": [user("a"), bot("b")]}])) == "demonstration"
    with pytest.raises(DataError, match="x.jsonl, line 1: has columns foo; cannot tell"):
        detect_kind(write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}]))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        detect_kind(tmp_path / "empty.jsonl")


def test_dataset_dict_needs_a_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["p"], "completion": ["c"]})})
    with pytest.raises(DataError, match=r"holds splits \(train\)"):
        read_records(dd, kind="demonstration")
    assert read_records(dd["train"], kind="demonstration") == [Demonstration("p", "c")]


def test_unknown_kind_and_format(tmp_path):
    with pytest.raises(ValueError, match="unknown record kind 'preference'"):
        read_records(tmp_path / "x.jsonl", kind="preference")
    (tmp_path / "x.csv").write_text("prompt,chosen\n")
    with pytest.raises(DataError, match="unknown format '.csv'"):
        read_records(tmp_path / "x.csv")
    with pytest.raises(DataError, match="unknown format '.json'"):
        write_records(SAMPLES["comparison"], tmp_path / "x.json")


# -- atomic writes --------------------------------------------------------------------------


class Exploding(Comparison):
    """A record whose row cannot be built when its prompt is "boom"."""

    def to_row(self):
        if self.prompt == "boom":
            raise RuntimeError("boom")
        return super().to_row()


def test_failed_jsonl_write_leaves_nothing(tmp_path):
    records = [Exploding("p", "a", "b"), Exploding("q", "a", "b"), Exploding("boom", "a", "b")]
    with pytest.raises(RuntimeError, match="boom"):
        write_records(records, tmp_path / "c.jsonl")  # fails with two lines already in the temp file
    assert os.listdir(tmp_path) == []


def test_mixed_kinds_are_refused(tmp_path):
    with pytest.raises(DataError, match="record 1: is a Rating \\(expected a Comparison like record 0\\)"):
        write_records([SAMPLES["comparison"][0], SAMPLES["rating"][0]], tmp_path / "c.jsonl")
    assert os.listdir(tmp_path) == []


def test_failed_write_mid_file_keeps_old_target(tmp_path, monkeypatch):
    target = write_records(SAMPLES["comparison"], tmp_path / "c.jsonl")
    before = target.read_bytes()

    def records():
        yield Comparison("new", "a", "b")
        raise RuntimeError("labeler crashed")

    with pytest.raises(RuntimeError, match="labeler crashed"):
        write_records(records(), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.jsonl"]


@pytest.mark.parametrize("name", ["c.parquet", "c"])
def test_failed_write_leaves_no_target_or_litter(tmp_path, monkeypatch, name):
    def half_write(*args, **kwargs):
        target = args[-1] if name == "c" else args[1]
        if name == "c":
            os.makedirs(target)
            open(os.path.join(target, "data-00000.arrow"), "w").close()
        else:
            target.write(b"PAR1")
        raise OSError("disk full")

    if name == "c":
        monkeypatch.setattr(datasets.Dataset, "save_to_disk", half_write)
    else:
        monkeypatch.setattr(data_io.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_records(SAMPLES["comparison"], tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_dataset_directory_is_replaced_whole(tmp_path):
    target = write_records(SAMPLES["comparison"], tmp_path / "c")
    write_records(SAMPLES["comparison"][:1], target)
    assert read_records(target) == SAMPLES["comparison"][:1]
    assert os.listdir(tmp_path) == ["c"]


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not a saved dataset; refusing to replace it"):
        write_records(SAMPLES["comparison"], tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


def test_empty_write_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no records to write"):
        write_records([], tmp_path / "c.jsonl")
    assert os.listdir(tmp_path) == []


def test_critique_verdict_fields_are_checked_and_must_agree_with_the_text():
    """A critique's verdict is 'correct'/'incorrect' with an optional 1-based first wrong step (only
    with 'incorrect'); when the text carries its own verdict line, the two must agree."""
    ok = Critique("q", "a\nb", "step 2 is wrong\nverdict: incorrect 2", "incorrect", 2)
    assert ok.judgment.correct is False and ok.judgment.first_wrong_step == 2
    assert Critique("q", "a", "verdict: incorrect 3").judgment.first_wrong_step == 3  # read from the text
    assert Critique("q", "a", "Off topic.").judgment.correct is None
    assert Critique.from_row({"prompt": "q", "completion": "a", "critique": "x"}).to_row() == {
        "prompt": "q", "completion": "a", "critique": "x"}  # old rows load and write back unchanged
    bad = [(dict(verdict="wrong"), "field 'verdict' is 'wrong'"),
           (dict(verdict="incorrect", first_wrong_step=0), "field 'first_wrong_step' is 0"),
           (dict(verdict="incorrect", first_wrong_step=True), "field 'first_wrong_step' is True"),
           (dict(verdict="incorrect", first_wrong_step="2"), "field 'first_wrong_step' is '2'"),
           (dict(verdict="correct", first_wrong_step=2), "only with verdict 'incorrect'"),
           (dict(first_wrong_step=2), "only with verdict 'incorrect'")]
    for fields, expected in bad:
        with pytest.raises(RecordError, match=expected):
            Critique("q", "a", "text", **fields)
    with pytest.raises(RecordError, match="field 'verdict' is 'correct' but the critique text's verdict line "
                                          "says 'incorrect 2'"):
        Critique("q", "a", "verdict: incorrect 2", "correct")
    with pytest.raises(RecordError, match="says 'incorrect 2'"):
        Critique("q", "a", "verdict: incorrect 2", "incorrect", 3)


def test_a_bad_verdict_in_a_file_names_the_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": "q", "completion": "a", "critique": "ok", "verdict": "correct"},
        {"prompt": "q", "completion": "a", "critique": "ok", "verdict": "correct", "first_wrong_step": 1}])
    with pytest.raises(DataError, match="line 2.*field 'first_wrong_step'"):
        read_records(path, kind="critique")

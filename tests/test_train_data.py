"""prepare_data: a user's dataset read in every format, checked, tokenized and split for each method kind."""

from __future__ import annotations

import json
import warnings

import datasets
import pytest

from rlxf.algorithms.preference_data import PreferenceDataWarning
from rlxf.data.io import DataError
from rlxf.lab.train_data import DataSettings, prepare_data
from rlxf.policies.tiny import tiny_tokenizer

WORDS = "a b c d e f g h yes no good bad user: assistant: system: 1 2 3 4".split()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(WORDS)


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prepare(tok, path, need, seed=0, **kw):
    kw.setdefault("eval_fraction", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be dropped or cut unless a test says so
        return prepare_data(DataSettings(path=str(path), **kw), need, tok, seed)


PAIRS = [{"prompt": "a b", "chosen": "good", "rejected": "bad"},
         {"prompt": "c", "chosen": "yes yes", "rejected": "no"},
         {"prompt": "d e f", "chosen": "1", "rejected": "2 3"}]


def write_format(tmp_path, fmt, rows):
    ds = datasets.Dataset.from_list(rows)
    if fmt == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", rows)
    if fmt == "json array":
        (tmp_path / "d.json").write_text(json.dumps(rows))
    elif fmt == "hf json":
        ds.to_json(tmp_path / "d.json")  # JSON lines in a .json file, as HF writes them
    elif fmt == "parquet":
        ds.to_parquet(tmp_path / "d.parquet")
        return str(tmp_path / "d.parquet")
    else:
        ds.save_to_disk(tmp_path / "d")
        return str(tmp_path / "d")
    return str(tmp_path / "d.json")


@pytest.mark.parametrize("fmt", ["jsonl", "json array", "hf json", "parquet", "save_to_disk"])
def test_every_format_gives_the_same_token_pairs(tmp_path, tok, fmt):
    data = prepare(tok, write_format(tmp_path, fmt, PAIRS), "comparison")
    eos = tok.eos_token_id
    assert data.train == [(ids(tok, r["prompt"]), ids(tok, r["chosen"]) + [eos], ids(tok, r["rejected"]) + [eos])
                          for r in PAIRS]
    assert data.eval == [] and data.train_rows == PAIRS and not data.conversational
    rep = data.report
    assert (rep["rows_read"], rep["rows_kept"], rep["rows_dropped"]) == (3, 3, 0)
    # tokens per row: prompt + the longer response (+ EOS): 2+2, 1+3, 3+3
    assert rep["tokens_per_row"] == {"min": 4, "mean": pytest.approx(14 / 3), "max": 6}
    assert rep["first_prompt"] == "a b"


def chat(role, text):
    return {"role": role, "content": text}


def test_conversational_comparisons_explicit_and_implicit_prompt(tmp_path, tok):
    rows = [{"prompt": [chat("user", "a b")], "chosen": [chat("assistant", "good")],
             "rejected": [chat("assistant", "bad")]},
            {"chosen": [chat("user", "c"), chat("assistant", "yes")],  # TRL's implicit prompt
             "rejected": [chat("user", "c"), chat("assistant", "no")]}]
    data = prepare(tok, write_jsonl(tmp_path / "c.jsonl", rows), "comparison")
    assert data.conversational
    assert data.prompt_texts == ["user: a b\nassistant:", "user: c\nassistant:"]
    eos = tok.eos_token_id
    p, c, r = data.train[1]
    assert p == ids(tok, "user: c\nassistant:") and c == ids(tok, "yes") + [eos]  # the text after the shared prompt
    assert data.report["first_prompt"] == "user: a b\nassistant:"


def test_demonstrations_standard_and_messages(tmp_path, tok):
    rows = [{"prompt": "a", "completion": "b c"},
            {"messages": [chat("system", "d"), chat("user", "e"), chat("assistant", "f")]}]
    path = write_jsonl(tmp_path / "sft.jsonl", rows[:1])
    eos = tok.eos_token_id
    assert prepare(tok, path, "demonstration").train == [(ids(tok, "a"), ids(tok, "b c") + [eos])]
    chat_data = prepare(tok, write_jsonl(tmp_path / "sft_chat.jsonl", rows[1:]), "demonstration")
    assert chat_data.conversational and chat_data.prompt_texts == ["system: d\nuser: e\nassistant:"]
    assert chat_data.train[0][1] == ids(tok, "f") + [eos]


def test_unpaired_rows_and_comparisons_split_into_unpaired(tmp_path, tok):
    rows = [{"prompt": "a", "completion": "good", "label": True}, {"prompt": "b", "completion": "bad", "label": False}]
    data = prepare(tok, write_jsonl(tmp_path / "kto.jsonl", rows), "unpaired")
    eos = tok.eos_token_id
    assert data.train == [(ids(tok, "a"), ids(tok, "good") + [eos], True), (ids(tok, "b"), ids(tok, "bad") + [eos], False)]
    chat_rows = [{"prompt": [chat("user", r["prompt"])], "completion": [chat("assistant", r["completion"])],
                  "label": r["label"]} for r in rows]
    chat_data = prepare(tok, write_jsonl(tmp_path / "kto_chat.jsonl", chat_rows), "unpaired")
    assert chat_data.conversational and [x[2] for x in chat_data.train] == [True, False]
    assert chat_data.train[0][:2] == (ids(tok, "user: a\nassistant:"), ids(tok, "good") + [eos])
    split = prepare(tok, write_jsonl(tmp_path / "p.jsonl", PAIRS), "unpaired")
    assert [x[2] for x in split.train] == [True, False] * 3
    assert split.train[2] == (ids(tok, "c"), ids(tok, "yes yes") + [eos], True)
    assert split.train[3] == (ids(tok, "c"), ids(tok, "no") + [eos], False)
    assert split.train_rows[2] == split.train_rows[3] == PAIRS[1]


def test_prompts_from_any_kind_keep_their_extra_columns(tmp_path, tok):
    rows = [{"prompt": [chat("user", "a")], "answer": "4"}, {"prompt": [chat("user", "b c")], "answer": "2"}]
    data = prepare(tok, write_jsonl(tmp_path / "q.jsonl", rows), "prompt")
    assert data.conversational and data.train == [ids(tok, "user: a\nassistant:"), ids(tok, "user: b c\nassistant:")]
    assert data.train_rows == rows  # the prompt as written (messages) and the answer, for reward functions
    from_pairs = prepare(tok, write_jsonl(tmp_path / "p.jsonl", [{**r, "topic": i} for i, r in enumerate(PAIRS)]),
                         "prompt")
    assert from_pairs.train == [ids(tok, r["prompt"]) for r in PAIRS]
    assert from_pairs.train_rows == [{"prompt": r["prompt"], "topic": i} for i, r in enumerate(PAIRS)]
    implicit = [{"chosen": [chat("user", "c"), chat("assistant", "yes")],
                 "rejected": [chat("user", "c"), chat("assistant", "no")], "answer": "1"}]
    only = prepare(tok, write_jsonl(tmp_path / "i.jsonl", implicit), "prompt")
    assert only.train_rows == [{"prompt": [chat("user", "c")], "answer": "1"}]
    sft = [{"messages": [chat("user", "d"), chat("assistant", "e")]}]
    assert prepare(tok, write_jsonl(tmp_path / "m.jsonl", sft), "prompt").prompt_texts == ["user: d\nassistant:"]


def test_rename_map(tmp_path, tok):
    rows = [{"question": "a b", "good": "c", "bad": "d"}]
    data = prepare(tok, write_jsonl(tmp_path / "r.jsonl", rows), "comparison",
                   columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert data.train[0][0] == ids(tok, "a b")
    with pytest.raises(DataError, match=r"r\.jsonl, line 1: has no column 'query' to rename to 'prompt'"):
        prepare(tok, tmp_path / "r.jsonl", "comparison", columns={"query": "prompt"})


def test_long_prompts_are_cut_from_the_left_with_one_warning(tmp_path, tok):
    rows = [{"prompt": "a b c d e", "chosen": "g", "rejected": "h"}, {"prompt": "a", "chosen": "g", "rejected": "h"},
            {"prompt": "e d c b", "chosen": "g", "rejected": "h"}]
    with pytest.warns(PreferenceDataWarning) as caught:
        data = prepare_data(DataSettings(str(write_jsonl(tmp_path / "l.jsonl", rows)), eval_fraction=0,
                                         max_prompt_length=3), "comparison", tok, 0)
    assert len(caught) == 1
    assert "2 of 3 prompts are longer than max_prompt_length=3 tokens (the longest has 5)" in str(caught[0].message)
    assert [p for p, _, _ in data.train] == [ids(tok, "c d e"), ids(tok, "a"), ids(tok, "d c b")]
    assert data.report["prompts_truncated"] == 2


def test_rows_without_room_for_a_response_are_dropped_with_one_warning(tmp_path, tok):
    rows = [{"prompt": "a b c", "chosen": "g", "rejected": "h"}, {"prompt": "a", "chosen": "g", "rejected": "h"},
            {"prompt": "b c d", "chosen": "g", "rejected": "h"}, {"prompt": "b", "chosen": "g", "rejected": "g"}]
    with pytest.warns(PreferenceDataWarning) as caught:
        data = prepare_data(DataSettings(str(write_jsonl(tmp_path / "d.jsonl", rows)), eval_fraction=0,
                                         max_prompt_length=8, max_length=3), "comparison", tok, 0)
    (msg,) = [str(w.message) for w in caught]
    assert "dropped 3 of 4 records" in msg and "(records 0, 2)" in msg and "chosen equals rejected (records 3)" in msg
    assert len(data.train) == 1 and data.train_rows == [rows[1]]
    assert data.report["rows_dropped"] == 3 and data.report["rows_kept"] == 1
    assert data.report["dropped"] == {"the prompt fills max_length=3 tokens": 2, "chosen equals rejected": 1}


def test_held_out_split_sizes_and_determinism(tmp_path, tok):
    rows = [{"prompt": " ".join(["a"] * (1 + i % 7) + ["b"] * (i // 7)), "chosen": "g", "rejected": "h"}
            for i in range(40)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    one = prepare(tok, path, "comparison", seed=1, eval_fraction=0.1)
    assert (len(one.train), len(one.eval)) == (36, 4) and one.report["eval_items"] == 4
    assert sorted(map(str, one.train + one.eval)) == sorted(map(str, prepare(tok, path, "comparison").train))
    assert one.eval_rows == [rows[[r["prompt"] for r in rows].index(x["prompt"])] for x in one.eval_rows]
    assert prepare(tok, path, "comparison", seed=1, eval_fraction=0.1).eval == one.eval
    assert prepare(tok, path, "comparison", seed=2, eval_fraction=0.1).eval != one.eval
    tiny = prepare(tok, write_jsonl(tmp_path / "t.jsonl", PAIRS), "comparison", eval_fraction=0.05)
    assert (len(tiny.train), len(tiny.eval)) == (2, 1)  # at least one held-out row when data allows
    kto = prepare(tok, path, "unpaired", seed=1, eval_fraction=0.1)
    assert (len(kto.train), len(kto.eval)) == (72, 8)  # split by pair: both halves on one side
    given = prepare(tok, path, "comparison", eval_path=write_jsonl(tmp_path / "e.jsonl", PAIRS), eval_fraction=0.1)
    assert len(given.train) == 40 and len(given.eval) == 3 and given.report["eval_source"].endswith("e.jsonl")


@pytest.mark.parametrize("rows, need, message", [
    ([PAIRS[0], {"prompt": "a", "chosen": "b"}], "comparison", r"line 2: field 'rejected' is missing"),
    ([PAIRS[0], {"prompt": "a", "chosen": 5, "rejected": "b"}], "comparison",
     r"line 2: field 'chosen' is 5 \(int\) \(expected a non-empty string\)"),
    ([], "comparison", "holds no rows"),
    ([{"prompt": "a", "chosen": "b", "rejected": "b"}], "comparison", "no usable records left"),
    ([{"prompt": "a", "completion": "b"}], "comparison", r"holds demonstration data \(expected prompt/chosen/rejected"),
    ([{"prompt": "a", "completion": "b", "label": True}], "unpaired", "every one of the 1 records has label=true"),
    ([{"text": "a"}], "prompt", "has columns text; cannot tell"),
])
def test_bad_input_names_file_row_and_field(tmp_path, tok, rows, need, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl.*" + message):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_data(DataSettings(path), need, tok, 0)


def test_chat_row_without_a_template_names_the_chat_template_option(tmp_path):
    plain = tiny_tokenizer(WORDS)
    plain.chat_template = None
    rows = [{"prompt": [chat("user", "a")], "chosen": [chat("assistant", "b")], "rejected": [chat("assistant", "c")]}]
    with pytest.raises(DataError, match=r"chat\.jsonl, line 1: field 'prompt' holds chat messages.*--chat-template FILE"):
        prepare(plain, write_jsonl(tmp_path / "chat.jsonl", rows), "comparison")


def test_a_missing_source_or_uncached_dataset_name_is_a_data_error(tmp_path, tok):
    with pytest.raises(DataError, match="no such file"):
        prepare(tok, tmp_path / "nope.jsonl", "comparison")
    with pytest.raises(DataError, match="not a file or directory, nor a dataset in the local Hugging Face cache"):
        prepare(tok, "someone/not-cached-anywhere", "comparison")


def test_a_cached_dataset_name_is_read_offline_from_its_train_split(tok, monkeypatch):
    import huggingface_hub.constants as hub

    calls = []

    def cached(name, **kw):  # stands in for the local HF cache
        calls.append((name, kw, datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS),
                                     "test": datasets.Dataset.from_list(PAIRS[:1])})

    monkeypatch.setattr(datasets, "load_dataset", cached)
    data = prepare(tok, "someone/prefs", "comparison")
    assert len(data.train) == 3 and data.report["source"] == "someone/prefs"
    (name, kw, offline, hub_offline), *_ = calls
    assert name == "someone/prefs" and offline and hub_offline  # nothing may download
    assert kw == {"download_mode": "reuse_dataset_if_exists"}

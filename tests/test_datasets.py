"""Dataset loaders, validation messages, built-in sets, and the shared real datasets."""

import json

import pytest

from steerlab import datasets
from steerlab.datasets import DatasetError


@pytest.mark.parametrize("name", datasets.BUILTIN)
def test_builtin_sets_are_large_and_split(name):
    pairs = datasets.builtin(name)
    assert len(pairs) >= 150
    train, test = datasets.split(pairs)
    assert len(train) == len(test) == len(pairs) // 2
    assert not {(p.prompt, p.positive) for p in train} & {(p.prompt, p.positive) for p in test}
    if name != "weddings":
        assert all(p.is_multiple_choice for p in pairs)
        firsts = [p.positive for p in pairs]
        assert 0.4 < firsts.count("(A)") / len(firsts) < 0.6  # the letter is not the behaviour


def test_shared_caa_and_mwe_formats(shared_data):
    caa = datasets.load(shared_data / "caa" / "sycophancy_test.json")
    assert len(caa) == 120 and all(p.is_multiple_choice for p in caa)
    xrisk = datasets.load(shared_data / "mwe" / "xrisk" / "survival-instinct.jsonl")
    assert all("<META_START>" not in p.prompt for p in xrisk)
    assert xrisk[0].positive in ("(A)", "(B)")
    persona = datasets.load(shared_data / "mwe" / "persona" / "narcissism.jsonl")
    assert persona[0].positive == "(A)" and persona[1].positive == "(A)"
    assert persona[2].positive == "(B)" and persona[3].positive == "(B)"
    assert "Choices:\n(A): " in persona[0].prompt


def test_malformed_items_name_file_line_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = {"question": "Q (A) x (B) y", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer_matching_behavior": ""}) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 2: field 'answer_matching_behavior'"):
        datasets.load(f)
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"line 2: not valid JSON"):
        datasets.load(f)
    g = tmp_path / "pairs.json"
    g.write_text(json.dumps([{"positive": "a", "negative": "b"}, {"positive": "a"}]))
    with pytest.raises(DatasetError, match=r"item 1: missing field 'negative'"):
        datasets.load(g)
    h = tmp_path / "other.jsonl"
    h.write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(DatasetError, match="unknown format"):
        datasets.load(h)
    with pytest.raises(DatasetError, match="No dataset file"):
        datasets.load(tmp_path / "missing.jsonl")


def test_read_char():
    assert datasets.read_char("(A)") == 1
    assert datasets.read_char(" (B)") == 2
    assert datasets.read_char("I love it. ") == 9

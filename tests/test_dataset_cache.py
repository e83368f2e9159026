"""Encoding in several processes gives the same split as one, a second load reads the cache, and a bad
line found by a worker is reported like any other, leaving no cache entry (bench/data_scale.py: 200k)."""
import json

import pytest

import data.dataset
from conftest import HOTEL, compose
from data.dataset import load_split
from data.errors import DataError
from data.templates import get_template
from models.loading import load_tokenizer


def _load(path, cache, *overrides):
    cfg = compose(f"data.train={path}", f"data.cache_dir={cache}", *overrides)
    return load_split(cfg.data.train, cfg.data, get_template(cfg.model.template, cfg.model.tool_format),
                      load_tokenizer(cfg.model), 2048)


def test_parallel_encoding_equals_one_process_and_is_cached(tmp_path, monkeypatch):
    path = tmp_path / "train.jsonl"
    path.write_text("".join((HOTEL / "train.jsonl").open(encoding="utf-8").readlines()[:40]), encoding="utf-8")
    one = _load(path, tmp_path / "one", "data.num_proc=1")
    two = _load(path, tmp_path / "two", "data.num_proc=2")
    assert len(list((tmp_path / "two").glob("*/encoded_*.arrow"))) == 2  # really two workers
    assert one.docs.to_dict() == two.docs.to_dict() and one.rows == two.rows
    assert [one.row(i)["labels"].tolist() for i in range(len(one))] == [two.row(i)["labels"].tolist()
                                                                        for i in range(len(two))]

    def no_encoding(*args, **kwargs):
        raise AssertionError("the second load encoded again")

    monkeypatch.setattr(data.dataset, "_encode_into", no_encoding)
    monkeypatch.setattr(data.dataset, "pack_documents", no_encoding)
    again = _load(path, tmp_path / "two", "data.num_proc=2")
    assert again.rows == two.rows and again.docs.to_dict() == two.docs.to_dict()


def test_a_worker_reports_the_first_bad_line_and_leaves_no_cache(tmp_path):
    lines = (HOTEL / "train.jsonl").open(encoding="utf-8").readlines()[:12]
    nothing_to_train = json.dumps({"messages": [{"role": "user", "content": "你好"}]}) + "\n"
    lines[3] = lines[9] = nothing_to_train  # each worker's half holds one; line 4 comes first
    path = tmp_path / "train.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:4: field 'messages' nothing to train on"):
        _load(path, tmp_path / "cache", "data.num_proc=2")
    assert not list((tmp_path / "cache").rglob("*.arrow"))

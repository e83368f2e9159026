"""Data tools: seed 001's CSV conversion byte for byte, format conversion, dedup, deterministic 8:1:1 split."""
import csv
import json
import subprocess
import sys

import pytest

from conftest import HOTEL, ROOT
from data.formats import read_conversations
from data.prepare import PrepareConfig, deduplicate, prepare, split_records, to_messages

ROWS = [("不交房电费多出由谁承担？", "问题全文一", "按照约定处理，协商不成可以委托律师处理。", "1"),
        ("离婚后孩子抚养费怎么算？", "问题全文二", "一般为月总收入的百分之二十至三十。\n具体看情况。", "0"),
        ("不交房电费多出由谁承担？", "问题全文一", "按照约定处理，协商不成可以委托律师处理。", "1")]


def seed_001(path):
    """What seed 001's script writes: title → user, reply → assistant, one JSON object a line."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            entry = {"conversations": [{"role": "user", "content": row["title"]},
                                       {"role": "assistant", "content": row["reply"]}]}
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
    return lines


@pytest.fixture
def qa_csv(tmp_path):
    path = tmp_path / "qa.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("title", "question", "reply", "is_best"), *ROWS])
    return path


def test_csv_to_conversations_matches_seed_001_byte_for_byte(qa_csv, tmp_path):
    out = tmp_path / "train.json"
    counts = prepare(PrepareConfig(input=str(qa_csv), output=str(out), dedup=False))
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == seed_001(qa_csv)
    assert counts == {"read": 3, "written": 3}


def test_is_best_filter_and_duplicate_removal(qa_csv, tmp_path):
    out = tmp_path / "best.jsonl"
    counts = prepare(PrepareConfig(input=str(qa_csv), output=str(out), filter_column="is_best"))
    assert counts == {"read": 2, "filtered_out": 1, "duplicates_removed": 1, "written": 1}
    assert out.read_text(encoding="utf-8") == seed_001(qa_csv)[0]
    assert deduplicate([{"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 2}]) == [{"a": 1, "b": 2}, {"a": 2}]


def test_split_is_8_1_1_deterministic_disjoint_and_complete():
    records = [{"i": i} for i in range(101)]
    parts = split_records(records, [8, 1, 1], seed=42)
    assert [len(p) for p in parts] == [81, 10, 10]
    assert sorted(r["i"] for p in parts for r in p) == list(range(101))
    assert parts == split_records(records, [8, 1, 1], seed=42)
    assert parts != split_records(records, [8, 1, 1], seed=43)
    assert [len(p) for p in split_records(records[:10], [8, 1, 1], seed=0)] == [8, 1, 1]
    with pytest.raises(ValueError, match="split"):
        split_records(records, [1], seed=0)


def test_messages_output_reads_back_to_the_same_conversations(tmp_path):
    source = tmp_path / "hotel.jsonl"
    source.write_text("".join((HOTEL / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:30]),
                      encoding="utf-8")
    openai = {"messages": [{"role": "user", "content": "找两家"}, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "search_hotels", "arguments": {"type": "经济型"}}},
        {"function": {"name": "search_hotels", "arguments": {"type": "豪华型"}}}]},
        {"role": "tool", "content": "[]"}, {"role": "tool", "content": "not json", "name": "other"},
        {"role": "assistant", "content": "都没有。"}]}
    with source.open("a", encoding="utf-8") as f:
        f.write(json.dumps(openai, ensure_ascii=False) + "\n")
    original = read_conversations(source, "messages")
    out = tmp_path / "out.jsonl"
    prepare(PrepareConfig(input=str(source), output=str(out), format="messages", to="messages"))
    again = read_conversations(out, "messages")
    assert [c.messages for c in again] == [c.messages for c in original]
    assert to_messages(original[0])["messages"][1]["role"] == "search"


def test_cli_converts_sharegpt_dedups_splits_and_prints_counts(tmp_path):
    record = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "您好"}]}
    lines = [json.dumps(record | {"conversations": record["conversations"] + [
        {"from": "human", "value": f"问题{i}"}, {"from": "gpt", "value": f"回答{i}"}]}, ensure_ascii=False)
        for i in range(18)]
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(lines + lines[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    run = subprocess.run([sys.executable, "launch/prepare_data.py", f"input={source}", "format=sharegpt",
                          "to=messages", f"output={out}", "split=[8,1,1]"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "read: 20, duplicates removed: 2, train: 14, dev: 2, test: 2" in run.stdout
    assert [len((out / f"{n}.jsonl").read_text().splitlines()) for n in ("train", "dev", "test")] == [14, 2, 2]
    assert len(read_conversations(out / "train.jsonl", "messages")) == 14

"""Bad input stops the run before training, names file, line and field, and leaves nothing behind."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose
from trainer.run import run_training

GOOD_TURNS = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好！"}]
BAD_LINES = {
    "invalid_json": ('{"messages": [', "messages"),  # field named only when JSON parsed
    "unknown_role": (json.dumps({"messages": [{"role": "bot", "content": "hi"}]}), "messages[0].role"),
    "missing_content": (json.dumps({"messages": [{"role": "user"}, GOOD_TURNS[1]]}), "messages[0].content"),
    "non_string_content": (json.dumps({"messages": [{"role": "user", "content": 3}, GOOD_TURNS[1]]}),
                           "messages[0].content"),
    "search_without_object": (json.dumps({"messages": [GOOD_TURNS[0], {"role": "search", "arguments": "x"}]}),
                              "messages[1].arguments"),
    "return_without_list": (json.dumps({"messages": [GOOD_TURNS[0], {"role": "search", "arguments": {}},
                                                     {"role": "return", "records": {}}]}), "messages[2].records"),
    "empty_conversation": (json.dumps({"messages": []}), "messages"),
    "nothing_to_train": (json.dumps({"messages": [GOOD_TURNS[0]]}), "messages"),
}


def run_and_capture(capsys, *overrides):
    with pytest.raises(SystemExit) as exit_info:
        run_training(compose(*overrides))
    assert exit_info.value.code != 0
    return capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_named_and_nothing_is_written(case, tmp_path, capsys):
    bad, field = BAD_LINES[case]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": GOOD_TURNS}, ensure_ascii=False) + "\n" + bad + "\n", encoding="utf-8")
    cache, out = tmp_path / "cache", tmp_path / "run"
    err = run_and_capture(capsys, f"data.train={path}", "data.dev=null", f"data.cache_dir={cache}",
                          f"output_dir={out}", "data.tools=[]")
    assert f"{path}:2" in err
    if case != "invalid_json":
        assert f"field '{field}'" in err
    assert err.count("error:") == 1 and "Traceback" not in err  # one clear line
    assert not out.exists() and not list(cache.rglob("*.arrow"))  # no checkpoint, no cache entry


def test_csv_missing_mapped_column(tmp_path, capsys):
    path = tmp_path / "qa.csv"
    path.write_text("title,question,answer\nt,q,a\n", encoding="utf-8")
    err = run_and_capture(capsys, "data=legal_csv", f"data.train={path}", f"output_dir={tmp_path / 'run'}")
    assert f"{path}:1" in err and "'reply'" in err
    assert not (tmp_path / "run").exists()


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    err = run_and_capture(capsys, f"data.train={missing}", f"output_dir={tmp_path / 'run'}")
    assert str(missing) in err and "not found" in err


def test_cli_reports_bad_input_and_unknown_keys_without_traceback(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"messages": [{"role": "bot", "content": "x"}]}\n', encoding="utf-8")
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    run = subprocess.run([sys.executable, "launch/train.py", f"data.train={bad}", f"output_dir={tmp_path / 'o'}"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode != 0 and f"{bad}:1: field 'messages[0].role'" in run.stderr
    assert "Traceback" not in run.stderr
    typo = subprocess.run([sys.executable, "launch/train.py", "train.sqe_len=5"], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    assert typo.returncode != 0 and "sqe_len" in typo.stderr

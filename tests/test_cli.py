"""The entry points as users run them: python, torchrun, preview."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, small_hotel

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_train_entry_point_trains_evaluates_and_saves(launcher, tmp_path):
    overrides = small_hotel(tmp_path, lines=12) + ["train.max_steps=2"]
    cmd = ([sys.executable] if launcher == "python" else [str(TORCHRUN), "--nproc_per_node", "1"])
    run = subprocess.run(cmd + ["launch/train.py", *overrides], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "run"
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "step_2" / "trainer_state.pt").is_file()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "train/loss" in e] == [1, 2]
    assert "eval/loss" in events[-1]
    assert "packing efficiency" in run.stdout + run.stderr


def test_preview_json_marks_exactly_the_assistant_spans(tmp_path):
    run = subprocess.run([sys.executable, "launch/preview.py", "preview.json=true", "preview.samples=2",
                          f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 2
    first = json.loads((ROOT / "data/assets/hotel/train.jsonl").open(encoding="utf-8").readline())["messages"]
    replies = [m["content"] for m in first if m["role"] == "assistant"]
    trained = records[0]["trained"]
    assert len(trained) == sum(m["role"] in ("assistant", "search") for m in first)
    assert all(span.endswith("<|im_end|>") for span in trained)
    assert [t.removesuffix("<|im_end|>") for t in trained if "<tool_call>" not in t] == replies
    assert "<tool_call>" in trained[0] and "北京亚太花园酒店" in trained[0]
    assert "你好，请问北京亚太花园酒店是那种类型的酒店" in records[0]["text"]
    assert not any("你好，请问" in t for t in trained)
    assert "packing efficiency" in run.stderr

"""The chat: hotel database semantics, a scripted model's calls and errors, and the CLI on the tiny model."""
import json
import subprocess
import sys

import pytest

from conftest import HOTEL, ROOT
from data.dataset import load_tools
from data.templates import get_template
from eval.chat import ChatSession
from eval.generate import TemplateGenerator
from eval.hotel_db import QueryError, load_db, query

DB = [
    {"name": "如家酒店(北京站店)", "type": "经济型", "facilities": ["早餐服务免费", "wifi"], "price": 300.0, "rating": 4.5},
    {"name": "北京饭店", "type": "豪华型", "facilities": ["早餐服务", "健身房"], "price": None, "rating": 4.8},
    {"name": "如家酒店(西单店)", "type": "经济型", "facilities": ["wifi"], "price": 500.0, "rating": 4.0},
    {"name": "如家精选", "type": "经济型", "facilities": ["wifi"], "price": 200.0, "rating": 3.9},
    {"name": "如家快捷", "type": "经济型", "facilities": ["wifi"], "price": 250.0, "rating": 4.1},
]


def names(arguments, limit=3):
    return [h["name"] for h in query(DB, arguments, limit)]


def test_query_semantics():
    assert names({"name": "北京"}) == ["如家酒店(北京站店)", "北京饭店"]  # name substring
    assert names({"type": "经济"}) == []  # type is exact
    assert names({"facilities": ["早餐服务"]}) == ["如家酒店(北京站店)", "北京饭店"]  # substring of a facility
    assert names({"facilities": ["早餐服务", "wifi"]}) == ["如家酒店(北京站店)"]  # every facility
    assert names({"price_range_lower": 300, "price_range_upper": 500}) == ["如家酒店(北京站店)", "如家酒店(西单店)"]
    assert "北京饭店" not in names({"price_range_upper": 10000}, None)  # no price fails any price constraint
    assert names({"rating_range_lower": 4.5, "rating_range_upper": 4.8}) == ["如家酒店(北京站店)", "北京饭店"]
    assert len(names({"type": "经济型"})) == 3 and len(names({"type": "经济型"}, None)) == 4  # at most 3


@pytest.mark.parametrize("arguments", [{"city": "北京"}, {"price_range_lower": "300"}, {"facilities": "wifi"},
                                       {"rating_range_lower": True}])
def test_malformed_arguments_raise_query_error(arguments):
    with pytest.raises(QueryError):
        query(DB, arguments)


def test_every_return_in_the_data_satisfies_its_search():
    db = load_db(HOTEL / "hotel_db.json")
    searches = 0
    for line in (HOTEL / "test.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        for search, result in zip(messages, messages[1:]):
            if search["role"] == "search":
                searches += 1
                found = {h["hotel_id"] for h in query(db, search["arguments"], None)}
                assert {h["hotel_id"] for h in result["records"]} <= found
    assert searches == 84


class Scripted:
    """A fake model: returns the next scripted turn and remembers every prompt it was given."""

    def __init__(self, *turns):
        self.turns, self.prompts = list(turns), []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.turns.pop(0)


def session(model, tool_format="native", max_calls=3):
    generate = TemplateGenerator(get_template("chatml", tool_format), lambda prompts, desc: list(map(model, prompts)))
    return ChatSession(generate, load_tools([str(HOTEL / "search_hotels.json")]), DB, "你是一个酒店预订助手。", max_calls)


def test_a_call_is_run_and_its_records_are_fed_back_as_an_observation():
    model = Scripted('<tool_call>\n{"name": "search_hotels", "arguments": {"name": "北京饭店"}}\n</tool_call>',
                     "北京饭店不错。")
    events = session(model).send("有北京饭店吗？")
    assert [e.kind for e in events] == ["call", "records", "assistant"]
    assert events[1].records == [DB[1]] and events[2].text == "北京饭店不错。"
    observation = "<tool_response>\n" + json.dumps([DB[1]], ensure_ascii=False) + "\n</tool_response>"
    assert observation in model.prompts[1] and model.prompts[1].endswith("<|im_start|>assistant\n")


def test_custom_format_calls_named_search_run_search_hotels():
    model = Scripted('search\n{"type": "豪华型"}', "assistant\n有的。")
    chat = session(model, tool_format="custom")
    events = chat.send("有豪华型的吗？")
    assert [e.kind for e in events] == ["call", "records", "assistant"] and events[1].records == [DB[1]]
    assert "<|im_start|>return\n" in model.prompts[1]


def test_malformed_calls_get_an_error_observation_and_never_crash():
    model = Scripted("<tool_call>\n{not json\n</tool_call>",
                     '<tool_call>\n{"name": "search_hotels", "arguments": {"city": "北京"}}\n</tool_call>',
                     '<tool_call>\n{"name": "book_room", "arguments": {}}\n</tool_call>',
                     "抱歉，我没查到。")
    events = session(model).send("帮我找酒店")
    assert [e.kind for e in events] == ["call", "error", "call", "error", "call", "error", "assistant"]
    assert "malformed" in events[1].text and "city" in events[3].text and "book_room" in events[5].text
    assert '{"error": "malformed function call' in model.prompts[1]
    assert "unknown argument 'city'" in model.prompts[2]


def test_a_model_that_keeps_calling_is_stopped_after_max_calls():
    loop = '<tool_call>\n{"name": "search_hotels", "arguments": {}}\n</tool_call>'
    chat = session(Scripted(loop, loop, loop), max_calls=2)
    events = chat.send("找酒店")
    assert [e.kind for e in events][-1] == "error" and sum(e.kind == "call" for e in events) == 2
    chat.reset()
    assert [m.role for m in chat.messages] == ["system"]


def test_chat_script_runs_non_interactively_on_the_tiny_model(tmp_path):
    script = tmp_path / "script.txt"
    script.write_text("你好，帮我找一家经济型酒店\n\n谢谢\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "launch/chat.py", f"chat.script={script}", "eval.max_new_tokens=8"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line for line in lines if line.startswith("user: ")] == ["user: 你好，帮我找一家经济型酒店", "user: 谢谢"]
    assert sum(line.startswith(("assistant: ", "error: ")) for line in lines) == 2


def test_interactive_chat_reads_until_exit_and_resets(tmp_path):
    from hydra import compose, initialize_config_dir

    from eval.run import run_chat
    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="inference", overrides=["eval.max_new_tokens=4"])
    typed, shown = iter(["你好", "/reset", "   ", "有酒店吗", "/exit", "never read"]), []
    session = run_chat(cfg, read_line=lambda prompt: next(typed), write=shown.append)
    assert next(typed) == "never read"
    assert [m.role for m in session.messages][:2] == ["system", "user"]
    assert session.messages[1].content == "有酒店吗"  # /reset dropped the first exchange
    assert sum(line.startswith(("assistant: ", "error: ")) for line in shown) == 2

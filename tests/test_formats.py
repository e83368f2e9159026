import json
from pathlib import Path

import pytest

from data.conversation import Message, ToolCall
from data.errors import DataError
from data.formats import FORMATS, read_conversations

ROOT = Path(__file__).resolve().parents[1]
HOTEL = ROOT / "data/assets/hotel/train.jsonl"
LEGAL = ROOT / "data/assets/legal/disc_law_eval_qa_1k.csv"


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def jsonl(tmp_path, *records, name="d.jsonl"):
    return write(tmp_path, name, "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
                                          for r in records) + "\n")


def raises_at(path, line, field, *args, **kwargs):
    """Read, expect a DataError located at path:line/field, and return it."""
    with pytest.raises(DataError) as info:
        read_conversations(path, *args, **kwargs)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    assert path.name in str(err) and (line is None or f":{line}:" in str(err))
    assert field is None or f"'{field}'" in str(err)
    return err


def roles(conv):
    return [m.kind for m in conv.messages]


# ---- good input --------------------------------------------------------------------------

def test_hotel_train_set():
    convs = read_conversations(HOTEL, "messages")
    raw = [json.loads(line) for line in HOTEL.read_text(encoding="utf-8").splitlines()]
    assert len(convs) == len(raw) == 622
    assert convs[0].source == f"{HOTEL}:1" and convs[-1].source == f"{HOTEL}:622"
    calls = results = 0
    for conv, rec in zip(convs, raw):
        assert len(conv.messages) == len(rec["messages"])
        for msg, src in zip(conv.messages, rec["messages"]):
            if src["role"] == "search":
                assert msg.role == "assistant" and msg.content == ""
                assert msg.tool_calls == (ToolCall("search_hotels", src["arguments"]),)
                assert isinstance(msg.tool_calls[0].arguments, dict)
                calls += 1
            elif src["role"] == "return":
                assert msg.role == "tool" and msg.name == "search_hotels"
                assert json.loads(msg.content) == src["records"]
                results += 1
            else:
                assert msg == Message(src["role"], src["content"])
    assert calls == results == 712


def test_openai_tool_calls_with_string_arguments(tmp_path):
    rec = {"messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "Let me check twice.", "tool_calls": [
            {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}]},
        {"role": "tool", "name": "clock", "content": "12:00"},
        {"role": "assistant", "content": "21 degrees at noon."}]}
    [conv] = read_conversations(jsonl(tmp_path, rec), "messages")
    assert conv.messages == [
        Message("user", "weather in Paris?"),
        Message("assistant", tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)),
        Message("tool", '{"temp": 21}', name="get_weather"),
        Message("assistant", "Let me check twice."),
        Message("assistant", tool_calls=(ToolCall("get_time", {"tz": "CET"}),)),
        Message("tool", "12:00", name="clock"),
        Message("assistant", "21 degrees at noon.")]


def test_messages_search_name_and_result_without_call(tmp_path):
    rec = {"messages": [{"role": "return", "records": []},  # no preceding call: allowed
                        {"role": "search", "name": "find", "arguments": {"q": "x"}},
                        {"role": "return", "records": [{"名": "值"}]}]}
    [conv] = read_conversations(jsonl(tmp_path, rec), "messages")
    assert conv.messages == [Message("tool", "[]", name="search_hotels"),
                             Message("assistant", tool_calls=(ToolCall("find", {"q": "x"}),)),
                             Message("tool", '[{"名": "值"}]', name="find")]


def test_chatglm_with_metadata_calls_and_finetune_demo_tool(tmp_path):
    tools = [{"name": "get_weather", "parameters": {}}]
    rec = {"tools": tools, "conversations": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "天气?"},
        {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
        {"role": "observation", "content": "晴"},
        {"role": "assistant", "content": "晴天"},
        {"role": "tool", "name": "lookup", "parameters": {"k": 1}, "observation": {"v": 2}},
        {"role": "tool", "content": "again"},
        {"role": "assistant", "content": "好"}]}
    [conv] = read_conversations(jsonl(tmp_path, rec), "chatglm")
    assert conv.tools == tools
    assert conv.messages == [
        Message("system", "sys"), Message("user", "天气?"),
        Message("assistant", tool_calls=(ToolCall("get_weather", {"city": "北京"}),)),
        Message("tool", "晴", name="get_weather"), Message("assistant", "晴天"),
        Message("assistant", tool_calls=(ToolCall("lookup", {"k": 1}),)),
        Message("tool", '{"v": 2}', name="lookup"), Message("tool", "again", name="lookup"),
        Message("assistant", "好")]


ALPACA = [{"instruction": "Translate", "input": "hola", "output": "hello", "system": "be brief",
           "history": [["hi", "hello!"], ["how are you", "fine"]]},
          {"instruction": "Say hi", "input": "", "output": "hi"}]
ALPACA_EXPECTED = [
    [Message("system", "be brief"), Message("user", "hi"), Message("assistant", "hello!"),
     Message("user", "how are you"), Message("assistant", "fine"),
     Message("user", "Translate\n\nhola"), Message("assistant", "hello")],
    [Message("user", "Say hi"), Message("assistant", "hi")]]


def test_alpaca_array(tmp_path):
    path = write(tmp_path, "a.json", json.dumps(ALPACA, indent=2))
    convs = read_conversations(path, "alpaca")
    assert [c.messages for c in convs] == ALPACA_EXPECTED
    lines = path.read_text().splitlines()
    second = [c.source for c in convs][1]
    assert second.startswith(f"{path}:") and lines[int(second.rsplit(":", 1)[1]) - 1].strip() == "{"
    assert convs[0].source == f"{path}:2"


def test_alpaca_jsonl(tmp_path):
    convs = read_conversations(jsonl(tmp_path, *ALPACA), "alpaca")
    assert [c.messages for c in convs] == ALPACA_EXPECTED
    assert convs[1].source.endswith(":2")


def test_sharegpt_with_function_call_and_observation(tmp_path):
    tools = [{"name": "calc", "description": "math"}]
    rec = {"system": "tool user", "tools": json.dumps(tools), "conversations": [
        {"from": "human", "value": "1+1?"},
        {"from": "function_call", "value": '{"name": "calc", "arguments": {"expr": "1+1"}}'},
        {"from": "observation", "value": "2"},
        {"from": "gpt", "value": "2"}]}
    [conv] = read_conversations(jsonl(tmp_path, rec), "sharegpt")
    assert conv.tools == tools
    assert conv.messages == [Message("system", "tool user"), Message("user", "1+1?"),
                             Message("assistant", tool_calls=(ToolCall("calc", {"expr": "1+1"}),)),
                             Message("tool", "2", name="calc"), Message("assistant", "2")]


def test_legal_csv():
    convs = read_conversations(LEGAL, "csv", columns={"user": "question", "assistant": "reply"},
                               filter_column="is_best")
    assert len(convs) == 1000
    assert roles(convs[0]) == ["user", "assistant"]
    assert convs[0].messages[0].content.startswith("下列各项中，可以成为法律关系主体的有哪些？\nA. 无国籍人")
    assert convs[0].messages[1].content.startswith("答案：ABCD")
    assert convs[0].source == f"{LEGAL}:2" and convs[-1].source == f"{LEGAL}:1001"


def test_csv_rows_counted_past_embedded_newlines(tmp_path):
    path = write(tmp_path, "q.csv", 'ok,sys,q,a\n'
                                    '1,s,"line one\nline two\nline three",answer\n'
                                    '\n'
                                    '0,s,skipped,x\n'
                                    'Yes,s,kept,y\n'
                                    '1,s,short\n')
    cols = {"system": "sys", "user": "q", "assistant": "a"}
    raises_at(path, 6, "a", "csv", columns=cols, filter_column="ok")
    path.write_text(path.read_text().replace("1,s,short\n", ""))
    convs = read_conversations(path, "csv", columns=cols, filter_column="ok")
    assert [c.messages for c in convs] == [
        [Message("system", "s"), Message("user", "line one\nline two\nline three"), Message("assistant", "answer")],
        [Message("system", "s"), Message("user", "kept"), Message("assistant", "y")]]
    assert [c.source for c in convs] == [f"{path}:2", f"{path}:5"]
    assert len(read_conversations(path, "csv", columns=cols)) == 3


def test_defaults_apply_only_where_missing(tmp_path):
    own_tools = [{"name": "own"}]
    path = jsonl(tmp_path,
                 {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
                 {"tools": own_tools, "messages": [{"role": "system", "content": "mine"},
                                                   {"role": "user", "content": "u"}]})
    default_tools = [{"name": "default"}]
    plain, own = read_conversations(path, "messages", tools=default_tools, system="default sys")
    assert plain.tools == default_tools and plain.messages[0] == Message("system", "default sys")
    assert own.tools == own_tools and [m.content for m in own.messages] == ["mine", "u"]
    assert read_conversations(path, "messages")[0].tools == []


def test_bom_and_crlf_accepted(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "u"}]})
    path = write(tmp_path, "b.jsonl", f"{line}\r\n\r\n{line}\r\n", encoding="utf-8-sig")
    convs = read_conversations(path, "messages")
    assert [c.source for c in convs] == [f"{path}:1", f"{path}:3"]


# ---- bad input ---------------------------------------------------------------------------

USER = {"role": "user", "content": "u"}

BAD_JSONL = {
    "invalid json": ("messages", ['{"messages": [}'], 1, None, "invalid JSON: Expecting value"),
    "not an object": ("messages", [{"messages": [USER]}, [1]], 2, None, "must be a JSON object, got array"),
    "messages missing": ("messages", [{"msgs": []}], 1, "messages", "missing"),
    "messages not list": ("messages", [{"messages": "hi"}], 1, "messages", "must be a list, got string"),
    "turn not object": ("messages", [{"messages": [USER, "x"]}], 1, "messages[1]", "must be an object"),
    "empty conversation": ("messages", [{"messages": [USER]}, {"messages": []}], 2, "messages", "empty"),
    "unknown role": ("messages", [{"messages": [USER, {"role": "bot", "content": "x"}]}], 1,
                     "messages[1].role", "unknown role 'bot'; allowed: system, user, assistant, tool, search"),
    "missing role": ("messages", [{"messages": [{"content": "x"}]}], 1, "messages[0].role", "missing; allowed"),
    "missing content": ("messages", [{"messages": [USER, USER, USER, {"role": "assistant"}]}], 1,
                        "messages[3].content", "missing"),
    "non-string content": ("messages", [{"messages": [{"role": "user", "content": ["x"]}]}], 1,
                           "messages[0].content", "must be a string, got array"),
    "search without arguments": ("messages", [{"messages": [USER, {"role": "search"}]}], 1,
                                 "messages[1].arguments", "missing"),
    "search non-dict arguments": ("messages", [{"messages": [USER, USER, {"role": "search", "arguments": [1]}]}], 1,
                                  "messages[2].arguments", "must be a JSON object, got array"),
    "return without records": ("messages", [{"messages": [{"role": "return", "records": {"a": 1}}]}], 1,
                               "messages[0].records", "must be a list, got object"),
    "string arguments not json": ("messages", [{"messages": [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}], 1,
        "messages[0].tool_calls[0].function.arguments", "invalid JSON"),
    "string arguments not object": ("messages", [{"messages": [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}], 1,
        "messages[0].tool_calls[0].function.arguments", "must be a JSON object, got array"),
    "tool call without function": ("messages", [{"messages": [{"role": "assistant", "tool_calls": [{}]}]}], 1,
                                   "messages[0].tool_calls[0].function", "missing"),
    "bad tools": ("messages", [{"tools": {"name": "f"}, "messages": [USER]}], 1, "tools", "list of"),
    "tools string not json": ("messages", [{"tools": "[oops", "messages": [USER]}], 1, "tools", "invalid JSON"),
    "first error wins": ("messages", [{"messages": [USER]}, {"messages": [{"role": "x"}]}, "{bad"], 2,
                         "messages[0].role", "unknown role"),
    "chatglm unknown role": ("chatglm", [{"conversations": [{"role": "human", "content": "x"}]}], 1,
                             "conversations[0].role", "allowed: system, user, assistant, observation, tool"),
    "chatglm metadata call not json": ("chatglm", [{"conversations": [
        USER, {"role": "assistant", "metadata": "f", "content": "not json"}]}], 1,
        "conversations[1].content", "invalid JSON"),
    "chatglm tool without observation": ("chatglm", [{"conversations": [
        {"role": "tool", "name": "f", "parameters": {}}]}], 1, "conversations[0].observation", "missing"),
    "chatglm observation not string": ("chatglm", [{"conversations": [{"role": "observation", "content": 3}]}], 1,
                                       "conversations[0].content", "must be a string, got number"),
    "alpaca missing output": ("alpaca", [{"instruction": "i", "output": "o"}, {"instruction": "i"}], 2,
                              "output", "missing"),
    "alpaca bad history": ("alpaca", [{"instruction": "i", "output": "o", "history": [["a", "b"], ["a"]]}], 1,
                           "history[1]", "pair of strings"),
    "sharegpt unknown from": ("sharegpt", [{"conversations": [{"from": "bot", "value": "x"}]}], 1,
                              "conversations[0].from", "allowed: system, human, user, gpt"),
    "sharegpt call without arguments": ("sharegpt", [{"conversations": [
        {"from": "function_call", "value": '{"name": "f"}'}]}], 1, "conversations[0].value.arguments", "missing"),
    "sharegpt missing value": ("sharegpt", [{"conversations": [{"from": "gpt"}]}], 1,
                               "conversations[0].value", "missing"),
}


@pytest.mark.parametrize("case", BAD_JSONL)
def test_bad_jsonl(tmp_path, case):
    fmt, records, line, field, problem = BAD_JSONL[case]
    err = raises_at(jsonl(tmp_path, *records), line, field, fmt)
    assert problem in err.problem


def test_bad_alpaca_array_item_names_index_and_line(tmp_path):
    items = [{"instruction": "i", "output": "o"}] * 3 + [{"instruction": "i", "output": 5}]
    path = write(tmp_path, "a.json", json.dumps(items, indent=1))
    err = raises_at(path, 14, "[3].output", "alpaca")
    assert "must be a string, got number" in err.problem
    path = write(tmp_path, "b.json", json.dumps(items))  # one line: the index locates it
    raises_at(path, 1, "[3].output", "alpaca")


def test_bad_json_array_syntax(tmp_path):
    path = write(tmp_path, "a.json", '[\n  {"instruction": "i", "output": "o"},\n  {"instruction" "i"}\n]')
    err = raises_at(path, 3, None, "alpaca")
    assert "invalid JSON: Expecting ':' delimiter" in err.problem


def test_missing_file(tmp_path):
    err = raises_at(tmp_path / "nope.jsonl", None, None, "messages")
    assert err.problem == "file not found"


def test_not_utf8(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(b'{"messages": []}\n' + '{"messages": "中文"}\n'.encode("gbk"))
    raises_at(path, 2, None, "messages")


def test_csv_missing_mapped_column(tmp_path):
    path = write(tmp_path, "q.csv", "title,question,answer\nt,q,a\n")
    err = raises_at(path, 1, "reply", "csv", columns={"user": "question", "assistant": "reply"})
    assert "not in the header" in err.problem


def test_csv_missing_filter_column(tmp_path):
    path = write(tmp_path, "q.csv", "question,reply\nq,a\n")
    raises_at(path, 1, "is_best", "csv", columns={"user": "question", "assistant": "reply"}, filter_column="is_best")


def test_unknown_format_and_misused_options(tmp_path):
    with pytest.raises(ValueError, match="allowed: messages, chatglm, alpaca, sharegpt, csv"):
        read_conversations(HOTEL, "json")
    assert FORMATS == ("messages", "chatglm", "alpaca", "sharegpt", "csv")
    with pytest.raises(ValueError, match="csv"):
        read_conversations(HOTEL, "messages", columns={"user": "q"})
    with pytest.raises(ValueError, match="user and assistant"):
        read_conversations(LEGAL, "csv", columns={"user": "question"})

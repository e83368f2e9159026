"""Readers that turn each supported file format into `Conversation`s.

Every input problem is raised as a `DataError` naming file, line and field, so a bad
record stops the run before any work instead of surfacing as a shape error mid-epoch.
Files are UTF-8 (a BOM is accepted). The JSON formats may be JSONL (one record a line,
blank lines skipped) or a single JSON array (first non-space character `[`); an array
item is located by the line it starts on and its index (`[12].output`).

Accepted shapes (any JSON record may also carry `system`, a string prepended as the
system turn, and `tools`, a list of OpenAI-style function schemas or a JSON string
holding one):

- `messages`: `{"messages": [...]}`. Roles `system`/`user`/`assistant` need a string
  `content`. Function calls come either as our `search` turn (`arguments`: object;
  optional `name`, default `search_hotels`) followed by a `return` turn (`records`: list,
  stored as JSON text), or OpenAI style: an `assistant` turn with `tool_calls:
  [{"function": {"name", "arguments": object or JSON string}}]` (any text `content` there
  becomes a reply just before the call) and `tool` turns (`content` string, optional
  `name`).
- `chatglm`: `{"conversations": [...]}` with `role` system/user/assistant/observation/tool
  and string `content`. An `assistant` turn with `metadata` is a ChatGLM3 call: metadata
  names the function, `content` is the JSON arguments object. A `tool` turn with
  `parameters` is the ChatGLM3 finetune_demo shape (`name`, `parameters`, `observation`):
  a call plus its result. Otherwise `observation`/`tool` is the function's result.
- `alpaca`: `instruction` (string), optional `input` (appended after a blank line),
  `output` (string), optional `history` of `[user, assistant]` string pairs (earlier turns).
- `sharegpt`: `{"conversations": [{"from", "value"}]}` with `from` system, human/user,
  gpt/assistant, function_call (value: JSON `{"name", "arguments"}`), observation/tool.
- `csv`: `columns` maps `user`, `assistant` and optionally `system` to header names;
  each row is one exchange. Line numbers count CSV rows (header = 1), not physical lines.

A result turn without `name` takes the name of the most recent call. Whether a
conversation has anything to train on is checked later: it depends on `data.train_on`.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from data.conversation import Conversation, Message, ToolCall
from data.errors import DataError

FORMATS = ("messages", "chatglm", "alpaca", "sharegpt", "csv")

_DEFAULT_CALL = "search_hotels"  # the hotel set's `search` turns name no function
_TRUE = {"1", "true", "yes"}
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class _At:
    """Where a record sits, so every error names file, line and field."""

    path: Path
    line: int
    item: int | None = None  # index in a top-level JSON array

    def error(self, field: str | None, problem: str) -> DataError:
        if self.item is not None:
            field = f"[{self.item}]" + (f".{field}" if field else "")
        return DataError(str(self.path), self.line, field, problem)


class _Turns:
    """Messages being built; remembers the last call so a result without a name gets one."""

    def __init__(self, last_call: str | None = None):
        self.messages: list[Message] = []
        self.last_call = last_call

    def add(self, role: str, content: str) -> None:
        self.messages.append(Message(role, content))

    def call(self, *calls: ToolCall) -> None:
        self.messages.append(Message("assistant", tool_calls=calls))
        self.last_call = calls[-1].name

    def result(self, content: str, name: str | None = None) -> None:
        self.messages.append(Message("tool", content, name=name or self.last_call))


# ---- field checks shared by all readers -------------------------------------------------

def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _bad(obj: dict, key: str, want: str, value: Any) -> str:
    return f"must be {want}, got {_kind(value)}" if key in obj else f"missing (must be {want})"


def _text(obj: dict, key: str, at: _At, base: str = "", optional: bool = False) -> str | None:
    """A string member: the one check behind every text field."""
    value = obj.get(key)
    if isinstance(value, str) or (optional and value is None):
        return value
    raise at.error(_field(base, key), _bad(obj, key, "a string", value))


def _list(obj: dict, key: str, at: _At, base: str = "", optional: bool = False) -> list:
    value = obj.get(key)
    if isinstance(value, list) or (optional and value is None):
        return value or []
    raise at.error(_field(base, key), _bad(obj, key, "a list", value))


def _decoded(value: Any, at: _At, field: str) -> Any:
    """The value, or the JSON a string holds (OpenAI sends arguments as text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise at.error(field, f"invalid JSON: {e}") from None


def _object(obj: dict, key: str, at: _At, base: str = "") -> dict:
    """Call arguments: a JSON object, given as one or as text."""
    field = _field(base, key)
    value = _decoded(obj.get(key), at, field)
    if isinstance(value, dict):
        return value
    raise at.error(field, _bad(obj, key, "a JSON object", value))


def _tools(record: dict, at: _At) -> list[dict]:
    tools = _decoded(record.get("tools") or [], at, "tools")
    if isinstance(tools, list) and all(isinstance(t, dict) for t in tools):
        return tools
    raise at.error("tools", "must be a list of function schema objects")


def _turn_list(record: dict, key: str, at: _At) -> Iterator[tuple[str, dict]]:
    """The non-empty list of turns under `key`, each an object, with its field name."""
    turns = _list(record, key, at)
    if not turns:
        raise at.error(key, "empty conversation (no messages)")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise at.error(f"{key}[{i}]", f"must be an object, got {_kind(turn)}")
        yield f"{key}[{i}]", turn


def _role(turn: dict, key: str, allowed: tuple[str, ...] | dict, at: _At, base: str) -> str:
    role = turn.get(key)
    if isinstance(role, str) and role in allowed:
        return role
    what = f"unknown role {role!r}" if key in turn else "missing"
    raise at.error(_field(base, key), f"{what}; allowed: {', '.join(allowed)}")


# ---- one reader per format ---------------------------------------------------------------

def _from_messages(record: dict, at: _At) -> list[Message]:
    turns = _Turns(last_call=_DEFAULT_CALL)
    roles = ("system", "user", "assistant", "tool", "search", "return")
    for base, m in _turn_list(record, "messages", at):
        role = _role(m, "role", roles, at, base)
        if role == "search":
            name = _text(m, "name", at, base, optional=True) or _DEFAULT_CALL
            turns.call(ToolCall(name, _object(m, "arguments", at, base)))
        elif role == "return":
            turns.result(json.dumps(_list(m, "records", at, base), ensure_ascii=False))
        elif role == "tool":
            turns.result(_text(m, "content", at, base), _text(m, "name", at, base, optional=True))
        elif role == "assistant" and m.get("tool_calls"):
            text = _text(m, "content", at, base, optional=True)
            if text:
                turns.add("assistant", text)
            turns.call(*(_openai_call(c, at, f"{base}.tool_calls[{j}]")
                         for j, c in enumerate(_list(m, "tool_calls", at, base))))
        else:
            turns.add(role, _text(m, "content", at, base))
    return turns.messages


def _openai_call(call: Any, at: _At, base: str) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise at.error(f"{base}.function", "missing or not an object (expected {\"name\", \"arguments\"})")
    base += ".function"
    return ToolCall(_text(function, "name", at, base), _object(function, "arguments", at, base))


def _from_chatglm(record: dict, at: _At) -> list[Message]:
    turns = _Turns()
    roles = ("system", "user", "assistant", "observation", "tool")
    for base, m in _turn_list(record, "conversations", at):
        role = _role(m, "role", roles, at, base)
        if role == "assistant" and m.get("metadata"):
            turns.call(ToolCall(_text(m, "metadata", at, base), _object(m, "content", at, base)))
        elif role == "tool" and "parameters" in m:
            name = _text(m, "name", at, base)
            turns.call(ToolCall(name, _object(m, "parameters", at, base)))
            if "observation" not in m:
                raise at.error(f"{base}.observation", "missing (the tool's result)")
            result = m["observation"]
            turns.result(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False), name)
        elif role in ("observation", "tool"):
            turns.result(_text(m, "content", at, base), _text(m, "name", at, base, optional=True))
        else:
            turns.add(role, _text(m, "content", at, base))
    return turns.messages


def _from_alpaca(record: dict, at: _At) -> list[Message]:
    messages = []
    for j, pair in enumerate(_list(record, "history", at, optional=True)):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise at.error(f"history[{j}]", "must be a [user, assistant] pair of strings")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    prompt, extra = _text(record, "instruction", at), _text(record, "input", at, optional=True)
    messages.append(Message("user", f"{prompt}\n\n{extra}" if extra else prompt))
    messages.append(Message("assistant", _text(record, "output", at)))
    return messages


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "function_call": "call", "observation": "tool", "tool": "tool"}


def _from_sharegpt(record: dict, at: _At) -> list[Message]:
    turns = _Turns()
    for base, m in _turn_list(record, "conversations", at):
        role = _SHAREGPT_ROLES[_role(m, "from", _SHAREGPT_ROLES, at, base)]
        if role == "call":
            call, base = _object(m, "value", at, base), f"{base}.value"
            turns.call(ToolCall(_text(call, "name", at, base), _object(call, "arguments", at, base)))
        elif role == "tool":
            turns.result(_text(m, "value", at, base))
        else:
            turns.add(role, _text(m, "value", at, base))
    return turns.messages


_JSON_READERS: dict[str, Callable[[dict, _At], list[Message]]] = {
    "messages": _from_messages, "chatglm": _from_chatglm, "alpaca": _from_alpaca, "sharegpt": _from_sharegpt}


def _from_csv(path: Path, text: str, columns: dict[str, str], filter_column: str | None) -> list[Conversation]:
    roles = [r for r in ("system", "user", "assistant") if r in columns]
    if not {"user", "assistant"} <= columns.keys() <= set(roles):
        raise ValueError(f"csv columns must map user and assistant (optionally system) to columns, got {columns}")
    rows = _csv_rows(path, text)
    header = next(rows, (1, []))[1]
    wanted = [columns[r] for r in roles] + ([filter_column] if filter_column else [])
    for name in wanted:
        if name not in header:
            raise DataError(str(path), 1, name, f"column not in the header (has: {', '.join(header)})")
    index = {name: header.index(name) for name in wanted}
    conversations = []
    for line, row in rows:
        if not row:  # a blank line
            continue
        short = [name for name in wanted if index[name] >= len(row)]
        if short:
            raise DataError(str(path), line, short[0], f"missing: row has {len(row)} fields, header {len(header)}")
        if filter_column and row[index[filter_column]].strip().lower() not in _TRUE:
            continue
        messages = [Message(r, row[index[columns[r]]]) for r in roles]
        conversations.append(Conversation(messages, source=f"{path}:{line}"))
    return conversations


# ---- files -------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(str(path), raw.count(b"\n", 0, e.start) + 1, None, f"not UTF-8 text: {e.reason}") from None


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """Rows numbered as a spreadsheet shows them: a cell's embedded newlines don't count."""
    line = 0
    try:
        for line, row in enumerate(csv.reader(io.StringIO(text)), 1):
            yield line, row
    except csv.Error as e:
        raise DataError(str(path), line + 1, None, f"invalid CSV: {e}") from None


def _json_records(path: Path, text: str) -> Iterator[tuple[_At, Any]]:
    """Each item of a top-level JSON array with its location (JSONL: `_jsonl_records`)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
    for i, (line, item) in enumerate(zip(_item_lines(text), items)):
        yield _At(path, line, i), item


def _item_lines(text: str) -> list[int]:
    """The line each item of a valid top-level JSON array starts on."""
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos, seen, line, lines = gap.match(text, text.index("[") + 1).end(), 0, 1, []
    while text[pos] != "]":
        line, seen = line + text.count("\n", seen, pos), pos
        lines.append(line)
        pos = gap.match(text, decoder.raw_decode(text, pos)[1]).end()
    return lines


def _from_json(read: Callable[[dict, _At], list[Message]], record: Any, at: _At) -> Conversation:
    if not isinstance(record, dict):
        raise at.error(None, f"must be a JSON object, got {_kind(record)}")
    messages = read(record, at)
    system = _text(record, "system", at, optional=True)
    if system:
        messages.insert(0, Message("system", system))
    return Conversation(messages, _tools(record, at), f"{at.path}:{at.line}")


def read_conversations(path: str | Path, format: str, *, tools: list[dict] | None = None,
                       system: str | None = None, columns: dict[str, str] | None = None,
                       filter_column: str | None = None) -> list[Conversation]:
    """Read and validate a whole data file; the first bad record raises `DataError`.

    `tools` is attached to conversations that bring none; `system` is prepended to those
    without a system turn. `columns` and `filter_column` apply to `csv` only.
    """
    return list(iter_conversations(path, format, tools=tools, system=system, columns=columns,
                                   filter_column=filter_column))


def iter_conversations(path: str | Path, format: str, *, tools: list[dict] | None = None,
                       system: str | None = None, columns: dict[str, str] | None = None,
                       filter_column: str | None = None) -> Iterator[Conversation]:
    """`read_conversations` one conversation at a time; JSONL is read line by line, so a large
    file is never held whole (a JSON array or CSV file is)."""
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; allowed: {', '.join(FORMATS)}")
    if format != "csv" and (columns or filter_column):
        raise ValueError(f"columns/filter_column apply to the csv format only, not {format!r}")
    path = Path(path)
    if format == "csv":
        conversations: Iterator[Conversation] = iter(_from_csv(path, _read_text(path), columns or {}, filter_column))
    else:
        records = _jsonl_records(path) if _is_jsonl(path) else _json_records(path, _read_text(path))
        conversations = (_from_json(_JSON_READERS[format], r, at) for at, r in records)
    for conv in conversations:
        conv.tools = conv.tools or list(tools or [])
        if system and not any(m.role == "system" for m in conv.messages):
            conv.messages.insert(0, Message("system", system))
        yield conv


def _is_jsonl(path: Path) -> bool:
    """False for a top-level JSON array (first non-space character `[`) or a missing file."""
    if not path.is_file():
        return False
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            head = block.removeprefix(b"\xef\xbb\xbf").lstrip()
            if head:
                return not head.startswith(b"[")
    return True


def _jsonl_records(path: Path) -> Iterator[tuple[_At, Any]]:
    """Each JSONL record with its line, streamed from the file; the first bad line raises, after the
    whole file is checked to be UTF-8 (as when it is read at once). Lines split at LF bytes only
    (JSON strings may hold U+2028)."""
    for _ in _utf8_lines(path):
        pass
    for line, chunk in _utf8_lines(path):
        if chunk.strip():
            try:
                yield _At(path, line), json.loads(chunk)
            except json.JSONDecodeError as e:
                raise DataError(str(path), line, None, f"invalid JSON: {e.msg} (column {e.colno})") from None


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                yield line, raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), line, None, f"not UTF-8 text: {e.reason}") from None

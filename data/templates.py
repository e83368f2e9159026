"""Chat templates: a conversation → text pieces tagged with the kind of turn whose body they are.

The body of a turn is everything the model generates for it, end-of-turn marker included;
headers the inference prompt supplies and glue between turns are untagged (kind None), so
the data stage can put loss on exactly the generated tokens. Every template keeps one
invariant: rendering `messages[:k]` with `add_generation_prompt=True` gives exactly the text
that precedes turn k's body in the full rendering — what the model sees at inference is
what it was trained on.

Families follow the official HF chat templates of their models where those fit the
invariant; where they do not (Mistral puts the system prompt and tools in the *last* user
turn, which moves as the dialogue grows), they are put at the first user turn instead.
BOS strings are part of the text: tokenise without adding special tokens.

Tool format `custom` is the seed course's format for models without native tool calling:
the model names the role of its turn itself (`assistant` for a reply, `search` for a call
whose body is just the JSON arguments), results come back in a `return` turn, and the
tool schemas are written into the system prompt. The role is always `search`, whatever
the function (one tool per model in that scheme), so `parse_reply` returns calls named
`search`; the caller maps them to its tool.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from data.conversation import Message, ToolCall

TOOL_FORMATS = ("native", "custom")
CALL_ROLE = "search"  # custom format: role of a call turn
RETURN_ROLE = "return"  # custom format: role of a tool result turn
CUSTOM_TOOLS_INTRO = ("# Tools\n\nTo call a function, answer in the role `search` instead of your usual role, "
                      "with the function's arguments as one JSON object. Functions:")

# Marks where the generation prompt goes: an assistant turn of which only the header is rendered.
_PENDING = Message("assistant")


@dataclass(frozen=True)
class Piece:
    text: str
    kind: str | None  # Message.kind of the turn this piece is the body of; None for headers/glue


def _dumps(obj: Any, indent: int | None = None) -> str:
    """JSON as HF's `tojson` filter writes it, so Python and Jinja renderings agree."""
    return json.dumps(obj, ensure_ascii=False, indent=indent)


def _loads(text: str) -> Any:
    """Decoded JSON, or None when `text` is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _json_objects(text: str, separators: str = "") -> list[Any] | None:
    """JSON values written one after another (whitespace or `separators` between), or None."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _tool_calls(objects: Sequence[Any] | None, args_key: str) -> tuple[ToolCall, ...] | None:
    """Calls from decoded `{"name": str, args_key: {...}}` objects; None if any is malformed."""
    if not objects:
        return None
    calls = []
    for obj in objects:
        if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]
                and isinstance(obj.get(args_key), dict)):
            return None
        calls.append(ToolCall(obj["name"], obj[args_key]))
    return tuple(calls)


def _call_or_invalid(text: str, calls: tuple[ToolCall, ...] | None) -> Message:
    return Message("invalid", content=text) if calls is None else Message("assistant", tool_calls=calls)


class ChatTemplate(ABC):
    """The shared walk over a conversation; families supply headers, bodies and turn endings.

    A turn renders as header (kind None) + body (its kind, end-of-turn marker included) +
    glue (kind None). Hooks see the neighbouring turns because some formats group turns
    (Qwen's tool results) or end a turn with the next turn's role token (GLM-4).
    """

    name: str
    stop_strings: tuple[str, ...]
    tool_formats: tuple[str, ...] = ("native",)
    markers: tuple[str, ...] = ()  # special tokens the rendering uses, besides the stop strings
    bos: str = ""
    family_default_system: str | None = None  # system text used when tools come without a system message
    system_in_first_user = False  # no system role: the system prompt opens the first user turn
    system_separator = "\n\n"  # between that system prompt and the user's text

    def __init__(self, tool_format: str = "native", default_system: str | None = None):
        if tool_format not in self.tool_formats:
            raise ValueError(f"chat template {self.name!r} has no tool format {tool_format!r}; "
                             f"allowed: {', '.join(self.tool_formats)}")
        self.tool_format = tool_format
        self.default_system = self.family_default_system if default_system is None else default_system

    def __repr__(self) -> str:  # part of the data cache key: must change whenever the rendering does
        return (f"{type(self).__name__}(tool_format={self.tool_format!r}, "
                f"default_system={self.default_system!r})")

    def special_tokens(self) -> list[str]:
        """Strings that must be single special tokens in the tokenizer."""
        return list(dict.fromkeys(self.markers + self.stop_strings))

    def render(self, messages: Sequence[Message], tools: Sequence[dict] = (),
               add_generation_prompt: bool = False) -> list[Piece]:
        turns = list(messages)
        system = turns.pop(0).content if turns and turns[0].role == "system" else None
        system_text = self._system_text(system, list(tools))
        if system_text is not None and not self.system_in_first_user:
            turns.insert(0, Message("system", system_text))
        prefix = system_text if self.system_in_first_user else None  # still to place in the first user turn
        following = turns[1:] + [_PENDING] if add_generation_prompt else turns[1:]
        pieces = [Piece(self._preamble(tools), None)]
        for i, msg in enumerate(turns):
            if msg.role not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"chat template {self.name!r}: unknown role {msg.role!r}")
            if self.system_in_first_user and msg.role == "system":
                raise ValueError(f"chat template {self.name!r} takes a system message only as the first message")
            pieces.append(Piece(self._header(msg, turns[i - 1] if i else None), None))
            if prefix is not None:
                if msg.role != "user":
                    raise ValueError(f"chat template {self.name!r} puts the system prompt in the first user "
                                     f"turn, but the first turn after it is {msg.role!r}")
                pieces += [Piece(prefix, "system"), Piece(self.system_separator, None)]
                prefix = None
            end, glue = self._ending(msg, following[i] if i < len(following) else None)
            pieces += [Piece(self._body(msg) + end, msg.kind), Piece(glue, None)]
        if prefix is not None:
            raise ValueError(f"chat template {self.name!r} puts the system prompt in the first user turn; "
                             "there is none")
        if add_generation_prompt:
            pieces.append(Piece(self._header(_PENDING, turns[-1] if turns else None), None))
        return [p for p in pieces if p.text]

    def parse_reply(self, text: str) -> Message:
        """One generated turn (after the generation prompt) → text reply, call, or role 'invalid'."""
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=len(text))
        return self._parse(text[:cut])

    # ---- hooks -------------------------------------------------------------------------------

    def _preamble(self, tools: Sequence[dict]) -> str:
        """Text before the first turn."""
        return self.bos

    def _system_text(self, system: str | None, tools: list[dict]) -> str | None:
        """The system prompt: the system message plus the tool schemas; None for no system turn."""
        if not tools:
            return system
        return self._with_tools(self.default_system if system is None else system, tools)

    def _body(self, msg: Message) -> str:
        """A turn's body without its end-of-turn marker."""
        if msg.kind == "call":
            return self._call_body(msg.tool_calls)
        if msg.kind == "tool":
            return self._tool_body(msg)
        return self._text_body(msg)

    def _text_body(self, msg: Message) -> str:
        return msg.content

    def _tool_body(self, msg: Message) -> str:
        return msg.content

    @abstractmethod
    def _header(self, msg: Message, prev: Message | None) -> str:
        """What the prompt supplies before `msg`'s body; `msg` is `_PENDING` for the generation prompt."""

    @abstractmethod
    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        """(end-of-turn marker ending the body, glue after it); `nxt` is `_PENDING` before a generation prompt."""

    @abstractmethod
    def _call_body(self, calls: Sequence[ToolCall]) -> str: ...

    @abstractmethod
    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        """The system prompt with the tool schemas written in (where the family writes them)."""

    @abstractmethod
    def _parse(self, text: str) -> Message: ...


class _RoleHeaderTemplate(ChatTemplate):
    """Families whose header is turn start + role name + role end (ChatML, Llama 3, Gemma).

    The hooks here implement the custom tool format, in which the model writes the role
    name of its own turns, so the header of an assistant or call turn is the turn-start
    token alone; ChatML and Llama 3 override the tool hooks for their native formats.
    """

    tool_formats = TOOL_FORMATS
    turn_start: str
    role_end: str
    end_of_turn: str
    glue: str
    assistant_role = "assistant"
    native_tool_role: str

    @property
    def custom(self) -> bool:
        return self.tool_format == "custom"

    def _role(self, msg: Message) -> str:
        if msg.kind == "call":
            return CALL_ROLE if self.custom else self.assistant_role
        if msg.kind == "tool":
            return RETURN_ROLE if self.custom else self.native_tool_role
        return self.assistant_role if msg.role == "assistant" else msg.role

    def _names_own_role(self, msg: Message) -> bool:
        return self.custom and msg.role == "assistant"

    def _header(self, msg: Message, prev: Message | None) -> str:
        return self.turn_start if self._names_own_role(msg) else self.turn_start + self._role(msg) + self.role_end

    def _body(self, msg: Message) -> str:
        role = self._role(msg) + self.role_end if self._names_own_role(msg) else ""
        return role + super()._body(msg)

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return self.end_of_turn, self.glue

    def _call_body(self, calls: Sequence[ToolCall]) -> str:
        return "\n".join(_dumps(c.arguments) for c in calls)  # one per line: json.dumps writes no raw newline

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        schemas = CUSTOM_TOOLS_INTRO + "".join("\n" + _dumps(t) for t in tools)
        return "\n\n".join(p for p in (system, schemas) if p)

    def _parse(self, text: str) -> Message:
        """The reply starts with the role name the model chose: `search` means a call."""
        match = re.match(rf"\s*(\w+)\s*{re.escape(self.role_end.strip())}", text)
        role = match.group(1) if match else None
        if role == CALL_ROLE:
            objects = _json_objects(text[match.end():])
            calls = _tool_calls([{"name": CALL_ROLE, "arguments": o} for o in objects or ()], "arguments")
            return _call_or_invalid(text.strip(), calls)
        if role == self.assistant_role:
            return Message("assistant", text[match.end():].strip())
        return Message("assistant", text.strip())


class ChatML(_RoleHeaderTemplate):
    """Qwen2/Qwen2.5 ChatML; native tools are Qwen2.5's Hermes-style <tool_call> blocks.

    As in Qwen2.5, consecutive tool results share one user turn. Unlike Qwen2.5, the
    default system prompt is inserted only when tools need a system turn.
    `data/chat_templates/chatml.jinja` renders the same text for HF tokenizers.
    """

    name = "chatml"
    stop_strings = ("<|im_end|>", "<|endoftext|>")
    markers = ("<|im_start|>",)
    family_default_system = "You are a helpful assistant."
    turn_start, role_end, end_of_turn, glue = "<|im_start|>", "\n", "<|im_end|>", "\n"
    native_tool_role = "user"

    def _groups_tools(self, msg: Message, other: Message | None) -> bool:
        return not self.custom and msg.kind == "tool" and other is not None and other.kind == "tool"

    def _header(self, msg: Message, prev: Message | None) -> str:
        if not self.custom and msg.kind == "tool":
            return "" if self._groups_tools(msg, prev) else "<|im_start|>user"
        return super()._header(msg, prev)

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return ("", "") if self._groups_tools(msg, nxt) else super()._ending(msg, nxt)

    def _tool_body(self, msg: Message) -> str:
        return msg.content if self.custom else f"\n<tool_response>\n{msg.content}\n</tool_response>"

    def _call_body(self, calls: Sequence[ToolCall]) -> str:
        if self.custom:
            return super()._call_body(calls)
        return "\n".join(f"<tool_call>\n{_dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>"
                         for c in calls)

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        if self.custom:
            return super()._with_tools(system, tools)
        return ((system or "")
                + "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
                + "".join("\n" + _dumps(t) for t in tools)
                + "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def _parse(self, text: str) -> Message:
        if self.custom:
            return super()._parse(text)
        text = text.strip()
        if "<tool_call>" not in text:
            return Message("assistant", text)
        blocks = re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)
        if len(blocks) != text.count("<tool_call>"):  # an unclosed block
            return Message("invalid", content=text)
        return _call_or_invalid(text, _tool_calls([_loads(b) for b in blocks], "arguments"))


class Llama3(_RoleHeaderTemplate):
    """Llama 3 headers; native tools are Llama 3.1's JSON tool calling with the tools in the system turn.

    Llama 3.1's date lines ("Cutting Knowledge Date", "Today Date") are left out; several
    calls in one turn are joined by "; " (as vLLM's llama3_json parser reads them).
    """

    name = "llama3"
    stop_strings = ("<|eot_id|>", "<|end_of_text|>")
    markers = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
    bos = "<|begin_of_text|>"
    turn_start, role_end, end_of_turn, glue = "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", ""
    native_tool_role = "ipython"

    def _call_body(self, calls: Sequence[ToolCall]) -> str:
        if self.custom:
            return super()._call_body(calls)
        return "; ".join(_dumps({"name": c.name, "parameters": c.arguments}) for c in calls)

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        if self.custom:
            return super()._with_tools(system, tools)
        return ("Environment: ipython\n\n"
                "You have access to the following functions. To call a function, please respond with JSON for a "
                'function call.Respond in the format {"name": function name, "parameters": dictionary of argument '
                'name and its value}.Do not use variables.\n\n'
                + "".join(_dumps(t, indent=4) + "\n\n" for t in tools) + (system or ""))

    def _parse(self, text: str) -> Message:
        if self.custom:
            return super()._parse(text)
        text = text.strip()
        if not re.match(r'\{\s*"name"\s*:', text):
            return Message("assistant", text)
        return _call_or_invalid(text, _tool_calls(_json_objects(text, ";"), "parameters"))


class Gemma(_RoleHeaderTemplate):
    """Gemma turns; no system role (Gemma 3 style: the system prompt opens the first user turn).

    Gemma has no native tool format, so `native` means `custom`.
    """

    name = "gemma"
    stop_strings = ("<end_of_turn>", "<eos>")
    markers = ("<bos>", "<start_of_turn>")
    bos = "<bos>"
    turn_start, role_end, end_of_turn, glue = "<start_of_turn>", "\n", "<end_of_turn>", "\n"
    assistant_role = "model"
    system_in_first_user = True

    @property
    def custom(self) -> bool:
        return True


class GLM4(ChatTemplate):
    """GLM-4: role tokens and no end-of-turn token.

    The model ends its turn by generating the next role token, so an assistant or call
    body ends with that token (`<|user|>` after a final reply, `<|observation|>` after a
    final call, `<|assistant|>` before a generation prompt) and the next header omits it.
    Several calls in one turn are `<|assistant|>`-separated `name\\n{json}` segments.
    `custom` is accepted as an alias: GLM-4's native format already is the seed's.
    """

    name = "glm4"
    tool_formats = TOOL_FORMATS
    stop_strings = ("<|user|>", "<|observation|>", "<|endoftext|>")
    markers = ("[gMASK]", "<sop>", "<|system|>", "<|assistant|>")
    bos = "[gMASK]<sop>"
    family_default_system = ("你是一个名为 GLM-4 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                             "你的任务是针对用户的问题和要求提供适当的答复和支持。")
    _ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>",
                    "tool": "<|observation|>"}

    def _header(self, msg: Message, prev: Message | None) -> str:
        return "" if prev is not None and prev.role == "assistant" else self._ROLE_TOKENS[msg.role]

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        if msg.role != "assistant":
            return "", ""
        if nxt is None:
            return ("<|observation|>" if msg.kind == "call" else "<|user|>"), ""
        return self._ROLE_TOKENS[nxt.role], ""

    def _text_body(self, msg: Message) -> str:
        return "\n" + msg.content

    def _tool_body(self, msg: Message) -> str:
        return "\n" + msg.content

    def _call_body(self, calls: Sequence[ToolCall]) -> str:
        return "<|assistant|>".join(f"{c.name}\n{_dumps(c.arguments)}" for c in calls)

    def _with_tools(self, system: str | None, tools: list[dict]) -> str:
        text = (system or "") + "\n\n# 可用工具"
        for tool in tools:
            function = tool.get("function", tool)
            text += (f"\n\n## {function['name']}\n\n{_dumps(function, indent=4)}"
                     "\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
        return text

    def _parse(self, text: str) -> Message:
        head, _, rest = text.partition("\n")
        if not (re.fullmatch(r"[\w.\-]+", head.strip()) and rest.lstrip().startswith("{")):
            return Message("assistant", text.strip())
        objects = []
        for segment in text.split("<|assistant|>"):
            name, _, arguments = segment.partition("\n")
            objects.append({"name": name.strip(), "arguments": _loads(arguments)})
        return _call_or_invalid(text.strip(), _tool_calls(objects, "arguments"))


class Mistral(ChatTemplate):
    """Mistral v3 `[INST]` format with v3 tool calling (call ids left out).

    The system prompt opens the first user turn and the tools come before it, not at the
    last user turn as Mistral's template does: that would change earlier turns as the
    dialogue grows and break the training-prefix = inference-prompt invariant.
    A tool result's content is embedded as JSON when it is JSON, else as a JSON string.
    """

    name = "mistral"
    stop_strings = ("</s>",)
    markers = ("<s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
               "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
    bos = "<s>"
    system_in_first_user = True
    _ENDINGS = {"user": "[/INST]", "assistant": "</s>", "tool": "[/TOOL_RESULTS]"}

    def _preamble(self, tools: Sequence[dict]) -> str:
        return self.bos + (f"[AVAILABLE_TOOLS] {_dumps(list(tools))}[/AVAILABLE_TOOLS]" if tools else "")

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        return system  # the tools go in the preamble

    def _header(self, msg: Message, prev: Message | None) -> str:
        return "[INST] " if msg.role == "user" else ""

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return self._ENDINGS[msg.role], ""

    def _text_body(self, msg: Message) -> str:
        return " " + msg.content.strip() if msg.role == "assistant" else msg.content

    def _call_body(self, calls: Sequence[ToolCall]) -> str:
        return "[TOOL_CALLS] " + _dumps([{"name": c.name, "arguments": c.arguments} for c in calls])

    def _tool_body(self, msg: Message) -> str:
        content = _loads(msg.content)
        return "[TOOL_RESULTS] " + _dumps({"content": msg.content if content is None else content})

    def _parse(self, text: str) -> Message:
        text = text.strip()
        if not text.startswith("[TOOL_CALLS]"):
            return Message("assistant", text)
        objects = _loads(text[len("[TOOL_CALLS]"):])
        return _call_or_invalid(text, _tool_calls(objects if isinstance(objects, list) else None, "arguments"))


_FAMILIES: dict[str, type[ChatTemplate]] = {t.name: t for t in (ChatML, Llama3, GLM4, Mistral, Gemma)}
TEMPLATE_FAMILIES = tuple(_FAMILIES)


def get_template(family: str, tool_format: str = "native") -> ChatTemplate:
    if family not in _FAMILIES:
        raise ValueError(f"unknown chat template family {family!r}; allowed: {', '.join(TEMPLATE_FAMILIES)}")
    return _FAMILIES[family](tool_format)

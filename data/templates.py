"""Chat templates: a conversation → text pieces tagged with the kind of turn whose body they are.

The body of a turn is everything the model generates for it, end-of-turn marker included;
headers the inference prompt supplies and glue between turns are untagged (kind None), so
the data stage can put loss on exactly the generated tokens. Every template keeps one
invariant: rendering `messages[:k]` with `add_generation_prompt=True` gives exactly the text
that precedes turn k's body in the full rendering — what the model sees at inference is
what it was trained on.

`auto` (`AutoTemplate`) renders with the tokenizer's own chat template and finds the pieces
by diffing renderings of prefixes; the hand-written families (`HandWrittenTemplate`) render
what their models' official templates (or, for Mistral, mistral-common) render. A dialogue a
template does not render prefix-stably (Mistral moves the tools and system prompt to the
last user turn as the dialogue grows) raises `NotPrefixStable` from `render`; `render_turn`
gives its per-turn samples instead, and `prompt` always gives the served prompt.
BOS strings are part of the text: tokenise without adding special tokens.

Tool format `custom` is the seed course's format for models without native tool calling:
the model names the role of its turn itself (`assistant` for a reply, `search` for a call
whose body is just the JSON arguments), results come back in a `return` turn, and the
tool schemas are written into the system prompt. The role is always `search`, whatever
the function (one tool per model in that scheme), so `parse_reply` returns calls named
`search`; the caller maps them to its tool.
"""
from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from jinja2 import TemplateError

from data.conversation import TRAINABLE_KINDS, Message, ToolCall

TOOL_FORMATS = ("native", "custom")
CHAT_TEMPLATES = Path(__file__).resolve().parent / "chat_templates"
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


def _text(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces)


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


def call_ids(messages: Sequence[Message]) -> list[tuple[str, ...]]:
    """Per message: its calls' ids (9 digits: turn index and call position, as Mistral requires), or for a
    result the id of the call it answers (results answer calls in order); () otherwise."""
    out, pending = [], []
    for k, msg in enumerate(messages):
        ids: tuple[str, ...] = ()
        if msg.tool_calls:
            ids = tuple(f"{k:06d}{j:03d}" for j in range(len(msg.tool_calls)))
            pending += ids
        elif msg.role == "tool" and pending:
            ids = (pending.pop(0),)
        out.append(ids)
    return out


def _call_or_invalid(text: str, calls: tuple[ToolCall, ...] | None) -> Message:
    return Message("invalid", content=text) if calls is None else Message("assistant", tool_calls=calls)


# Qwen2.5's Hermes-style tool format (ChatML; Gemma's native one): schemas in the system prompt, each call a
# <tool_call> JSON block in the assistant turn, each result a <tool_response> block in a user turn.
def _hermes_tools(tools: Sequence[dict]) -> str:
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
            + "".join("\n" + _dumps(t) for t in tools)
            + "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def _hermes_calls(calls: Sequence[ToolCall]) -> str:
    return "\n".join(f"<tool_call>\n{_dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>"
                     for c in calls)


def _hermes_result(msg: Message) -> str:
    return f"<tool_response>\n{msg.content}\n</tool_response>"


def _parse_hermes(text: str) -> Message:
    text = text.strip()
    if "<tool_call>" not in text:
        return Message("assistant", text)
    blocks = re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)
    if len(blocks) != text.count("<tool_call>"):  # an unclosed block
        return Message("invalid", content=text)
    return _call_or_invalid(text, _tool_calls([_loads(b) for b in blocks], "arguments"))


class NotPrefixStable(ValueError):
    """The template renders an earlier turn differently once later turns follow: no one-pass encoding."""


class ChatTemplate(ABC):
    """What data, eval and chat use: a conversation → tagged pieces, stop strings, reply parsing.

    `render` keeps the invariant of the module docstring or raises `NotPrefixStable`;
    `render_turn` is the per-turn sample every template can give (history untagged, one body).
    """

    name: str
    stop_strings: tuple[str, ...]
    trainable_kinds: tuple[str, ...] = TRAINABLE_KINDS  # kinds whose turns `render` can tag
    jinja_file: str | None = None  # data/chat_templates/ file that renders the same text through HF, if any

    @abstractmethod
    def render(self, messages: Sequence[Message], tools: Sequence[dict] = (),
               add_generation_prompt: bool = False) -> list[Piece]: ...

    def parse_reply(self, text: str) -> Message:
        """One generated turn (after the generation prompt) → text reply, call, or role 'invalid'."""
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=len(text))
        return self._parse(text[:cut])

    @abstractmethod
    def _parse(self, text: str) -> Message:
        """A turn cut before its end-of-turn marker → reply, call or 'invalid'."""

    def special_tokens(self) -> list[str]:
        """Strings that must be single special tokens in the tokenizer."""
        return list(self.stop_strings)

    def jinja(self) -> str | None:
        """A chat template that makes `apply_chat_template` render what this template renders (export writes it
        into the tokenizer); None where there is none (seed 000's roles; Mistral and GLM-4, whose official
        templates take other message forms)."""
        return (CHAT_TEMPLATES / self.jinja_file).read_text(encoding="utf-8") if self.jinja_file else None

    def prompt(self, messages: Sequence[Message], tools: Sequence[dict] = ()) -> str:
        """The inference prompt for the turn after `messages`."""
        return _text(self.render(messages, tools, add_generation_prompt=True))

    def render_turn(self, messages: Sequence[Message], tools: Sequence[dict], k: int) -> list[Piece]:
        """One sample for assistant turn k: the prompt before it untagged, its body (end of turn included) tagged."""
        prompt = self.prompt(messages[:k], tools)
        full = self._full_text(messages[:k + 1], tools)
        if not full.startswith(prompt):
            raise NotPrefixStable(f"chat template {self.name!r}: the prompt for turn {k} is not a prefix of the "
                                  "rendering with that turn")
        return [Piece(prompt, None)] + self._body_pieces(full[len(prompt):], messages[k].kind)

    def _full_text(self, messages: Sequence[Message], tools: Sequence[dict]) -> str:
        return _text(self.render(messages, tools))

    def _body_pieces(self, text: str, kind: str) -> list[Piece]:
        """A turn's text after its header → body up to its last end-of-turn marker, then untagged glue."""
        ends = [text.rfind(s) + len(s) for s in self.stop_strings if s in text]
        end = max(ends, default=len(text))
        if text[end:].strip():  # no marker at the end: the whole text is the body
            end = len(text)
        return [p for p in (Piece(text[:end], kind), Piece(text[end:], None)) if p.text]


class HandWrittenTemplate(ChatTemplate):
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
    always_system = False  # the default system prompt is used even without tools (Qwen2.5)
    system_in_first_user = False  # no system role: the system prompt opens the first user turn
    system_at_last_user = False  # ... the last user turn instead, tools before it (Mistral; not prefix-stable)
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
        return list(dict.fromkeys(self.markers + self.stop_strings))

    def render(self, messages: Sequence[Message], tools: Sequence[dict] = (),
               add_generation_prompt: bool = False) -> list[Piece]:
        if self.system_at_last_user and (tools or (messages and messages[0].role == "system")):
            users = [i for i, m in enumerate(messages) if m.role == "user"]
            if users and any(m.role == "assistant" for m in messages[:users[-1]]):
                raise NotPrefixStable(f"chat template {self.name!r} moves the system prompt and tools to the last "
                                      "user turn, so earlier turns' prompts differ from the whole dialogue")
        return self._walk(messages, tools, add_generation_prompt)

    def prompt(self, messages: Sequence[Message], tools: Sequence[dict] = ()) -> str:
        return _text(self._walk(messages, tools, True))

    def _full_text(self, messages: Sequence[Message], tools: Sequence[dict]) -> str:
        return _text(self._walk(messages, tools, False))

    def _walk(self, messages: Sequence[Message], tools: Sequence[dict], add_generation_prompt: bool) -> list[Piece]:
        turns, ids = list(messages), call_ids(messages)
        system = None
        if turns and turns[0].role == "system":
            system, turns, ids = turns[0].content, turns[1:], ids[1:]
        system_text = self._system_text(system, list(tools))
        if system_text is not None and not self.system_in_first_user:
            turns, ids = [Message("system", system_text)] + turns, [()] + ids
        # still to place in the first (Mistral: last) user turn: the system prompt, or (Llama 3.1) the tool schemas
        prefix = system_text if self.system_in_first_user else self._user_prefix(list(tools))
        separator = self.system_separator if self.system_in_first_user else ""
        users = [i for i, m in enumerate(turns) if m.role == "user"]
        target = users[-1] if self.system_at_last_user and users else next(
            (i for i, m in enumerate(turns) if m.role != "system"), None)
        following = turns[1:] + [_PENDING] if add_generation_prompt else turns[1:]
        pieces = [Piece(self._preamble(tools), None)]
        for i, (msg, msg_ids) in enumerate(zip(turns, ids)):
            if msg.role not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"chat template {self.name!r}: unknown role {msg.role!r}")
            if self.system_in_first_user and msg.role == "system":
                raise ValueError(f"chat template {self.name!r} takes a system message only as the first message")
            if i == target:
                pieces.append(Piece(self._tools_block(tools), None))
            pieces.append(Piece(self._header(msg, turns[i - 1] if i else None), None))
            if prefix is not None and i == target:
                if msg.role != "user":
                    raise ValueError(f"chat template {self.name!r} puts the system prompt or tools in a user "
                                     f"turn, but the turn there is {msg.role!r}")
                pieces += [Piece(prefix, "system"), Piece(separator, None)]
                prefix = None
            end, glue = self._ending(msg, following[i] if i < len(following) else None)
            pieces += [Piece(self._body(msg, msg_ids) + end, msg.kind), Piece(glue, None)]
        if prefix is not None:
            raise ValueError(f"chat template {self.name!r} puts the system prompt or tools in a user turn; "
                             "there is none")
        if add_generation_prompt:
            pieces.append(Piece(self._header(_PENDING, turns[-1] if turns else None), None))
        return [p for p in pieces if p.text]

    # ---- hooks -------------------------------------------------------------------------------

    def _preamble(self, tools: Sequence[dict]) -> str:
        """Text before the first turn."""
        return self.bos

    def _user_prefix(self, tools: list[dict]) -> str | None:
        """Text the first user turn opens with (besides a system prompt placed there)."""
        return None

    def _tools_block(self, tools: Sequence[dict]) -> str:
        """Text before the header of the user turn that takes the system prompt (Mistral's tool schemas)."""
        return ""

    def _system_text(self, system: str | None, tools: list[dict]) -> str | None:
        """The system prompt: the system message plus the tool schemas; None for no system turn."""
        if not tools:
            return self.default_system if system is None and self.always_system else system
        return self._with_tools(self.default_system if system is None else system, tools)

    def _body(self, msg: Message, ids: tuple[str, ...]) -> str:
        """A turn's body without its end-of-turn marker; `ids`: its calls' ids, or the id a result answers."""
        if msg.kind == "call":
            return self._call_body(msg.tool_calls, ids)
        if msg.kind == "tool":
            return self._tool_body(msg, ids)
        return self._text_body(msg)

    def _text_body(self, msg: Message) -> str:
        return msg.content

    def _tool_body(self, msg: Message, ids: tuple[str, ...]) -> str:
        return msg.content

    @abstractmethod
    def _header(self, msg: Message, prev: Message | None) -> str:
        """What the prompt supplies before `msg`'s body; `msg` is `_PENDING` for the generation prompt."""

    @abstractmethod
    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        """(end-of-turn marker ending the body, glue after it); `nxt` is `_PENDING` before a generation prompt."""

    @abstractmethod
    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str: ...

    @abstractmethod
    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        """The system prompt with the tool schemas written in (where the family writes them)."""


class _RoleHeaderTemplate(HandWrittenTemplate):
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

    def _body(self, msg: Message, ids: tuple[str, ...]) -> str:
        role = self._role(msg) + self.role_end if self._names_own_role(msg) else ""
        return role + super()._body(msg, ids)

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return self.end_of_turn, self.glue

    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str:
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
    native_jinja = "chatml.jinja"

    @property
    def jinja_file(self) -> str | None:
        return None if self.custom else self.native_jinja

    def _groups_tools(self, msg: Message, other: Message | None) -> bool:
        return not self.custom and msg.kind == "tool" and other is not None and other.kind == "tool"

    def _header(self, msg: Message, prev: Message | None) -> str:
        if not self.custom and msg.kind == "tool":
            return "" if self._groups_tools(msg, prev) else "<|im_start|>user"
        return super()._header(msg, prev)

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return ("", "") if self._groups_tools(msg, nxt) else super()._ending(msg, nxt)

    def _tool_body(self, msg: Message, ids: tuple[str, ...]) -> str:
        return msg.content if self.custom else "\n" + _hermes_result(msg)

    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str:
        if self.custom:
            return super()._call_body(calls, ids)
        return _hermes_calls(calls)

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        if self.custom:
            return super()._with_tools(system, tools)
        return (system or "") + "\n\n" + _hermes_tools(tools)

    def _parse(self, text: str) -> Message:
        return super()._parse(text) if self.custom else _parse_hermes(text)


class Qwen25(ChatML):
    """Qwen2.5's official template (`qwen2_5.jinja`): ChatML with its default system prompt always."""

    name = "qwen2.5"
    family_default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    always_system = True
    native_jinja = "qwen2_5.jinja"


class Llama3(_RoleHeaderTemplate):
    """Llama 3.1 as its official template renders it by default (`llama3_1.jinja`).

    Native: a system turn with the date lines always, the tool schemas opening the first user
    turn (`tools_in_user_message=true`), contents trimmed, tool results JSON-encoded as
    strings. The official template takes one call per turn; here several are joined by "; "
    (as vLLM's llama3_json parser reads them).
    """

    name = "llama3"
    stop_strings = ("<|eot_id|>", "<|end_of_text|>")
    markers = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
    bos = "<|begin_of_text|>"
    turn_start, role_end, end_of_turn, glue = "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", ""
    native_tool_role = "ipython"
    DATES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

    @property
    def jinja_file(self) -> str | None:
        return None if self.custom else "llama3_1.jinja"

    def _system_text(self, system: str | None, tools: list[dict]) -> str | None:
        if self.custom:
            return super()._system_text(system, tools)
        return ("Environment: ipython\n" if tools else "") + self.DATES + (system or "").strip()

    def _user_prefix(self, tools: list[dict]) -> str | None:
        if self.custom or not tools:
            return None
        return ("Given the following functions, please respond with a JSON for a function call with its proper "
                'arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, '
                '"parameters": dictionary of argument name and its value}.Do not use variables.\n\n'
                + "".join(_dumps(t, indent=4) + "\n\n" for t in tools))

    def _text_body(self, msg: Message) -> str:  # the system text is already trimmed where it needs to be
        return msg.content if self.custom or msg.role == "system" else msg.content.strip()

    def _tool_body(self, msg: Message, ids: tuple[str, ...]) -> str:
        return msg.content if self.custom else _dumps(msg.content)

    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str:
        if self.custom:
            return super()._call_body(calls, ids)
        return "; ".join(_dumps({"name": c.name, "parameters": c.arguments}) for c in calls)

    def _parse(self, text: str) -> Message:
        if self.custom:
            return super()._parse(text)
        text = text.strip()
        if not re.match(r'\{\s*"name"\s*:', text):
            return Message("assistant", text)
        return _call_or_invalid(text, _tool_calls(_json_objects(text, ";"), "parameters"))


class Gemma(_RoleHeaderTemplate):
    """Gemma 2/3 turns as their official templates render them: no system role (the system prompt
    opens the first user turn, as Gemma 3's template and Gemma 2's guidance put it), contents trimmed.

    Gemma has no tool format of its own. `native` here is Qwen2.5's Hermes-style one in Gemma's
    turns (the schemas with the system prompt in the first user turn, <tool_call> JSON in the model
    turn, each result a <tool_response> user turn), which `gemma_tools.jinja` renders for HF
    tokenizers: the format `model=gemma3` trains the base model in. `custom` is seed 000's roles.
    """

    name = "gemma"
    stop_strings = ("<end_of_turn>", "<eos>")
    markers = ("<bos>", "<start_of_turn>")
    bos = "<bos>"
    turn_start, role_end, end_of_turn, glue = "<start_of_turn>", "\n", "<end_of_turn>", "\n"
    assistant_role = "model"
    native_tool_role = "user"
    system_in_first_user = True

    @property
    def jinja_file(self) -> str | None:
        return None if self.custom else "gemma_tools.jinja"

    def _body(self, msg: Message, ids: tuple[str, ...]) -> str:
        if self.custom:
            return super()._body(msg, ids)
        if msg.kind == "call":
            return _hermes_calls(msg.tool_calls)
        return _hermes_result(msg) if msg.kind == "tool" else msg.content.strip()

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        if self.custom:
            return super()._with_tools(system, tools)
        return "\n\n".join(p for p in (system, _hermes_tools(tools)) if p)

    def _parse(self, text: str) -> Message:
        return super()._parse(text) if self.custom else _parse_hermes(text)


class GLM4(HandWrittenTemplate):
    """GLM-4: role tokens and no end-of-turn token.

    The model ends its turn by generating the next role token, so an assistant or call
    body ends with that token (`<|user|>` after a final reply, `<|observation|>` after a
    final call, `<|assistant|>` before a generation prompt) and the next header omits it.
    Several calls in one turn are `<|assistant|>`-separated `name\\n{json}` segments.
    With tools, the system turn is glm-4-9b-chat's own tools block (`glm4.jinja`) and the
    client's system prompt follows in a second system turn, as its API server sends them.
    `custom` is accepted as an alias: GLM-4's native format already is the seed's.
    """

    name = "glm4"
    tool_formats = TOOL_FORMATS
    stop_strings = ("<|user|>", "<|observation|>", "<|endoftext|>")
    markers = ("[gMASK]", "<sop>", "<|system|>", "<|assistant|>")
    bos = "[gMASK]<sop>"
    TOOLS_INTRO = ("你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                   "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具")
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

    def _tool_body(self, msg: Message, ids: tuple[str, ...]) -> str:
        return "\n" + msg.content

    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str:
        return "<|assistant|>".join(f"{c.name}\n{_dumps(c.arguments)}" for c in calls)

    def _with_tools(self, system: str | None, tools: list[dict]) -> str:
        text = self.TOOLS_INTRO
        for tool in tools:
            function = tool.get("function", tool)
            # one newline before "##": HF's Jinja (trim_blocks) drops the template's first one, as servers do
            text += (f"\n## {function['name']}\n\n{_dumps(function, indent=4)}"
                     "\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
        return text + (f"<|system|>\n{system}" if system else "")

    def _parse(self, text: str) -> Message:
        head, _, rest = text.partition("\n")
        if not (re.fullmatch(r"[\w.\-]+", head.strip()) and rest.lstrip().startswith("{")):
            return Message("assistant", text.strip())
        objects = []
        for segment in text.split("<|assistant|>"):
            name, _, arguments = segment.partition("\n")
            objects.append({"name": name.strip(), "arguments": _loads(arguments)})
        return _call_or_invalid(text.strip(), _tool_calls(objects, "arguments"))


class Mistral(HandWrittenTemplate):
    """Mistral v3 (7B-Instruct-v0.3) as mistral-common's `encode_chat_completion` writes it.

    The tools and the system prompt go before the *last* user turn, so a dialogue with more
    than one user turn is not prefix-stable (`render` raises `NotPrefixStable`; it is trained
    one sample per turn). Calls carry 9-character ids and results the id they answer; a
    result's content is embedded as JSON when it is JSON, else as a JSON string.
    """

    name = "mistral"
    stop_strings = ("</s>",)
    markers = ("<s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
               "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
    bos = "<s>"
    system_in_first_user = True
    system_at_last_user = True
    _ENDINGS = {"user": "[/INST]", "assistant": "</s>", "tool": "[/TOOL_RESULTS]"}

    def _tools_block(self, tools: Sequence[dict]) -> str:
        return f"[AVAILABLE_TOOLS] {_dumps(list(tools))}[/AVAILABLE_TOOLS]" if tools else ""

    def _with_tools(self, system: str | None, tools: list[dict]) -> str | None:
        return system  # the tools go before the user turn (`_tools_block`)

    def _header(self, msg: Message, prev: Message | None) -> str:
        return "[INST] " if msg.role == "user" else ""

    def _ending(self, msg: Message, nxt: Message | None) -> tuple[str, str]:
        return self._ENDINGS[msg.role], ""

    def _text_body(self, msg: Message) -> str:
        return " " + msg.content.strip() if msg.role == "assistant" else msg.content

    def _call_body(self, calls: Sequence[ToolCall], ids: tuple[str, ...]) -> str:
        return "[TOOL_CALLS] " + _dumps([{"name": c.name, "arguments": c.arguments, "id": i} for c, i in zip(calls, ids)])

    def _tool_body(self, msg: Message, ids: tuple[str, ...]) -> str:
        content = _loads(msg.content)
        return "[TOOL_RESULTS] " + _dumps({"content": msg.content if content is None else content,
                                           **({"call_id": ids[0]} if ids else {})})

    def _parse(self, text: str) -> Message:
        text = text.strip()
        if not text.startswith("[TOOL_CALLS]"):
            return Message("assistant", text)
        objects = _loads(text[len("[TOOL_CALLS]"):])
        return _call_or_invalid(text, _tool_calls(objects if isinstance(objects, list) else None, "arguments"))


def hf_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the form HF chat templates take: `tool_calls` of type function, results in role `tool`,
    with the ids of `call_ids` (templates that do not need them ignore them)."""
    out = []
    for msg, ids in zip(messages, call_ids(messages)):
        if msg.tool_calls:
            out.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in zip(ids, msg.tool_calls)]})
        elif msg.role == "tool":
            out.append({"role": "tool", "content": msg.content, "name": msg.name,
                        **({"tool_call_id": ids[0]} if ids else {})})
        else:
            out.append({"role": msg.role, "content": msg.content})
    return out


class AutoTemplate(ChatTemplate):
    """The tokenizer's own chat template, so training renders exactly what a server renders.

    Turn k's body is `render(messages[:k+1])` minus `render(messages[:k], add_generation_prompt)`,
    up to and including the end-of-turn marker (found once by rendering a probe reply). A
    dialogue for which those renderings are not prefixes of the whole (Mistral moves the tools
    to the last user turn, Qwen3 drops earlier reasoning) raises `NotPrefixStable`; the data
    stage then trains it one sample per turn (`render_turn`). Calls are parsed by the first
    hand-written family whose parser reads the template's own rendering of a probe call. A
    template that ignores `tools` or drops calls (SmolLM2's) cannot render tool dialogues as
    served, so rendering one is an error naming the way out.
    """

    name = "auto"
    trainable_kinds = ("assistant", "call")
    _PROBE_TOOL = {"type": "function", "function": {
        "name": "probe_tool", "description": "probe description",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}}}}
    _PROBE_CALL = Message("assistant", tool_calls=(ToolCall("probe_tool", {"probe_arg": "probe value"}),))

    def __init__(self, tokenizer: Any):
        if not isinstance(getattr(tokenizer, "chat_template", None), str):
            raise ValueError("model.template=auto: the tokenizer has no chat_template; choose a hand-written "
                             f"family ({', '.join(TEMPLATE_FAMILIES)})")
        self.tokenizer, self.chat_template = tokenizer, tokenizer.chat_template
        user = [Message("user", "probe question")]
        reply = self._render(user + [Message("assistant", "probe answer")], (), False)
        prompt = self._render(user, (), True)
        if not reply.startswith(prompt) or "probe answer" not in reply[len(prompt):]:
            raise ValueError("model.template=auto: the tokenizer's chat template does not render a reply after "
                             "its own generation prompt; choose a hand-written family")
        tail = reply[len(prompt):].split("probe answer", 1)[1].strip()
        if not tail:
            raise ValueError("model.template=auto: the tokenizer's chat template ends a reply with no "
                             "end-of-turn marker (GLM-4 style); use model.template=glm4")
        self.stop_strings = tuple(dict.fromkeys([tail] + ([tokenizer.eos_token] if tokenizer.eos_token else [])))
        self.parser = self._call_parser(user)

    def jinja(self) -> str:
        return self.chat_template

    def __repr__(self) -> str:  # part of the data cache key
        digest = hashlib.sha256(self.chat_template.encode()).hexdigest()[:16]
        return f"AutoTemplate(chat_template={digest}, stop_strings={self.stop_strings!r})"

    @property
    def supports_tools(self) -> bool:
        return self.parser is not None

    def _render(self, messages: Sequence[Message], tools: Sequence[dict], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(hf_messages(messages), tools=list(tools) or None, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _full_text(self, messages: Sequence[Message], tools: Sequence[dict]) -> str:
        self._check_tools(messages, tools)
        return self._render(messages, tools, False)

    def prompt(self, messages: Sequence[Message], tools: Sequence[dict] = ()) -> str:
        self._check_tools(messages, tools)
        return self._render(messages, tools, True)

    def _call_parser(self, user: list[Message]) -> HandWrittenTemplate | None:
        """The native family whose parser reads this template's probe call back; None without tool support."""
        tools = [self._PROBE_TOOL]
        try:
            prompt = self._render(user, tools, True)
            full = self._render(user + [self._PROBE_CALL], tools, False)
        except (TemplateError, TypeError, ValueError):  # templates reject tool messages in their own ways
            return None
        body = full[len(prompt):]
        if "probe description" not in prompt or not full.startswith(prompt) or "probe value" not in body:
            return None
        return next((f for f in (ChatML(), Llama3(), Mistral(), GLM4()) if f.parse_reply(body) == self._PROBE_CALL),
                    None)

    def _check_tools(self, messages: Sequence[Message], tools: Sequence[dict]) -> None:
        if self.parser is None and (tools or any(m.kind in ("call", "tool") for m in messages)):
            raise ValueError("model.template=auto: the tokenizer's chat template ignores tools or drops tool "
                             "calls, so tool dialogues cannot be trained as it serves them; use a hand-written "
                             "family (model.template=chatml: export writes its template into the tokenizer)")

    def render(self, messages: Sequence[Message], tools: Sequence[dict] = (),
               add_generation_prompt: bool = False) -> list[Piece]:
        full = self.prompt(messages, tools) if add_generation_prompt else self._full_text(messages, tools)
        pieces, pos = [], 0
        for k, msg in enumerate(messages):
            if msg.role != "assistant":
                continue
            start, end = self.prompt(messages[:k], tools), self._full_text(messages[:k + 1], tools)
            if not (end.startswith(start) and full.startswith(end)):
                raise NotPrefixStable(f"chat template 'auto': turn {k} renders differently once later turns follow")
            pieces += [Piece(full[pos:len(start)], None)] + self._body_pieces(end[len(start):], msg.kind)
            pos = len(end)
        return [p for p in pieces + [Piece(full[pos:], None)] if p.text]

    def _parse(self, text: str) -> Message:
        return self.parser.parse_reply(text) if self.parser else Message("assistant", text.strip())


_FAMILIES: dict[str, type[HandWrittenTemplate]] = {t.name: t for t in (ChatML, Qwen25, Llama3, GLM4, Mistral, Gemma)}
TEMPLATE_FAMILIES = tuple(_FAMILIES)


def get_template(family: str, tool_format: str = "native", tokenizer: Any = None) -> ChatTemplate:
    """A hand-written family, or `auto`: the chat template of `tokenizer` (native tool format only)."""
    if family == AutoTemplate.name:
        if tokenizer is None:
            raise ValueError("model.template=auto renders with the tokenizer's chat template: pass the tokenizer")
        if tool_format != "native":
            raise ValueError(f"model.template=auto has no tool format {tool_format!r}: an official template "
                             "knows only its own; use a hand-written family for tool_format=custom")
        return AutoTemplate(tokenizer)
    if family not in _FAMILIES:
        raise ValueError(f"unknown chat template family {family!r}; allowed: "
                         f"{', '.join((AutoTemplate.name,) + TEMPLATE_FAMILIES)}")
    return _FAMILIES[family](tool_format)

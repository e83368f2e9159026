"""The one in-memory shape every reader produces and every chat template renders.

Readers turn each file format into `Conversation`s; templates turn a `Conversation`
into text pieces tagged with the role that may carry loss. Keeping one shape means a
new format or a new model family is one function, not a new pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Keys of `data.train_on`: which kinds of turn carry loss.
TRAINABLE_KINDS = ("assistant", "call", "user", "system", "tool")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Message:
    """One turn. `role` is one of system, user, assistant, tool.

    An assistant turn is either a text reply (`content`) or a function call
    (`tool_calls` non-empty, `content` empty). A tool turn carries the function's
    result as text in `content` and the function's `name`.
    """

    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None

    @property
    def kind(self) -> str:
        """The `data.train_on` key of this turn: a call is its own kind."""
        return "call" if self.role == "assistant" and self.tool_calls else self.role


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style function schemas
    source: str = ""  # "path:line" it came from, for error messages

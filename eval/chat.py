"""A chat session with a tuned model that may call `search_hotels`.

Each user line is answered by generating turns until the model replies in text: a call is
run against the hotel database and its records are fed back in the tool (observation)
role, rendered by the same template as training. A malformed call or bad arguments are
answered with an `{"error": ...}` observation so the model can try again; nothing the model
writes stops the session.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from data.conversation import Message, ToolCall
from data.templates import CALL_ROLE
from eval.generate import TurnGenerator
from eval.hotel_db import QueryError, query

TOOL_NAME = "search_hotels"


@dataclass
class Event:
    """Something to show: the model's call, the records it got, an error, or its reply."""

    kind: str  # call | records | error | assistant
    text: str
    records: list[dict[str, Any]] = field(default_factory=list)


def format_event(event: Event) -> str:
    lines = [f"{event.kind}: {event.text}"]
    lines += [f"  - {h['name']} | {h.get('type')} | price {h.get('price')} | rating {h.get('rating')} | "
              f"{h.get('phone', '')}" for h in event.records]
    return "\n".join(lines)


class ChatSession:
    """The dialogue so far and the loop that answers one user line.

    `generate` gives the model's next turn: in process (eval.generate.TemplateGenerator, which
    tests script) or from a server (eval.served.ServedGenerator).
    """

    def __init__(self, generate: TurnGenerator, tools: Sequence[dict], db: list[dict[str, Any]],
                 system: str | None = None, max_calls: int = 3):
        self.generate, self.tools, self.db = generate, list(tools), db
        self.system, self.max_calls = system, max_calls
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [Message("system", self.system)] if self.system else []

    def _next_turn(self) -> tuple[str, Message]:
        generated = self.generate([(self.messages, self.tools)])[0]
        return generated.raw, generated.message

    def _run(self, call: ToolCall) -> tuple[str, Event]:
        """(observation content, event to show) for one call."""
        name = TOOL_NAME if call.name == CALL_ROLE else call.name  # the custom format names every call `search`
        try:
            if name != TOOL_NAME:
                raise QueryError(f"unknown function {name!r}; available: {TOOL_NAME}")
            records = query(self.db, call.arguments)
        except QueryError as err:
            return json.dumps({"error": str(err)}, ensure_ascii=False), Event("error", str(err))
        return json.dumps(records, ensure_ascii=False), Event("records", f"{len(records)} found", records)

    def send(self, text: str) -> list[Event]:
        """Answer one user line: the model's calls, their results, and its reply."""
        self.messages.append(Message("user", text))
        events: list[Event] = []
        calls_made = 0
        while True:
            raw, msg = self._next_turn()
            if msg.role == "assistant" and not msg.tool_calls:
                self.messages.append(msg)
                return events + [Event("assistant", msg.content)]
            if calls_made == self.max_calls:
                return events + [Event("error", f"no reply after {self.max_calls} function calls; ask again")]
            calls_made += 1
            if msg.role == "invalid":
                problem = f"malformed function call: {raw.strip()}"
                events += [Event("call", raw.strip()), Event("error", problem)]
                self.messages += [Message("assistant", raw.strip()),
                                  Message("tool", json.dumps({"error": problem}, ensure_ascii=False), name=TOOL_NAME)]
                continue
            self.messages.append(msg)
            for call in msg.tool_calls:
                content, result = self._run(call)
                events += [Event("call", f"{call.name} {json.dumps(call.arguments, ensure_ascii=False)}"), result]
                self.messages.append(Message("tool", content, name=TOOL_NAME))

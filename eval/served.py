"""The next turn from an OpenAI-compatible server (`serve.url`): the other implementation of `TurnGenerator`.

The dialogue goes out as chat messages with the tools (the server renders them with the exported training
template); calls come back as the server parsed them (`tool_calls`), replies as `content`. A reply that still
holds call markup (the server's parser could not read it) is parsed by the training template, so a malformed
call counts as invalid exactly as in process. `transformers serve` answers a call its response template cannot
parse with HTTP 400 ("... could not parse ..."): that turn is an invalid call too.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from data.conversation import Message, ToolCall
from data.templates import hf_messages
from eval.generate import GenerationSettings, Generated, History
from models.serve import openai_client


def chat_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as the OpenAI chat API takes them: call arguments as JSON strings (written as the templates'
    `tojson` writes them, so a template that inserts the string renders what training rendered)."""
    out = hf_messages(messages)
    for msg in out:
        for call in msg.get("tool_calls", ()):
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"], ensure_ascii=False)
    return out


def _call(function: Any) -> ToolCall | None:
    try:
        arguments = json.loads(function.arguments)
    except (json.JSONDecodeError, TypeError):
        return None
    return ToolCall(function.name, arguments) if isinstance(arguments, dict) and function.name else None


class ServedGenerator:
    """Turns from `model` at `url`, greedy unless `settings.do_sample`; `settings.batch_size` requests at a time."""

    def __init__(self, url: str, model: str | None, settings: GenerationSettings,
                 parse_text: Callable[[str], Message], api_key: str = "EMPTY", timeout: float = 600):
        import openai

        self.client = openai_client(url, api_key, timeout=timeout, max_retries=2)
        try:
            served = [m.id for m in self.client.models.list()]
        except (openai.APIConnectionError, openai.APIStatusError) as err:
            raise ValueError(f"serve.url={url}: no OpenAI-compatible server answers {url}/models ({err})") from None
        if model is None and len(served) != 1:
            raise ValueError(f"serve.url={url} serves {', '.join(served) or 'no model'}; choose one with serve.model=")
        if model is not None and model not in served:
            raise ValueError(f"serve.model={model}: {url} serves {', '.join(served)}")
        self.model, self.settings, self.parse_text = model or served[0], settings, parse_text

    def _sampling(self) -> dict[str, Any]:
        if self.settings.do_sample:
            return {"temperature": self.settings.temperature, "top_p": self.settings.top_p}
        return {"temperature": 0.0}

    def _one(self, history: History) -> Generated:
        import openai

        messages, tools = history
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=chat_messages(messages), max_tokens=self.settings.max_new_tokens,
                **({"tools": list(tools)} if tools else {}), **self._sampling())
        except openai.BadRequestError as err:
            detail = err.response.text  # openai 3.x keeps the body out of str(err)
            if "could not parse" not in detail:
                raise
            return Generated(f"(the server could not parse the turn: {detail})", Message("invalid", detail))
        reply = response.choices[0].message
        if reply.tool_calls:
            calls = [_call(c.function) for c in reply.tool_calls]
            raw = json.dumps([{"name": c.function.name, "arguments": c.function.arguments} for c in reply.tool_calls],
                             ensure_ascii=False)
            message = Message("invalid", raw) if None in calls else Message("assistant", tool_calls=tuple(calls))
            return Generated(raw, message)
        return Generated(reply.content or "", self.parse_text(reply.content or ""))

    def __call__(self, histories: Sequence[History], desc: str | None = None) -> list[Generated]:
        with ThreadPoolExecutor(max(1, self.settings.batch_size)) as pool:
            return list(tqdm(pool.map(self._one, histories), total=len(histories), desc=desc, disable=desc is None,
                             dynamic_ncols=True))

"""The next turn after a dialogue: the interface chat and evaluation ask it through (`TurnGenerator`), and its
in-process implementation, batched generation of one turn per prompt: left-padded, KV cache, stopping at the
template's end of turn. (eval/served.py asks an OpenAI-compatible server instead.)

Prompts are text rendered by a chat template (BOS strings included), so they are
tokenised without special tokens, exactly as training tokenised them. Unlike the packed
training forward (no attention mask, restarting positions), generation is an ordinary
padded batch: left padding plus an attention mask, from which transformers derives the
positions.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from data.conversation import Message
from data.templates import ChatTemplate

History = tuple[Sequence[Message], Sequence[dict]]  # the dialogue so far and the tools offered in it


@dataclass(frozen=True)
class Generated:
    raw: str  # the turn as generated (in process) or as the server answered it (its calls as JSON)
    message: Message  # parsed: a reply, a call, or role "invalid"


class TurnGenerator(Protocol):
    """The model's next turn after each history: what eval/chat.py and eval/turns.py ask."""

    def __call__(self, histories: Sequence[History], desc: str | None = None) -> list[Generated]: ...


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "GenerationSettings":
        """From an `EvalConfig` (or anything with the same fields)."""
        return cls(cfg.max_new_tokens, cfg.batch_size, cfg.do_sample, cfg.temperature, cfg.top_p)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]) -> tuple[list[int], list[str]]:
    """(ids of stop strings that are single tokens, stop strings that are not).

    The tokenizer's eos is added: a model trained elsewhere may end its turn with it.
    """
    ids, texts = [], []
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
        else:
            texts.append(text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids)), texts


def _decode_turn(tokenizer: PreTrainedTokenizerBase, ids: list[int], stop_ids: Sequence[int],
                 stop_texts: Sequence[str]) -> str:
    """The generated text before the first stop token or multi-token stop string. A turn cut by the token limit
    inside a multi-byte character ends before it (its bytes decode to U+FFFD), as vLLM returns it: it holds back
    the bytes of an unfinished character (`transformers serve` sends the U+FFFD)."""
    stopped = next((i for i, token in enumerate(ids) if token in stop_ids), None)
    text = tokenizer.decode(ids[:stopped], skip_special_tokens=False)
    end = min([i for i in (text.find(s) for s in stop_texts) if i >= 0], default=None)
    return text[:end] if stopped is not None or end is not None else text.rstrip("\ufffd")


@torch.no_grad()
def generate_turns(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   stop_strings: Sequence[str], settings: GenerationSettings,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   desc: str | None = None) -> list[str]:
    """One generated turn per prompt, decoded up to (not including) its end-of-turn marker.

    Prompts are batched longest first (less padding); results come back in prompt order.
    Special tokens are kept in the decoded text: some formats' call markers are special.
    """
    stop_ids, stop_texts = stop_token_ids(tokenizer, stop_strings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} \
        if settings.do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(prompts)
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    for batch in tqdm(batches, desc=desc, disable=desc is None, dynamic_ncols=True):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]):] = 1
        with autocast():
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=settings.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                use_cache=True, **({"stop_strings": stop_texts, "tokenizer": tokenizer} if stop_texts else {}),
                **sampling)
        for row, i in enumerate(batch):
            outputs[i] = _decode_turn(tokenizer, generated[row, width:].tolist(), stop_ids, stop_texts)
    model.train(was_training)
    return outputs


class TemplateGenerator:
    """In process: each history rendered by the training template, the turns completed by `complete`
    (prompts, progress label → texts) and parsed by the template."""

    def __init__(self, template: ChatTemplate, complete: Callable[[list[str], str | None], list[str]]):
        self.template, self.complete = template, complete

    def __call__(self, histories: Sequence[History], desc: str | None = None) -> list[Generated]:
        texts = self.complete([self.template.prompt(messages, tools) for messages, tools in histories], desc)
        return [Generated(text, self.template.parse_reply(text)) for text in texts]


def model_generator(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                    settings: GenerationSettings,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                    ) -> TemplateGenerator:
    """`generate_turns` on a loaded model behind the `TurnGenerator` interface."""
    return TemplateGenerator(template, lambda prompts, desc: generate_turns(
        model, tokenizer, prompts, template.stop_strings, settings, autocast, desc))

"""Against the official chat templates and real tokenizers: what a server renders is what training saw.

Tokenizers come from public registries (tests/real_tokenizers.py); the official templates
are the copies in data/chat_templates/ (sources in its README). 30 hotel test dialogues,
read as training reads them (search_hotels tool, default system prompt).
"""
from __future__ import annotations

import json
from functools import lru_cache

import pytest

from data.conversation import Conversation
from data.encoding import encode_conversation, encode_messages
from data.templates import NotPrefixStable, get_template, hf_messages
from real_tokenizers import REAL_TOKENIZERS, ROOT, hotel_dialogues, load_real_tokenizer, official_template

TOOL_TOKENIZERS = ("qwen2.5", "qwen3", "llama3.1")  # templates that render tools
TRAIN_ON = ["assistant", "call"]


@lru_cache(maxsize=None)
def tokenizer(name: str):
    return load_real_tokenizer(name)


@lru_cache(maxsize=None)
def dialogues() -> tuple[Conversation, ...]:
    return tuple(hotel_dialogues(30))


def text_only(conv: Conversation, system: bool = True) -> Conversation:
    """The dialogue without its tool turns (and system prompt): for templates without tools."""
    kept = [m for m in conv.messages if m.kind not in ("call", "tool") and (system or m.role != "system")]
    return Conversation(kept, [], conv.source)


def alternating(conv: Conversation) -> bool:
    roles = [m.role for m in conv.messages if m.role != "system"]
    return all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))


@lru_cache(maxsize=None)
def text_dialogues(system: bool = True) -> tuple[Conversation, ...]:
    return tuple(c for c in (text_only(d, system) for d in dialogues()) if alternating(c))


def cases(name: str) -> tuple[Conversation, ...]:
    """Dialogues the tokenizer's own template can render: with tools where it has them."""
    if name in TOOL_TOKENIZERS:
        return dialogues()
    return text_dialogues(system=name != "gemma2")  # Gemma 2's template rejects a system turn


def runs(ids: list[int], flags: list[int]) -> list[list[int]]:
    """Consecutive trained token runs."""
    out, current = [], []
    for i, f in zip(ids, flags):
        if f:
            current.append(i)
        elif current:
            out, current = out + [current], []
    return out + [current] if current else out


def official_bodies(template, conv: Conversation) -> list[str]:
    """Each trained turn's text as the official rendering has it: render(messages[:k+1]) minus the prompt."""
    bodies, messages = [], conv.messages
    for k, msg in enumerate(messages):
        if msg.kind in TRAIN_ON:
            prompt, full = template.prompt(messages[:k], conv.tools), template._full_text(messages[:k + 1], conv.tools)
            bodies.append(template._body_pieces(full[len(prompt):], msg.kind)[0].text)
    return bodies


# ---- real tokenizers through model.template=auto ------------------------------------------------------

@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_special_tokens_are_single_ids(name):
    tok = tokenizer(name)
    template = get_template("auto", tokenizer=tok)
    specials = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special}
    for conv in cases(name)[:10]:
        text = template.prompt(conv.messages, conv.tools)
        used = {s for s in specials if s in text}
        assert used, "the rendering uses no special token at all"
        for s in used | set(template.stop_strings):
            assert len(tok.encode(s, add_special_tokens=False)) == 1, s
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert sum(ids.count(tok.convert_tokens_to_ids(s)) for s in used) == sum(text.count(s) for s in used)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_trained_tokens_are_the_assistant_bodies(name):
    """Token level: each trained run decodes to the turn's official text and ends with the end-of-turn token;
    render → encode → decode gives the rendered text back."""
    tok = tokenizer(name)
    template = get_template("auto", tokenizer=tok)
    end_of_turn = tok.convert_tokens_to_ids(template.stop_strings[0])
    for conv in cases(name)[:15]:
        samples = encode_conversation(conv, template, tok, TRAIN_ON, 100_000, "error")
        bodies = official_bodies(template, conv)
        trained = [r for s in samples for r in runs(s.input_ids, s.trained)]
        assert [tok.decode(r, skip_special_tokens=False) for r in trained] == bodies
        assert all(r[-1] == end_of_turn for r in trained)
        for sample in samples:
            text = tok.decode(sample.input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            assert tok(text, add_special_tokens=False)["input_ids"] == sample.input_ids
        if len(samples) == 1:  # one pass: the sample is the official rendering of the whole dialogue
            assert text == template._full_text(conv.messages, conv.tools)


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_served_prompt_is_the_trained_prefix(name):
    """For every assistant turn k, the official prompt (messages[:k] + generation prompt) is exactly the text
    before turn k in the sample that trains it — one pass where prefix-stable, per turn elsewhere."""
    tok = tokenizer(name)
    template = get_template("auto", tokenizer=tok)
    for conv in cases(name)[:15]:
        samples = encode_conversation(conv, template, tok, TRAIN_ON, 100_000, "error")
        turns = [k for k, m in enumerate(conv.messages) if m.kind in TRAIN_ON]
        for i, k in enumerate(turns):
            served = tok.apply_chat_template(hf_messages(conv.messages[:k]), tools=conv.tools or None,
                                             tokenize=False, add_generation_prompt=True)
            sample = samples[0] if len(samples) == 1 else samples[i]
            start = [j for j, f in enumerate(sample.trained) if f and (j == 0 or not sample.trained[j - 1])]
            before = sample.input_ids[:start[i if len(samples) == 1 else 0]]
            assert tok.decode(before, skip_special_tokens=False, clean_up_tokenization_spaces=False) == served


@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_only_qwen3_is_not_prefix_stable(name):
    """Qwen3 renders a reasoning block only in turns after the last user query, so once a dialogue goes on,
    earlier turns change: every hotel dialogue goes per turn. The other templates are prefix-stable."""
    template = get_template("auto", tokenizer=tokenizer(name))
    unstable = 0
    for conv in cases(name):
        try:
            template.render(conv.messages, conv.tools)
        except NotPrefixStable:
            unstable += 1
    assert unstable == (len(cases(name)) if name == "qwen3" else 0)


@pytest.mark.parametrize("name, multi_turn, per_turn_dialogues", [("qwen3", "one_pass", 8), ("qwen2.5", "one_pass", 0),
                                                                 ("qwen2.5", "per_turn", 0)])
def test_split_counts_the_dialogues_trained_per_turn(name, multi_turn, per_turn_dialogues, tmp_path):
    from data.config import DataConfig
    from data.dataset import load_split

    train = tmp_path / "train.jsonl"
    train.write_text("".join((ROOT / "data/assets/hotel/test.jsonl").open(encoding="utf-8").readlines()[:8]),
                     encoding="utf-8")
    cfg = DataConfig(train=str(train), tools=[str(ROOT / "data/assets/hotel/search_hotels.json")],
                     multi_turn=multi_turn, cache_dir=str(tmp_path / "cache"))
    split = load_split(str(train), cfg, get_template("auto", tokenizer=tokenizer(name)), tokenizer(name), 8192)
    turns = sum(m.kind in TRAIN_ON for c in dialogues()[:8] for m in c.messages)
    assert split.per_turn_fallback == per_turn_dialogues
    assert split.stats.documents == (8 if multi_turn == "one_pass" and not per_turn_dialogues else turns)
    assert ("8 of 8 dialogues trained per turn" in split.report("train")) == bool(per_turn_dialogues)


def test_template_without_tools_refuses_tool_dialogues():
    """SmolLM2's official template ignores `tools` and drops calls: training tool turns on it would not be what
    it serves, so auto says so (model.template=chatml is the way out)."""
    template = get_template("auto", tokenizer=tokenizer("smollm2"))
    assert not template.supports_tools and template.stop_strings == ("<|im_end|>",)
    with pytest.raises(ValueError, match="ignores tools or drops tool calls.*model.template=chatml"):
        template.render(dialogues()[0].messages, dialogues()[0].tools)
    # its default system prompt is rendered, and untrained, when a dialogue has none
    conv = text_dialogues(system=False)[0]
    assert template.prompt(conv.messages[:1]).startswith("<|im_start|>system\nYou are a helpful AI assistant named")


@pytest.mark.parametrize("name, family", [("qwen2.5", "qwen2.5"), ("llama3.1", "llama3"), ("smollm2", "chatml"),
                                          ("gemma2", "gemma")])
def test_auto_and_the_hand_written_family_agree(name, family):
    """Where both apply, the hand-written family trains exactly the tokens auto trains."""
    tok = tokenizer(name)
    auto, hand = get_template("auto", tokenizer=tok), get_template(family)
    for conv in cases(name):
        a = encode_messages(conv.messages, conv.tools, auto, tok, TRAIN_ON)
        h = encode_messages(conv.messages, conv.tools, hand, tok, TRAIN_ON)
        assert (a.input_ids, a.trained) == (h.input_ids, h.trained), conv.source
        for body, msg in zip(official_bodies(auto, conv), [m for m in conv.messages if m.kind in TRAIN_ON]):
            assert auto.parse_reply(body) == hand.parse_reply(body) == msg  # calls read back in the template's format


def test_per_turn_samples_are_the_official_rendering():
    """Qwen3: each per-turn sample is render(messages[:k+1]) exactly, with only turn k trained."""
    tok = tokenizer("qwen3")
    template = get_template("auto", tokenizer=tok)
    conv = dialogues()[0]
    samples = encode_conversation(conv, template, tok, TRAIN_ON, 100_000, "error")
    turns = [k for k, m in enumerate(conv.messages) if m.kind in TRAIN_ON]
    assert len(samples) == len(turns) and all(s.per_turn_fallback for s in samples)
    for k, sample in zip(turns, samples):
        official = tok.apply_chat_template(hf_messages(conv.messages[:k + 1]), tools=conv.tools, tokenize=False)
        assert sample.input_ids == tok(official, add_special_tokens=False)["input_ids"]
        assert len(runs(sample.input_ids, sample.trained)) == 1


# ---- hand-written families against the official templates, byte for byte -----------------------------

def glm_items(messages, tools) -> list[dict]:
    """Messages in the form glm-4-9b-chat's template takes: tools on a system item, calls as name metadata."""
    rest = list(messages)
    system = rest.pop(0).content if rest and rest[0].role == "system" else None
    items = ([{"role": "system", "content": "", "tools": tools}] if tools else []) + \
        ([{"role": "system", "content": system, "metadata": ""}] if system else [])
    for m in rest:
        if m.tool_calls:
            items += [{"role": "assistant", "metadata": c.name, "content": json.dumps(c.arguments, ensure_ascii=False)}
                      for c in m.tool_calls]
        else:
            items.append({"role": "observation" if m.role == "tool" else m.role, "content": m.content, "metadata": ""})
    return items


def gemma3_items(messages) -> list[dict]:
    """Gemma 3's template (this copy) reads the system prompt as a list of text parts."""
    items = hf_messages(messages)
    if items and items[0]["role"] == "system":
        items[0] = {"role": "system", "content": [{"type": "text", "text": items[0]["content"]}]}
    return items


OFFICIAL = {  # hand-written family: (official template file, dialogues it applies to, message form)
    "qwen2.5": ("qwen2_5.jinja", "tools", hf_messages),
    "chatml": ("qwen2_5.jinja", "tools", hf_messages),
    "llama3": ("llama3_1.jinja", "tools", hf_messages),
    "glm4": ("glm4.jinja", "tools", glm_items),
    "gemma": ("gemma3.jinja", "text", gemma3_items),
}


def parity(family: str) -> tuple[int, int]:
    """(assistant turns whose official prompt equals the hand-written trained prefix, assistant turns)."""
    file, which, form = OFFICIAL[family]
    renderer, chat_template = tokenizer("llama3.1"), official_template(file)  # any tokenizer renders; bos from llama
    bos = {"gemma3.jinja": "<bos>", "llama3_1.jinja": "<|begin_of_text|>"}.get(file, "")
    hand = get_template(family)
    convs = dialogues() if which == "tools" else text_dialogues()
    same = total = 0
    for conv in convs:
        trained_text = "".join(p.text for p in hand.render(conv.messages, conv.tools))
        for k, msg in enumerate(conv.messages):
            if msg.role != "assistant":
                continue
            items = form(conv.messages[:k], conv.tools) if form is glm_items else form(conv.messages[:k])
            served = renderer.apply_chat_template(items, tools=(conv.tools or None) if form is hf_messages else None,
                                                  chat_template=chat_template, tokenize=False,
                                                  add_generation_prompt=True, bos_token=bos)
            total += 1
            same += served == hand.prompt(conv.messages[:k], conv.tools) and trained_text.startswith(served)
    return same, total


@pytest.mark.parametrize("family", list(OFFICIAL))
def test_hand_written_family_matches_the_official_template(family):
    same, total = parity(family)
    assert total > 50 and same == total, f"{family}: {same}/{total}"


# ---- Mistral: mistral-common is the reference --------------------------------------------------------

def mistral_common_text(encoder, messages, tools) -> str:
    """mistral-common's v3 encoding of `messages` as text (its pieces joined: ▁ is a space, <0xNN> bytes)."""
    import re

    from mistral_common.protocol.instruct.messages import (AssistantMessage, SystemMessage, ToolMessage,
                                                           UserMessage)
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall

    from data.templates import call_ids

    out = []
    for m, ids in zip(messages, call_ids(messages)):
        if m.tool_calls:
            out.append(AssistantMessage(content=None, tool_calls=[
                ToolCall(id=i, function=FunctionCall(name=c.name, arguments=json.dumps(c.arguments, ensure_ascii=False)))
                for i, c in zip(ids, m.tool_calls)]))
        elif m.role == "tool":
            out.append(ToolMessage(content=m.content, tool_call_id=ids[0]))
        else:
            out.append({"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}[m.role](
                content=m.content))
    request = ChatCompletionRequest(messages=out, tools=[Tool(function=Function(**t["function"])) for t in tools])
    text = encoder.encode_chat_completion(request).text
    text = re.sub(r"(?:<0x[0-9A-F]{2}>)+",
                  lambda run: bytes(int(h, 16) for h in re.findall(r"<0x([0-9A-F]{2})>", run.group(0))).decode(), text)
    return text.replace("\u2581", " ")


def test_mistral_matches_mistral_common():
    """Every assistant turn's served prompt (mistral-common's encoding of the history) is the text before it in
    the sample that trains it: one pass for the 4 single-user dialogues, per turn for the 26 others."""
    from real_tokenizers import mistral_v3

    encoder, template = mistral_v3(), get_template("mistral")
    per_turn = turns = 0
    for conv in dialogues():
        try:
            whole = "".join(p.text for p in template.render(conv.messages, conv.tools))
        except NotPrefixStable:
            whole, per_turn = None, per_turn + 1
        for k, msg in enumerate(conv.messages):
            if msg.role != "assistant":
                continue
            turns += 1
            sample = whole or "".join(p.text for p in template.render_turn(conv.messages, conv.tools, k))
            served = mistral_common_text(encoder, conv.messages[:k], conv.tools)
            assert served == template.prompt(conv.messages[:k], conv.tools) and sample.startswith(served), k
    assert (per_turn, turns) == (26, 106)

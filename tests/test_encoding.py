"""Exactly the intended tokens are trained, and training renders what inference renders."""
import json

import pytest

from data.conversation import Conversation, Message, ToolCall
from data.encoding import encode_conversation, encode_messages
from data.errors import DataError
from data.templates import NotPrefixStable, get_template
from models.build_tokenizer import build_bpe_tokenizer

TOOLS = [json.loads(open("data/assets/hotel/search_hotels.json", encoding="utf-8").read())]
DIALOGUE = [
    Message("system", "你是一个酒店预订助手。"),
    Message("user", "你好，请帮我找一家提供无烟房的舒适型酒店。"),
    Message("assistant", tool_calls=(ToolCall("search_hotels", {"facilities": ["无烟房"], "type": "舒适型"}),)),
    Message("tool", '[{"name": "北京红驿栈酒店", "price": 344.0}]', name="search_hotels"),
    Message("assistant", "推荐北京红驿栈酒店，价格344元。"),
    Message("user", "电话是多少？"),
    Message("assistant", "酒店电话是010-64171066。"),
]
CASES = [("chatml", "native"), ("chatml", "custom"), ("llama3", "native"), ("llama3", "custom"),
         ("glm4", "native"), ("mistral", "native"), ("gemma", "custom")]
ONE_PASS = [c for c in CASES if c[0] != "mistral"]  # Mistral moves the tools to the last user turn


@pytest.fixture(scope="module")
def tokenizers():
    corpus = [m.content for m in DIALOGUE] + [json.dumps(TOOLS, ensure_ascii=False)] * 3
    made = {}
    for family, fmt in CASES:
        specials = get_template(family, fmt).special_tokens()
        made[family, fmt] = build_bpe_tokenizer(corpus, vocab_size=600, special_tokens=specials,
                                                chat_template=None, eos=specials[0], pad=specials[0])
    return made


@pytest.mark.parametrize("family,fmt", ONE_PASS)
def test_exactly_the_body_pieces_are_trained(tokenizers, family, fmt):
    template, tok = get_template(family, fmt), tokenizers[family, fmt]
    enc = encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call"])
    pieces = template.render(DIALOGUE, TOOLS)
    runs, current = [], []
    for token, flag in zip(enc.input_ids, enc.trained):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    trained_text = [tok.decode(r) for r in runs]
    expected, buf = [], ""
    for i, piece in enumerate(pieces):  # adjacent body pieces form one trained run
        if piece.kind in ("assistant", "call"):
            buf += piece.text
        elif buf:
            expected.append(buf)
            buf = ""
    expected += [buf] if buf else []
    assert trained_text == expected
    assert len(expected) == 3  # one call, two replies; users, system and the tool result carry no loss
    assert not any(m.content and m.content in "".join(expected) for m in DIALOGUE if m.role in ("user", "tool"))


@pytest.mark.parametrize("family,fmt", ONE_PASS)
def test_training_prefix_equals_inference_prompt(tokenizers, family, fmt):
    template, tok = get_template(family, fmt), tokenizers[family, fmt]
    enc = encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call"])
    starts = [i for i, f in enumerate(enc.trained) if f and (i == 0 or not enc.trained[i - 1])]
    turns = [k for k, m in enumerate(DIALOGUE) if m.role == "assistant"]
    assert len(starts) == len(turns)
    for k, start in zip(turns, starts):
        prompt = template.prompt(DIALOGUE[:k], TOOLS)
        assert tok(prompt, add_special_tokens=False)["input_ids"] == enc.input_ids[:start], (family, fmt, k)


def test_train_on_selects_kinds(tokenizers):
    template, tok = get_template("chatml", "native"), tokenizers["chatml", "native"]
    replies = sum(encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant"]).trained)
    calls = sum(encode_messages(DIALOGUE, TOOLS, template, tok, ["call"]).trained)
    both = sum(encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call"]).trained)
    with_users = sum(encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call", "user"]).trained)
    assert replies > 0 and calls > 0 and replies + calls == both < with_users


def test_overlong_dialogue_is_cut_at_a_turn_boundary(tokenizers):
    template, tok = get_template("chatml", "native"), tokenizers["chatml", "native"]
    conv = Conversation(DIALOGUE, TOOLS, source="f.jsonl:7")
    full = encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call"])
    first_two_replies = encode_messages(DIALOGUE[:5], TOOLS, template, tok, ["assistant", "call"])
    [cut] = encode_conversation(conv, template, tok, ["assistant", "call"], len(full.input_ids) - 1, "truncate")
    assert cut.truncated and cut.input_ids == first_two_replies.input_ids
    assert encode_conversation(conv, template, tok, ["assistant", "call"], 10, "drop") == [None]
    with pytest.raises(DataError, match=r"f\.jsonl:7: field 'messages'.*exceed train\.seq_len"):
        encode_conversation(conv, template, tok, ["assistant", "call"], 10, "error")


def test_nothing_to_train_names_the_line(tokenizers):
    template, tok = get_template("chatml", "native"), tokenizers["chatml", "native"]
    conv = Conversation([Message("user", "你好")], source="data/x.jsonl:3")
    with pytest.raises(DataError, match=r"data/x\.jsonl:3: field 'messages' nothing to train on"):
        encode_conversation(conv, template, tok, ["assistant", "call"], 100, "truncate")


@pytest.mark.parametrize("family,fmt", CASES)
def test_per_turn_gives_one_sample_per_trained_turn(tokenizers, family, fmt):
    """data.multi_turn=per_turn: sample k is the prompt before turn k (untrained) and turn k (trained)."""
    template, tok = get_template(family, fmt), tokenizers[family, fmt]
    conv = Conversation(DIALOGUE, TOOLS, source="f.jsonl:1")
    samples = encode_conversation(conv, template, tok, ["assistant", "call"], 10_000, "truncate", "per_turn")
    turns = [k for k, m in enumerate(DIALOGUE) if m.kind in ("assistant", "call")]
    assert len(samples) == len(turns) == 3
    for k, sample in zip(turns, samples):
        prompt = tok(template.prompt(DIALOGUE[:k], TOOLS), add_special_tokens=False)["input_ids"]
        assert sample.input_ids[:len(prompt)] == prompt and not any(sample.trained[:len(prompt)])
        assert sample.trained[len(prompt)] == 1 and not sample.per_turn_fallback
        trained = [i for i, t in zip(sample.input_ids, sample.trained) if t]  # exactly turn k's body
        body = "".join(p.text for p in template.render_turn(DIALOGUE, TOOLS, k) if p.kind)
        assert tok.decode(trained) == body and DIALOGUE[k].content in body
    assert encode_conversation(conv, template, tok, ["assistant"], 10, "truncate", "per_turn") == [None, None]
    with pytest.raises(ValueError, match="data.multi_turn='both'; allowed"):
        encode_conversation(conv, template, tok, ["assistant"], 10, "truncate", "both")


def test_a_dialogue_that_is_not_prefix_stable_is_trained_per_turn(tokenizers):
    """Mistral puts the tools and system prompt before the last user turn: with two user turns the one-pass
    rendering is not what the first turns were served, so one_pass falls back to the per-turn samples."""
    template, tok = get_template("mistral"), tokenizers["mistral", "native"]
    conv = Conversation(DIALOGUE, TOOLS, source="f.jsonl:1")
    with pytest.raises(NotPrefixStable):
        encode_messages(DIALOGUE, TOOLS, template, tok, ["assistant", "call"])
    fallback = encode_conversation(conv, template, tok, ["assistant", "call"], 10_000, "truncate")
    per_turn = encode_conversation(conv, template, tok, ["assistant", "call"], 10_000, "truncate", "per_turn")
    assert [(s.input_ids, s.trained) for s in fallback] == [(s.input_ids, s.trained) for s in per_turn]
    assert all(s.per_turn_fallback for s in fallback) and len(fallback) == 3
    single_user = Conversation(DIALOGUE[:5], TOOLS, source="f.jsonl:2")  # one user turn: prefix-stable
    [one] = encode_conversation(single_user, template, tok, ["assistant", "call"], 10_000, "truncate")
    assert not one.per_turn_fallback and sum(1 for i, f in enumerate(one.trained) if f and not one.trained[i - 1]) == 2

"""Chat templates: training prefix = inference prompt, bodies end where generation stops, replies parse back."""
import json
import re

import pytest

from data.conversation import Message, ToolCall
from data.templates import (CALL_ROLE, CUSTOM_TOOLS_INTRO, TEMPLATE_FAMILIES, ChatML, NotPrefixStable, Piece,
                            get_template)

CASES = [("chatml", "native"), ("chatml", "custom"), ("llama3", "native"), ("llama3", "custom"),
         ("glm4", "native"), ("glm4", "custom"), ("mistral", "native"), ("gemma", "native"), ("gemma", "custom")]
CUSTOM_CALLS = {("chatml", "custom"), ("llama3", "custom"), ("gemma", "custom")}
GENERATION_PROMPTS = {
    ("chatml", "native"): "<|im_start|>assistant\n", ("chatml", "custom"): "<|im_start|>",
    ("llama3", "native"): "<|start_header_id|>assistant<|end_header_id|>\n\n", ("llama3", "custom"): "<|start_header_id|>",
    ("glm4", "native"): "<|assistant|>", ("glm4", "custom"): "<|assistant|>", ("mistral", "native"): "",
    ("gemma", "native"): "<start_of_turn>model\n", ("gemma", "custom"): "<start_of_turn>",
}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "gemma": "<end_of_turn>"}

TOOL = {"type": "function", "function": {
    "name": "search_hotels", "description": "根据用户的需求生成查询条件来查酒店",
    "parameters": {"type": "object", "properties": {"name": {"type": "string", "description": "酒店名称"},
                                                    "price_range_upper": {"type": "number"}}, "required": []}}}
TOOL_JSON = json.dumps(TOOL, ensure_ascii=False)


def call(*arguments: dict) -> Message:
    return Message("assistant", tool_calls=tuple(ToolCall("search_hotels", a) for a in arguments))


def result(records: list) -> Message:
    return Message("tool", json.dumps(records, ensure_ascii=False), name="search_hotels")


# Every content and argument set is distinct, so each turn can be located in the rendered text.
CONVERSATIONS = {
    "text": ([Message("user", "你好"), Message("assistant", "您好，有什么可以帮您？"),
              Message("user", "推荐一家酒店"), Message("assistant", "推荐北京红驿栈酒店。")], []),
    "system": ([Message("system", "你是一个酒店预订助手。"), Message("user", "有无烟房吗？"),
                Message("assistant", "有的，很多酒店提供无烟房。"), Message("user", "谢谢"),
                Message("assistant", "不客气。")], []),
    "tools": ([Message("system", "你是酒店助手。"), Message("user", "找一家叫瑞洁宾舍的酒店"),
               call({"name": "瑞洁宾舍"}), result([{"name": "北京瑞洁宾舍民宿", "price": 249}]),
               Message("assistant", "为您查到北京瑞洁宾舍民宿，您要选择这家吗？"), Message("user", "电话是多少？"),
               Message("assistant", "电话是010-83133338。")], [TOOL]),
    "multi_call": ([Message("user", "比较两家酒店"), call({"name": "红驿栈"}, {"name": "维也纳"}),
                    result([{"name": "北京红驿栈酒店", "price": 344}]), result([{"name": "维也纳国际酒店", "price": 553}]),
                    call({"price_range_upper": 400}), result([{"found": 0}]),
                    Message("assistant", "红驿栈更便宜。"), Message("user", "再找一家"),
                    call({"name": "如家"})], [TOOL]),
    "tools_no_system_text_first": ([Message("user", "在吗"), Message("assistant", "在的。"),
                                    Message("user", "查一下如家"), call({"name": "如家快捷"}),
                                    result([{"name": "如家快捷酒店", "price": 199}]),
                                    Message("assistant", "如家快捷酒店199元。")], [TOOL]),
}


def text_of(pieces: list[Piece]) -> str:
    return "".join(p.text for p in pieces)


def marker(msg: Message) -> str:
    """A string that only this turn renders (a result's longest stretch without quotes: Llama 3.1 JSON-encodes it)."""
    if msg.role == "tool":
        return max(re.findall(r'[^"\\]+', msg.content), key=len)
    return json.dumps(msg.tool_calls[0].arguments, ensure_ascii=False) if msg.tool_calls else msg.content


def body_start(pieces: list[Piece], offset: int) -> int:
    """Index of the piece that starts at character `offset`."""
    pos = 0
    for i, piece in enumerate(pieces):
        if pos == offset:
            return i
        pos += len(piece.text)
    raise AssertionError(f"no piece starts at offset {offset}")


def body_of(pieces: list[Piece], start: int) -> str:
    kind, body = pieces[start].kind, ""
    for piece in pieces[start:]:
        if piece.kind != kind:
            break
        body += piece.text
    return body


def generated_turns():
    for family, fmt in CASES:
        for conv, (messages, tools) in CONVERSATIONS.items():
            for k, msg in enumerate(messages):
                if msg.role == "assistant":
                    yield family, fmt, conv, k


def one_pass_or_turn(template, messages, tools, k) -> list[Piece]:
    """The one-pass pieces, or turn k's per-turn sample where the template is not prefix-stable (Mistral)."""
    try:
        return template.render(messages, tools)
    except NotPrefixStable:
        return template.render_turn(messages, tools, k)


def locate(template, messages, tools, k) -> tuple[str, list[Piece], int]:
    prompt = template.prompt(messages[:k], tools)
    pieces = one_pass_or_turn(template, messages, tools, k)
    assert text_of(pieces).startswith(prompt)
    return prompt, pieces, body_start(pieces, len(prompt))


@pytest.mark.parametrize("family,fmt,conv,k", list(generated_turns()))
def test_inference_prompt_is_the_training_prefix(family, fmt, conv, k):
    messages, tools = CONVERSATIONS[conv]
    prompt, pieces, start = locate(get_template(family, fmt), messages, tools, k)
    assert pieces[start].kind == messages[k].kind
    assert all(marker(m) in prompt for m in messages[:k])
    assert marker(messages[k]) not in prompt and marker(messages[k]) in body_of(pieces, start)


@pytest.mark.parametrize("family,fmt,conv,k", list(generated_turns()))
def test_body_ends_with_the_end_of_turn_marker(family, fmt, conv, k):
    messages, tools = CONVERSATIONS[conv]
    template = get_template(family, fmt)
    _, pieces, start = locate(template, messages, tools, k)
    body = body_of(pieces, start)
    if family == "glm4":  # the model ends its turn by writing the next role token
        nxt = messages[k + 1].role if k + 1 < len(messages) else None
        end = {"user": "<|user|>", "tool": "<|observation|>",
               None: "<|observation|>" if messages[k].tool_calls else "<|user|>"}[nxt]
    else:
        end = END_OF_TURN[family]
    assert body.endswith(end) and end in template.stop_strings


@pytest.mark.parametrize("family,fmt", CASES)
def test_generation_prompt(family, fmt):
    template, messages = get_template(family, fmt), [Message("user", "你好")]
    with_prompt = text_of(template.render(messages, add_generation_prompt=True))
    without = text_of(template.render(messages))
    assert with_prompt == without + GENERATION_PROMPTS[family, fmt]


@pytest.mark.parametrize("family,fmt", CASES)
def test_every_turn_is_tagged_with_its_kind(family, fmt):
    template = get_template(family, fmt)
    for messages, tools in CONVERSATIONS.values():
        try:
            pieces = template.render(messages, tools)
        except NotPrefixStable:  # per-turn samples: each tags its own turn (test_inference_prompt_...)
            assert template.system_at_last_user
            continue
        assert all(p.text for p in pieces)
        for msg in messages:
            assert any(p.kind == msg.kind and marker(msg) in p.text for p in pieces), (msg, pieces)
        untagged = "".join(p.text for p in pieces if p.kind is None)
        assert not any(marker(m) in untagged for m in messages)


def expected_reply(family: str, fmt: str, msg: Message) -> Message:
    if (family, fmt) in CUSTOM_CALLS and msg.tool_calls:  # the custom format names every call `search`
        return Message("assistant", tool_calls=tuple(ToolCall(CALL_ROLE, c.arguments) for c in msg.tool_calls))
    return msg


@pytest.mark.parametrize("family,fmt,conv,k", list(generated_turns()))
def test_parse_reply_inverts_the_body(family, fmt, conv, k):
    messages, tools = CONVERSATIONS[conv]
    template = get_template(family, fmt)
    _, pieces, start = locate(template, messages, tools, k)
    body = body_of(pieces, start)
    expected = expected_reply(family, fmt, messages[k])
    stop = next(s for s in template.stop_strings if body.endswith(s))
    assert template.parse_reply(body) == expected
    assert template.parse_reply(body[:-len(stop)]) == expected
    assert template.parse_reply(body[:-len(stop)] + "\n") == expected
    assert template.parse_reply(body + "<junk after the stop>") == expected


@pytest.mark.parametrize("family,fmt", CASES)
def test_broken_call_json_is_invalid(family, fmt):
    template = get_template(family, fmt)
    messages, tools = CONVERSATIONS["tools"]
    _, pieces, start = locate(template, messages, tools, 2)
    body = body_of(pieces, start)
    arguments = json.dumps(messages[2].tool_calls[0].arguments, ensure_ascii=False)
    broken = body.replace(arguments, arguments[:-1])  # drop the closing brace
    assert broken != body
    reply = template.parse_reply(broken)
    assert reply.role == "invalid" and reply.content and not reply.tool_calls


@pytest.mark.parametrize("family,fmt", CASES)
def test_text_with_braces_is_a_text_reply(family, fmt):
    template = get_template(family, fmt)
    messages = [Message("user", "你好"), Message("assistant", "价格{大约}300元")]
    _, pieces, start = locate(template, messages, [], 1)
    assert template.parse_reply(body_of(pieces, start)) == messages[1]


@pytest.mark.parametrize("reply", [
    '<tool_call>\n{"name": "search_hotels", "arguments": "not an object"}\n</tool_call>',
    '<tool_call>\n{"name": "search_hotels", "arguments": {"name": "x"}}',  # never closed
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}',
    '<tool_call>\n{"arguments": {"name": "x"}}\n</tool_call>',  # no name
])
def test_chatml_malformed_calls_are_invalid(reply):
    assert get_template("chatml").parse_reply(reply).role == "invalid"


# ---- the real formats, written out ---------------------------------------------------------------

RESULT = '[{"name": "北京瑞洁宾舍民宿", "price": 249}]'
DIALOGUE = [Message("system", "你是酒店助手。"), Message("user", "找瑞洁宾舍"), call({"name": "瑞洁宾舍"}),
            result([{"name": "北京瑞洁宾舍民宿", "price": 249}]), Message("assistant", "为您查到北京瑞洁宾舍民宿。")]
CUSTOM_SYSTEM = "你是酒店助手。\n\n" + CUSTOM_TOOLS_INTRO + "\n" + TOOL_JSON
EXPECTED_HERMES_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n" + TOOL_JSON + "\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
EXPECTED = {
    ("chatml", "native"):
        "<|im_start|>system\n你是酒店助手。\n\n" + EXPECTED_HERMES_TOOLS + "<|im_end|>\n<|im_start|>user\n找瑞洁宾舍<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "search_hotels", "arguments": {"name": "瑞洁宾舍"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n" + RESULT + "\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n为您查到北京瑞洁宾舍民宿。<|im_end|>\n",
    ("chatml", "custom"):
        "<|im_start|>system\n" + CUSTOM_SYSTEM + "<|im_end|>\n<|im_start|>user\n找瑞洁宾舍<|im_end|>\n"
        '<|im_start|>search\n{"name": "瑞洁宾舍"}<|im_end|>\n<|im_start|>return\n' + RESULT + "<|im_end|>\n"
        "<|im_start|>assistant\n为您查到北京瑞洁宾舍民宿。<|im_end|>\n",
    ("llama3", "native"):  # Llama 3.1's official default: date lines, tools in the first user turn
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge "
        "Date: December 2023\nToday Date: 26 Jul 2024\n\n你是酒店助手。<|eot_id|><|start_header_id|>user"
        "<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with "
        "its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function "
        'name, "parameters": dictionary of argument name and its value}.Do not use variables.\n\n'
        + json.dumps(TOOL, ensure_ascii=False, indent=4) + "\n\n找瑞洁宾舍<|eot_id|><|start_header_id|>assistant"
        '<|end_header_id|>\n\n{"name": "search_hotels", "parameters": {"name": "瑞洁宾舍"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n" + json.dumps(RESULT, ensure_ascii=False) + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n为您查到北京瑞洁宾舍民宿。<|eot_id|>",
    ("llama3", "custom"):
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + CUSTOM_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n找瑞洁宾舍<|eot_id|><|start_header_id|>search<|end_header_id|>"
        '\n\n{"name": "瑞洁宾舍"}<|eot_id|><|start_header_id|>return<|end_header_id|>\n\n' + RESULT + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n为您查到北京瑞洁宾舍民宿。<|eot_id|>",
    ("glm4", "native"):  # glm-4-9b-chat's tools block, then the client's system prompt as a second system turn
        "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
        "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具\n## search_hotels\n\n"
        + json.dumps(TOOL["function"], ensure_ascii=False, indent=4) + "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        '<|system|>\n你是酒店助手。<|user|>\n找瑞洁宾舍<|assistant|>search_hotels\n{"name": "瑞洁宾舍"}<|observation|>\n' + RESULT
        + "<|assistant|>\n为您查到北京瑞洁宾舍民宿。<|user|>",
    ("mistral", "native"):  # mistral-common's v3 encoding: call ids, results name the call they answer
        "<s>[AVAILABLE_TOOLS] [" + TOOL_JSON + "][/AVAILABLE_TOOLS][INST] 你是酒店助手。\n\n找瑞洁宾舍[/INST]"
        '[TOOL_CALLS] [{"name": "search_hotels", "arguments": {"name": "瑞洁宾舍"}, "id": "000002000"}]</s>'
        '[TOOL_RESULTS] {"content": ' + RESULT + ', "call_id": "000002000"}[/TOOL_RESULTS] 为您查到北京瑞洁宾舍民宿。</s>',
    ("gemma", "native"):  # Gemma's turns with Qwen2.5's tools block, <tool_call> and <tool_response>
        "<bos><start_of_turn>user\n你是酒店助手。\n\n" + EXPECTED_HERMES_TOOLS + "\n\n找瑞洁宾舍<end_of_turn>\n"
        '<start_of_turn>model\n<tool_call>\n{"name": "search_hotels", "arguments": {"name": "瑞洁宾舍"}}\n'
        "</tool_call><end_of_turn>\n<start_of_turn>user\n<tool_response>\n" + RESULT + "\n</tool_response>"
        "<end_of_turn>\n<start_of_turn>model\n为您查到北京瑞洁宾舍民宿。<end_of_turn>\n",
    ("gemma", "custom"):
        "<bos><start_of_turn>user\n" + CUSTOM_SYSTEM + "\n\n找瑞洁宾舍<end_of_turn>\n"
        '<start_of_turn>search\n{"name": "瑞洁宾舍"}<end_of_turn>\n<start_of_turn>return\n' + RESULT
        + "<end_of_turn>\n<start_of_turn>model\n为您查到北京瑞洁宾舍民宿。<end_of_turn>\n",
}


@pytest.mark.parametrize("family,fmt", list(EXPECTED))
def test_renders_the_real_format(family, fmt):
    assert text_of(get_template(family, fmt).render(DIALOGUE, [TOOL])) == EXPECTED[family, fmt]


def test_aliases_render_alike():
    assert text_of(get_template("glm4", "custom").render(DIALOGUE, [TOOL])) == EXPECTED["glm4", "native"]


def test_gemma_native_text_is_gemma_3s_own():
    text = [Message("system", "你是酒店助手。"), Message("user", " 你好 "), Message("assistant", "您好。")]
    assert text_of(get_template("gemma").render(text)) == (
        "<bos><start_of_turn>user\n你是酒店助手。\n\n你好<end_of_turn>\n<start_of_turn>model\n您好。<end_of_turn>\n")


def test_chatml_pieces_tag_bodies_only():
    pieces = get_template("chatml").render([Message("user", "hi"), Message("assistant", "hello")])
    assert pieces == [Piece("<|im_start|>user\n", None), Piece("hi<|im_end|>", "user"), Piece("\n", None),
                      Piece("<|im_start|>assistant\n", None), Piece("hello<|im_end|>", "assistant"),
                      Piece("\n", None)]


def test_chatml_default_system_only_with_tools():
    messages = [Message("user", "hi")]
    assert text_of(get_template("chatml").render(messages)) == "<|im_start|>user\nhi<|im_end|>\n"
    assert text_of(get_template("chatml").render(messages, [TOOL])).startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert text_of(ChatML(default_system="Be brief.").render(messages, [TOOL])).startswith(
        "<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert repr(ChatML(default_system="Be brief.")) != repr(get_template("chatml"))  # data cache key


def test_chatml_groups_consecutive_results():
    messages, tools = CONVERSATIONS["multi_call"]
    text = text_of(get_template("chatml").render(messages[:4], tools))
    assert text.endswith("<|im_start|>user\n<tool_response>\n" + messages[2].content + "\n</tool_response>\n"
                         "<tool_response>\n" + messages[3].content + "\n</tool_response><|im_end|>\n")


def test_glm4_generation_prompt_after_a_reply_is_not_repeated():
    template = get_template("glm4")
    messages = [Message("user", "你好"), Message("assistant", "您好。")]
    assert text_of(template.render(messages, add_generation_prompt=True)).endswith("<|user|>\n你好<|assistant|>\n您好。<|assistant|>")
    assert text_of(template.render(messages)).endswith("\n您好。<|user|>")


def test_glm4_multi_call_segments():
    messages, tools = CONVERSATIONS["multi_call"]
    text = text_of(get_template("glm4").render(messages[:3], tools))
    assert text.endswith('<|assistant|>search_hotels\n{"name": "红驿栈"}<|assistant|>search_hotels\n'
                         '{"name": "维也纳"}<|observation|>\n' + messages[2].content)



def test_glm4_text_without_leading_newline_is_text():
    assert get_template("glm4").parse_reply("好的，请稍等。<|user|>") == Message("assistant", "好的，请稍等。")


def test_custom_multi_call_is_one_json_object_per_line():
    messages, tools = CONVERSATIONS["multi_call"]
    pieces = get_template("chatml", "custom").render(messages[:2], tools)
    assert pieces[-3:] == [Piece("<|im_start|>", None),
                           Piece('search\n{"name": "红驿栈"}\n{"name": "维也纳"}<|im_end|>', "call"), Piece("\n", None)]

SPECIAL_LOOKING = re.compile(r"<\|\w+\|>|\[/?[A-Z_]+\]|\[gMASK\]|<sop>|</?s>|<bos>|<eos>|<(?:start|end)_of_turn>")


@pytest.mark.parametrize("family,fmt", CASES)
def test_special_tokens_cover_the_markers(family, fmt):
    template = get_template(family, fmt)
    specials = template.special_tokens()
    assert set(template.stop_strings) <= set(specials) and len(specials) == len(set(specials))
    for messages, tools in CONVERSATIONS.values():
        used = set(SPECIAL_LOOKING.findall(template.prompt(messages, tools)))
        assert used <= set(specials), used - set(specials)


def test_system_must_reach_a_user_turn():
    for family in ("gemma", "mistral"):
        with pytest.raises(ValueError, match="in a user turn"):
            get_template(family).render([Message("system", "s"), Message("assistant", "a")])
        with pytest.raises(ValueError, match="only as the first message"):
            get_template(family).render([Message("user", "u"), Message("system", "s")])


def test_get_template_errors():
    assert set(TEMPLATE_FAMILIES) == {"chatml", "qwen2.5", "llama3", "glm4", "mistral", "gemma"}
    with pytest.raises(ValueError, match="unknown chat template family 'qwen'; allowed: auto, chatml.*gemma"):
        get_template("qwen")
    with pytest.raises(ValueError, match="'mistral' has no tool format 'custom'; allowed: native"):
        get_template("mistral", "custom")
    with pytest.raises(ValueError, match="'chatml' has no tool format 'xml'; allowed: native, custom"):
        get_template("chatml", "xml")
    with pytest.raises(ValueError, match="unknown role 'invalid'"):
        get_template("chatml").render([Message("invalid", "x")])
    with pytest.raises(ValueError, match="auto renders with the tokenizer's chat template: pass the tokenizer"):
        get_template("auto")


# ---- the Jinja template shipped with the tiny model ----------------------------------------------

def openai_style(msg: Message) -> dict:
    if msg.tool_calls:
        return {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in msg.tool_calls]}
    if msg.role == "tool":
        return {"role": "tool", "name": msg.name, "content": msg.content}
    return {"role": msg.role, "content": msg.content}


@pytest.fixture(scope="module", params=["chatml", "gemma"])
def jinja_family(request):
    """A native family with its Jinja file (chatml: the tiny tokenizer's; gemma: what model=gemma3 exports) in an
    HF tokenizer."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = get_template(request.param)
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    return template, PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template.jinja(),
                                             additional_special_tokens=template.special_tokens())


@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_jinja_template_renders_what_python_renders(jinja_family, conv):
    template, hf_tokenizer = jinja_family
    messages, tools = CONVERSATIONS[conv]
    # Gemma puts the system prompt in the first user turn: a prefix must reach one
    first = next(i for i, m in enumerate(messages) if m.role == "user") if template.system_in_first_user else 0
    for k in range(first + 1, len(messages) + 1):
        for tool_list in ([], tools) if tools else ([],):
            for generation in (False, True):
                jinja = hf_tokenizer.apply_chat_template(
                    [openai_style(m) for m in messages[:k]], tools=tool_list or None, tokenize=False,
                    add_generation_prompt=generation)
                python = text_of(template.render(messages[:k], tool_list, add_generation_prompt=generation))
                assert jinja == python, (conv, k, bool(tool_list), generation)


def test_mistral_moves_tools_and_system_to_the_last_user_turn():
    messages, tools = CONVERSATIONS["tools"]
    template = get_template("mistral")
    with pytest.raises(NotPrefixStable):
        template.render(messages, tools)
    first, last = template.prompt(messages[:2], tools), template.prompt(messages, tools)
    assert first.startswith("<s>[AVAILABLE_TOOLS]") and "[INST] 你是酒店助手。\n\n找一家叫瑞洁宾舍的酒店[/INST]" in first
    assert last.startswith("<s>[INST] 找一家叫瑞洁宾舍的酒店[/INST]")
    assert last.count("[AVAILABLE_TOOLS]") == 1 and last.endswith(
        "[/AVAILABLE_TOOLS][INST] 你是酒店助手。\n\n电话是多少？[/INST] 电话是010-83133338。</s>")

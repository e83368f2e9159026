"""Trains the embedded tiny model's byte-level BPE tokenizer (Qwen2-style) from the project's own text.

`build_bpe_tokenizer` is the reusable part; `python -m models.build_tokenizer` rebuilds the committed
assets in `models/assets/tiny_tokenizer/` from `data/assets/hotel/` plus a small inline English/JSON
corpus, with the chat template read from `data/chat_templates/chatml.jinja`.

The result is deterministic: the same texts in the same order give a byte-identical tokenizer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"
HOTEL_DIR = REPO_ROOT / "data" / "assets" / "hotel"
CHAT_TEMPLATE_PATH = REPO_ROOT / "data" / "chat_templates" / "chatml.jinja"

# Qwen2's pre-tokenizer split regex (tokenizer.json of Qwen/Qwen2.5-*).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

VOCAB_SIZE = 8192
PAD = "<|endoftext|>"
EOS = "<|im_end|>"
# Control tokens: special (skipped by decode(skip_special_tokens=True)), as in Qwen2.5.
SPECIAL_TOKENS = [PAD, "<|im_start|>", EOS]
# Qwen2.5 has <tool_call>/</tool_call> as added tokens with special=false (Qwen3 adds <tool_response>
# and </tool_response> the same way): single ids that are never split, but ordinary text on decode.
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: list[str],
    chat_template: str | None,
    eos: str,
    pad: str,
    added_tokens: list[str] | None = None,
    model_max_length: int = 4096,
):
    """Train a byte-level BPE on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    `vocab_size` counts everything: the special tokens (ids 0..n-1), the 256 byte symbols, the learned
    merges and `added_tokens` (non-special added tokens, appended last). `eos` and `pad` must be among
    `special_tokens`. There is no bos token (as in Qwen2). No normalizer (Qwen2 has NFC), so
    decode(encode(x)) == x for any string. `model_max_length` defaults to the tiny model's context.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers, Regex
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    added_tokens = list(added_tokens or [])
    for name, tok in (("eos", eos), ("pad", pad)):
        if tok not in special_tokens:
            raise ValueError(f"{name} token {tok!r} is not in special_tokens {special_tokens}")
    overlap = set(special_tokens) & set(added_tokens)
    if overlap or len(set(special_tokens)) != len(special_tokens) or len(set(added_tokens)) != len(added_tokens):
        raise ValueError(f"special_tokens and added_tokens must be distinct, got {special_tokens} / {added_tokens}")
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = len(special_tokens) + len(byte_alphabet) + len(added_tokens)
    if vocab_size < floor:
        raise ValueError(f"vocab_size {vocab_size} is below the {floor} tokens that bytes and special tokens take")

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(added_tokens),
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_strings(texts), trainer=trainer)
    if added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=pad,
        bos_token=None,
        unk_token=None,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
        chat_template=chat_template,
    )
    # Keep control tokens that are not eos/pad discoverable (e.g. <|im_start|>), as Qwen2.5 does.
    extra = [t for t in special_tokens if t not in (eos, pad)]
    if extra:
        wrapped.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=True)
    return wrapped


def _strings(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        if t:
            yield t


# ---------------------------------------------------------------------------------------------------
# The project corpus
# ---------------------------------------------------------------------------------------------------

def _dump(obj: Any) -> list[str]:
    """JSON text the way templates render it: HF's `tojson` (", " / ": ") and a compact form."""
    return [
        json.dumps(obj, ensure_ascii=False),
        json.dumps(obj, ensure_ascii=False, separators=(",", ":")),
    ]


def _dialogue_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for m in json.loads(line)["messages"]:
                if isinstance(m.get("content"), str):
                    yield m["content"]
                if "arguments" in m:
                    yield from _dump(m["arguments"])
                    yield from _dump({"name": "search_hotels", "arguments": m["arguments"]})
                if "records" in m:
                    yield from _dump(m["records"])


HOTEL_TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "search_hotels",
        "description": "根据用户的需求生成查询条件来查酒店",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "酒店名称"},
                "type": {"type": "string", "enum": ["豪华型", "经济型", "舒适型", "高档型"], "description": "酒店类型"},
                "facilities": {"type": "array", "items": {"type": "string"}, "description": "酒店能提供的设施列表"},
                "price_range_lower": {"type": "number", "minimum": 0, "description": "价格下限"},
                "price_range_upper": {"type": "number", "minimum": 0, "description": "价格上限"},
                "rating_range_lower": {"type": "number", "minimum": 0, "maximum": 5, "description": "评分下限"},
                "rating_range_upper": {"type": "number", "minimum": 0, "maximum": 5, "description": "评分上限"},
            },
            "required": [],
        },
    },
}

HOTEL_TOOL_SCHEMA_EN = {
    "type": "function",
    "function": {
        "name": "search_hotels",
        "description": "Search the hotel database with the constraints the user gave.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Part of the hotel name."},
                "type": {"type": "string", "enum": ["luxury", "budget", "comfort", "upscale"],
                         "description": "Hotel category."},
                "facilities": {"type": "array", "items": {"type": "string"},
                               "description": "Facilities the hotel must offer."},
                "price_range_lower": {"type": "integer", "minimum": 0, "description": "Lowest price, inclusive."},
                "price_range_upper": {"type": "integer", "minimum": 0, "description": "Highest price, inclusive."},
                "rating_range_lower": {"type": "number", "minimum": 0, "maximum": 5,
                                       "description": "Lowest rating, inclusive."},
                "rating_range_upper": {"type": "number", "minimum": 0, "maximum": 5,
                                       "description": "Highest rating, inclusive."},
            },
            "required": [],
        },
    },
}

# Text every prompt repeats (Qwen2.5's tool preamble, role names): weighted up so it tokenises compactly.
_PREAMBLE = """You are Qwen, created by Alibaba Cloud. You are a helpful assistant.
You are a helpful assistant.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{schema}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

_ROLE_LINES = """system
user
assistant
search
return
tool
function
observation
<|im_start|>system
<|im_start|>user
<|im_start|>assistant
<|im_start|>tool
<|im_start|>search
<|im_start|>return
<|im_end|>
<|endoftext|>
<tool_call>
</tool_call>
<tool_response>
</tool_response>
<tools>
</tools>"""

# Plain English and JSON/tool vocabulary, so that English and code-ish text does not fall apart into
# bytes. Written for this project; a few hundred short lines once split.
_ENGLISH = """The quick brown fox jumps over the lazy dog.
Hello! How can I help you today?
I am looking for a hotel in Beijing with free wifi and a gym.
Please find me a cheap hotel near the subway station.
What is the phone number of the hotel?
What is the address of the hotel?
How much does a room cost per night?
The price is 503 yuan per night and the rating is 4.2.
The hotel offers breakfast, airport pickup, laundry service and luggage storage.
Sorry, I could not find any hotel that matches your request.
Would you like me to search again with a lower rating?
Thank you, goodbye!
You're welcome. Have a nice day.
Is there anything else I can help you with?
It's a luxury hotel, and it's close to the station.
They're open 24 hours. We'll check it for you. I'd like to book a room. You've got it.
Let me search for hotels that match your constraints.
The user asked for a hotel with a rating of at least 4.5 and a price below 500.
Call the function search_hotels with the arguments the user gave.
The function returned three records. The function returned no records.
Answer the question using the records returned by the tool.
If the tool returns an empty list, relax the constraints and search again.
name type address subway phone facilities price rating hotel_id records arguments
string number integer boolean array object null true false enum items minimum maximum
description parameters properties required function tools tool_calls tool_call_id content role
messages model input output label labels input_ids attention_mask position_ids loss logits
train validation test dev eval evaluation metric accuracy precision recall f1 bleu score
epoch step steps batch batch_size learning_rate lr warmup weight_decay gradient checkpoint
config json yaml jsonl csv txt safetensors tokenizer vocab merges template chat_template
max_length max_new_tokens temperature top_p top_k do_sample eos_token pad_token bos_token
A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
a b c d e f g h i j k l m n o p q r s t u v w x y z
0 1 2 3 4 5 6 7 8 9 10 11 12 20 24 50 99 100 128 200 256 300 400 500 512 1000 1024 2048 4096
0.0 0.1 0.5 1.0 1.5 2.0 2.5 3.0 3.5 4.0 4.1 4.2 4.3 4.4 4.5 4.6 4.7 4.8 4.9 5.0
010-12345678 010-87654321 +86 2024-01-01 12:00:00 3.14159 1e-5 2e-4 -1 -100
{} [] () <> "" '' : , . ; ! ? - _ = + * / \\ | & % $ # @ ~ ` ^
{"name": "search_hotels", "arguments": {}}
{"role": "user", "content": ""}
{"role": "assistant", "content": "", "tool_calls": []}
{"role": "tool", "name": "search_hotels", "content": "[]"}
{"type": "function", "function": {"name": "", "description": "", "parameters": {}}}
[{"name": "", "type": "", "price": null, "rating": 0.0}]
if else for while return def class import from as with try except raise yield lambda None
print(json.dumps(result, ensure_ascii=False, indent=2))
Monday Tuesday Wednesday Thursday Friday Saturday Sunday
January February March April May June July August September October November December
one two three four five six seven eight nine ten first second third last next
yes no ok okay sure please thanks sorry maybe always never often sometimes
good great nice bad cheap expensive near far clean quiet comfortable convenient
hotel hotels room rooms bed breakfast pool spa sauna parking wifi internet gym bar restaurant
airport station subway metro bus taxi car train city district street road avenue exit
Beijing Shanghai China Chinese English language translate translation question answer
I would like a room for two nights, from Friday to Sunday.
Can you recommend a hotel that is close to the Forbidden City?
The hotel is about ten minutes on foot from the nearest subway exit.
Does the hotel have a swimming pool or a sauna?
Yes, it has an indoor swimming pool, a sauna and a fitness center.
No, it does not provide airport pickup, but it offers a taxi service.
Breakfast is included in the price. Parking is free for guests.
The rating of this hotel is 4.8, which is one of the highest in the area.
Here are the hotels I found: the first one is a luxury hotel, the second one is a budget hotel.
Which one would you prefer? I prefer the cheaper one.
Please tell me the price range you have in mind.
Anything between 300 and 600 yuan is fine.
Could you give me the address and the phone number, please?
Of course. The address is No. 99 Jinbao Street, Dongcheng District, Beijing.
The phone number is 010-85221888.
Is there a hotel with wifi in every room and a business center?
Sorry, there is no hotel that meets all of your requirements.
Shall I look for hotels with a slightly lower rating instead?
That would be great, thank you very much.
You are a customer service assistant for a hotel booking platform.
Use the search_hotels tool to look up hotels; never make up hotel names, prices or phone numbers.
Only call the tool when the user gives a new constraint.
Reply in the language the user writes in, and keep the answer short.
The following is a conversation between a user and an assistant.
The assistant may call functions. Function results are given in the tool turn.
Think step by step, then give the final answer.
Question: What is the capital of China? Answer: Beijing.
Question: How many days are there in a week? Answer: Seven.
The model is trained with LoRA on the query and value projections of every attention layer.
Full fine-tuning updates every parameter; LoRA trains a low-rank update instead.
The learning rate warms up for 100 steps and then decays with a cosine schedule.
Sequences are packed into blocks of 4096 tokens; the loss is computed only on assistant turns.
Evaluation reports slot precision, recall and F1 over the call arguments, and BLEU-4 on replies.
Saving checkpoint to output/checkpoint-1000 ...
Loading model from models/tiny-qwen2 ...
Error: file not found. Warning: the value is out of range. Info: done.
true, false, null, "yes", "no", [1, 2, 3], {"key": "value"}, {"a": [], "b": {}}
{"price_range_lower": 300, "price_range_upper": 600, "rating_range_lower": 4.5}
{"type": "luxury", "facilities": ["wifi", "gym", "breakfast"]}
{"name": "search_hotels", "arguments": {"type": "budget", "price_range_upper": 200}}
{"records": [], "count": 0, "error": null, "status": "ok"}
https://example.com/api/v1/hotels?city=beijing&page=2
user@example.com /home/user/data/train.jsonl C:\\Users\\data\\dev.jsonl
def search_hotels(name=None, type=None, facilities=None, price_range_lower=None):
    return [hotel for hotel in db if matches(hotel, constraints)]
for i in range(10):
    print(i, i * i, i ** 2)
x = {"id": 1, "values": [0.25, 0.5, 0.75], "ok": True}
assert result == expected, f"got {result!r}"
    - name: hotel
      path: data/assets/hotel
      split: train
# Title
## Section
* item one
* item two
1. first
2. second
| column | value |
|---|---|
| price | 503.0 |"""


def _inline_texts() -> list[str]:
    texts: list[str] = []
    for schema in (HOTEL_TOOL_SCHEMA, HOTEL_TOOL_SCHEMA_EN):
        for dumped in _dump(schema):
            texts.extend([_PREAMBLE.format(schema=dumped)] * 20)
    texts.extend([_ROLE_LINES] * 20)
    lines = _ENGLISH.splitlines()
    texts.extend(lines * 10)
    return texts


def project_texts(hotel_dir: Path = HOTEL_DIR) -> Iterator[str]:
    """The corpus the committed tokenizer is trained on, in a fixed order."""
    for split in ("train", "dev"):
        yield from _dialogue_texts(hotel_dir / f"{split}.jsonl")
    with (hotel_dir / "hotel_db.json").open(encoding="utf-8") as f:
        db = json.load(f)
    for hotel in db:
        yield from _dump(hotel)
    yield from _inline_texts()


def read_chat_template(path: Path = CHAT_TEMPLATE_PATH) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"chat template not found: {path}")
    return path.read_text(encoding="utf-8")


def build_project_tokenizer(chat_template: str | None = None):
    """The embedded tokenizer, built from the project's own text (what the CLI writes)."""
    return build_bpe_tokenizer(
        project_texts(),
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        chat_template=chat_template,
        eos=EOS,
        pad=PAD,
        added_tokens=ADDED_TOKENS,
    )


def save_tokenizer(tok, out: Path) -> None:
    """Write `tok` as tokenizer.json + tokenizer_config.json (chat template inside) + special_tokens_map.json.

    `tokenizer_class` is written as `PreTrainedTokenizerFast` so that both transformers 4 and 5 load
    tokenizer.json verbatim (`Qwen2Tokenizer` in transformers 5 would rebuild the pipeline with NFC).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("chat_template.jinja", "chat_template.json", "special_tokens_map.json", "added_tokens.json"):
        (out / stale).unlink(missing_ok=True)
    tok.save_pretrained(str(out), save_jinja_files=False)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    special = {"eos_token": tok.eos_token, "pad_token": tok.pad_token}
    extra = [t for t in tok.all_special_tokens if t not in special.values()]
    if extra:
        special["additional_special_tokens"] = extra
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.build_tokenizer", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ASSETS_DIR, help=f"output directory (default {ASSETS_DIR})")
    p.add_argument("--chat-template", type=Path, default=CHAT_TEMPLATE_PATH)
    args = p.parse_args(argv)
    os.environ.setdefault("RAYON_NUM_THREADS", "2")  # be gentle on shared machines
    t0 = time.perf_counter()
    template = read_chat_template(args.chat_template)
    tok = build_project_tokenizer(template)
    save_tokenizer(tok, args.out)
    size = (args.out / "tokenizer.json").stat().st_size
    print(f"wrote {args.out} ({len(tok)} tokens, tokenizer.json {size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

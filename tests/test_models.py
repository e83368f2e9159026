import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from models.adapters import PEFT_METHODS, apply_peft, count_parameters, describe_parameters
from models.build_tokenizer import (
    ADDED_TOKENS,
    CHAT_TEMPLATE_PATH,
    HOTEL_DIR,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    build_bpe_tokenizer,
    build_project_tokenizer,
    save_tokenizer,
)
from models.config import TINY, ModelConfig, PeftConfig
from models.loading import load_model, load_tokenizer, resolve_model_path
from models.tiny import TINY_CONFIG, TOKENIZER_ASSETS, materialize_tiny, tiny_config

ALL_MARKERS = SPECIAL_TOKENS + ADDED_TOKENS


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def shared_home(tmp_path_factory):
    """One TURNPACK_HOME for the session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("turnpack_home")


@pytest.fixture
def home(shared_home, monkeypatch):
    monkeypatch.setenv("TURNPACK_HOME", str(shared_home))
    return shared_home


@pytest.fixture
def tiny_path(home):
    return materialize_tiny()


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_ASSETS))


def _hotel_samples(n=40):
    out = []
    with (HOTEL_DIR / "train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                if "content" in m:
                    out.append(m["content"])
                elif "arguments" in m:
                    out.append(json.dumps(m["arguments"], ensure_ascii=False))
                else:
                    out.append(json.dumps(m["records"], ensure_ascii=False, indent=2))
            if len(out) >= n:
                return out
    return out


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_hotel_text_and_json_exactly(tok):
    samples = _hotel_samples() + [
        '{"name": "search_hotels", "arguments": {"price_range_lower": 300, "rating_range_lower": 4.5}}',
        "Hello, world!\r\n\ttabs  and   spaces \n\n",
        "emoji 🏨 and rare 龘 chars, decomposed e\u0301 (not NFC), NUL\x00 byte",
        "<|im_start|>user\n你好<|im_end|>\n<tool_call>\n{}\n</tool_call>",
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s


def test_special_tokens_are_single_ids_and_never_split(tok):
    assert len(tok) == VOCAB_SIZE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ALL_MARKERS}
    assert len(set(ids.values())) == len(ALL_MARKERS)
    for t, i in ids.items():
        assert tok.encode(t, add_special_tokens=False) == [i]
        glued = tok.encode(f"酒店{t}abc{t}", add_special_tokens=False)
        assert glued.count(i) == 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    # Qwen2.5: control tokens are special, the tool-call markers are ordinary added tokens
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    assert not set(ADDED_TOKENS) & set(tok.all_special_tokens)
    text = "<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == (
        "assistant\n<tool_call>x</tool_call>"
    )


def test_assets_equal_a_fresh_rebuild(tmp_path):
    template = json.loads((TOKENIZER_ASSETS / "tokenizer_config.json").read_text("utf-8"))["chat_template"]
    save_tokenizer(build_project_tokenizer(template), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_ASSETS / name).read_bytes(), (
            f"{name} differs from a rebuild: run `python -m models.build_tokenizer`"
        )
    assert (TOKENIZER_ASSETS / "tokenizer.json").stat().st_size < 2_000_000


def test_assets_carry_the_projects_chat_template(tok):
    if not CHAT_TEMPLATE_PATH.is_file():
        pytest.skip(f"{CHAT_TEMPLATE_PATH} not written yet")
    assert tok.chat_template == CHAT_TEMPLATE_PATH.read_text("utf-8"), (
        "chat template changed: run `python -m models.build_tokenizer`"
    )


def test_build_bpe_tokenizer_is_deterministic_and_sized():
    texts = ["你好，请问北京亚太花园酒店是那种类型的酒店", '{"name": "北京亚太花园酒店"}', "hello hello world"] * 5

    def build():
        return build_bpe_tokenizer(texts, 300, ["<|endoftext|>", "<|im_end|>"], None, eos="<|im_end|>",
                                   pad="<|endoftext|>")

    a, b = build(), build()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) <= 300 and a.convert_tokens_to_ids("<|endoftext|>") == 0
    s = "完全没见过的句子 with unseen words ☃"
    assert a.decode(a.encode(s)) == s  # byte-level: nothing is unknown
    with pytest.raises(ValueError, match="eos"):
        build_bpe_tokenizer(texts, 300, ["<|endoftext|>"], None, eos="<|im_end|>", pad="<|endoftext|>")


# --------------------------------------------------------------------------- tiny model

def test_tiny_dir_loads_with_auto_classes(tiny_path, home):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    assert tiny_path.is_absolute() and tiny_path.parent == home / "models"
    assert tiny_path.name.startswith("tiny-qwen2-")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path))
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == ("qwen2", 256, 688, 4)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings) == (4, 2, 4096)
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings
    assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id
    gen = GenerationConfig.from_pretrained(str(tiny_path))
    assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id
    assert TINY_CONFIG.vocab_size == tiny_config().vocab_size == len(tok)
    ids = torch.tensor([tok.encode("你好")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tiny_is_idempotent(tiny_path):
    weights = tiny_path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert materialize_tiny() == tiny_path
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in tiny_path.parent.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_tiny_has_a_few_million_parameters(tiny_path):
    model = load_model(ModelConfig(path=str(tiny_path)))
    trainable, total = count_parameters(model)
    assert 1_000_000 < total < 20_000_000 and trainable == total


def test_tiny_weights_are_seed_deterministic(tiny_path, tmp_path):
    other = materialize_tiny(tmp_path / "elsewhere")
    assert other != tiny_path and other.name == tiny_path.name
    a, b = load_file(tiny_path / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_builders_do_not_collide(tiny_path, tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(materialize_tiny(tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [results[0].name]
    a, b = load_file(tiny_path / "model.safetensors"), load_file(results[0] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- loading

def test_resolve_tiny_and_local_dirs(home, tiny_path, tmp_path, monkeypatch):
    assert resolve_model_path(ModelConfig(path=TINY)) == str(tiny_path)
    monkeypatch.chdir(tiny_path.parent)
    assert resolve_model_path(ModelConfig(path=tiny_path.name)) == str(tiny_path)
    assert resolve_model_path(ModelConfig(path="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model", "~/no-such-model-dir", "ckpts/run1",
                                  "a/b/c"])
def test_missing_local_path_is_one_clear_line(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        resolve_model_path(ModelConfig(path=path))
    msg = str(e.value)
    assert f"model.path={path}:" in msg and "does not exist" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError):
        load_model(ModelConfig(path=path))


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        resolve_model_path(ModelConfig(path=str(f)))


def test_load_model_dtype_and_cache(tiny_path):
    model = load_model(ModelConfig(path=str(tiny_path), dtype="bfloat16", attn_implementation="eager"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.use_cache is False
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="float32"):
        load_model(ModelConfig(path=str(tiny_path), dtype="fp8"))


def test_load_tokenizer_falls_back_to_eos_for_pad(tiny_path, tmp_path):
    import shutil

    d = tmp_path / "nopad"  # tokenizer files only: transformers would also read pad_token_id from config.json
    shutil.copytree(TOKENIZER_ASSETS, d)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((d / name).read_text("utf-8"))
        cfg.pop("pad_token", None)
        (d / name).write_text(json.dumps(cfg), "utf-8")
    tok = load_tokenizer(ModelConfig(path=str(d)))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert load_tokenizer(ModelConfig(path=str(tiny_path))).pad_token == "<|endoftext|>"


# --------------------------------------------------------------------------- adapters

@pytest.fixture
def tiny_model(tiny_path):
    return load_model(ModelConfig(path=str(tiny_path)))


def _lora_wrapped(model):
    from peft.tuners.lora import LoraLayer

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)})


def test_lora_trains_only_adapters_on_q_and_v(tiny_model, tiny_path):
    model = apply_peft(tiny_model, PeftConfig(method="lora", r=4, alpha=8), ModelConfig())
    assert _lora_wrapped(model) == ["q_proj", "v_proj"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 4 * 2 * 2  # layers x (q, v) x (A, B)
    assert model.peft_config["default"].base_model_name_or_path == str(tiny_path)
    ids = torch.tensor([[1, 5, 9, 200]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())
    t, total = count_parameters(model)
    assert 0 < t < total


def test_lora_all_linear_and_explicit_targets(tiny_path):
    model = apply_peft(load_model(ModelConfig(path=str(tiny_path))), PeftConfig(target_modules=["all-linear"]),
                       ModelConfig())
    assert _lora_wrapped(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    model = apply_peft(load_model(ModelConfig(path=str(tiny_path))), PeftConfig(target_modules=["o_proj"]),
                       ModelConfig(lora_target_modules=["q_proj"]))
    assert _lora_wrapped(model) == ["o_proj"]


def test_none_is_full_fine_tuning(tiny_model):
    tiny_model.requires_grad_(False)
    model = apply_peft(tiny_model, PeftConfig(method="none"), ModelConfig())
    assert model is tiny_model
    trainable, total = count_parameters(model)
    assert trainable == total


def test_unknown_method_lists_the_allowed_ones(tiny_model):
    with pytest.raises(ValueError) as e:
        apply_peft(tiny_model, PeftConfig(method="adalora"), ModelConfig())
    assert "'adalora'" in str(e.value)
    assert all(m in str(e.value) for m in PEFT_METHODS) and {"none", "lora"} <= set(PEFT_METHODS)


def test_describe_parameters_format():
    model = torch.nn.Sequential(torch.nn.Linear(10, 100), torch.nn.Linear(100, 10))  # 1,100 + 1,010
    model[0].requires_grad_(False)
    assert count_parameters(model) == (1010, 2110)
    assert describe_parameters(model) == "trainable params: 1,010 || all params: 2,110 || trainable%: 47.87"

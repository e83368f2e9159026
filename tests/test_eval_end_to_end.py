"""Evaluation on real (tiny) checkpoints: the training hook, the CLI, every eval kind, base-vs-tuned."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import HOTEL, ROOT, compose, small_hotel
from data.templates import get_template
from eval.generate import GenerationSettings, generate_turns, stop_token_ids
from eval.run import resolve_config, run_evaluation
from eval.turns import load_turns
from models.config import ModelConfig
from models.loading import load_model, load_tokenizer
from trainer.loop import Trainer

TEST_DIALOGUES = 1


def compose_inference(*overrides):
    """The config exactly as Hydra composes it for `launch/evaluate.py overrides...`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="inference", overrides=list(overrides))


def evaluate(*overrides):
    return run_evaluation(compose_inference(*overrides), overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step LoRA run (generation eval every step) and a 1-step full fine-tuning run."""
    root = tmp_path_factory.mktemp("eval_runs")
    test = root / "test.jsonl"
    test.write_text("".join((HOTEL / "test.jsonl").read_text(encoding="utf-8").splitlines(True)[:TEST_DIALOGUES]),
                    encoding="utf-8")
    common = small_hotel(root, lines=12) + [f"data.test={test}", "eval.subset=2", "eval.max_new_tokens=8"]
    Trainer(compose(*common, "train.max_steps=2", "train.eval_generate_every=1", f"output_dir={root / 'lora'}")).train()
    Trainer(compose(*common, "train.max_steps=1", "peft=none", f"output_dir={root / 'full'}")).train()
    return root


def test_training_logs_slot_f1_and_bleu_beside_dev_loss(runs):
    events = [json.loads(line) for line in (runs / "lora" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if "eval/loss" in e]
    assert [e["step"] for e in evals] == [1, 2]
    assert all({"eval/slot_f1", "eval/bleu4"} <= e.keys() for e in evals)
    assert all(0 <= e["eval/slot_f1"] <= 100 and 0 <= e["eval/bleu4"] <= 100 for e in evals)
    full_events = (runs / "full" / "metrics.jsonl").read_text()
    assert "eval/loss" in full_events and "eval/bleu4" not in full_events  # off unless asked for


def test_turns_are_every_assistant_side_turn_with_the_training_prompt(runs):
    template = get_template("chatml")
    cfg = compose(*small_hotel(runs))
    turns = load_turns(str(runs / "test.jsonl"), cfg.data, template)
    dialogues = [json.loads(line)["messages"] for line in (runs / "test.jsonl").read_text().splitlines()]
    gold = [m for d in dialogues for m in d if m["role"] in ("search", "assistant")]
    assert [t.reference["role"] for t in turns] == [m["role"] for m in gold]
    assert [t.reference.get("arguments", t.reference.get("content")) for t in turns] == \
           [m.get("arguments", m.get("content")) for m in gold]
    first = turns[0]
    assert first.prompt.startswith("<|im_start|>system\n" + cfg.data.system) and "search_hotels" in first.prompt
    assert first.prompt.endswith(f"{first.user}<|im_end|>\n<|im_start|>assistant\n")
    assert len(load_turns(str(runs / "test.jsonl"), cfg.data, template, limit=2)) == 2


def test_evaluate_cli_writes_predictions_metrics_and_the_table(runs):
    run = subprocess.run([sys.executable, "launch/evaluate.py", f"checkpoint={runs / 'lora' / 'final'}",
                          "eval.max_new_tokens=8"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = runs / "lora" / "final" / "eval" / "hotel_test"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    turns = load_turns(str(runs / "test.jsonl"), compose(*small_hotel(runs)).data, get_template("chatml"))
    assert [r["reference"] for r in lines] == [t.reference for t in turns]
    assert all(r["prediction"]["role"] in ("search", "assistant", "invalid") and "raw" in r for r in lines)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["turns"], metrics["method"], metrics["data"]) == (len(turns), "LoRA", str(runs / "test.jsonl"))
    assert {"slot_precision", "slot_recall", "slot_f1", "bleu4", "corpus_bleu4", "turn_type_accuracy", "confusion",
            "invalid_call_rate"} <= metrics.keys()
    assert "| Model | Method | BLEU-4 | SLOT-P | SLOT-R | SLOT-F1 |" in run.stdout and "| tiny | LoRA |" in run.stdout


def test_loss_truthfulqa_and_compare_on_a_full_fine_tuning_checkpoint(runs, tmp_path):
    checkpoint = runs / "full" / "checkpoints" / "step_1"  # config.yaml two levels up
    loss = evaluate(f"checkpoint={checkpoint}", "eval=loss", f"output_dir={tmp_path / 'loss'}")
    assert loss["method"] == "Full FT" and loss["tokens"] > 0 and loss["perplexity"] == pytest.approx(
        torch.tensor(loss["loss"]).exp().item(), rel=1e-5)
    tqa = evaluate(f"checkpoint={checkpoint}", "eval=truthfulqa", "eval.subset=2", f"output_dir={tmp_path / 'tqa'}")
    assert tqa["questions"] == 2 and len((tmp_path / "tqa" / "predictions.jsonl").read_text().splitlines()) == 2
    evaluate(f"checkpoint={checkpoint}", "eval.subset=1", "eval.max_new_tokens=4", "eval.compare_base=true",
             "eval.compare_n=2", f"output_dir={tmp_path / 'cmp'}")
    compare = (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
    assert compare.count("- **Base:**") == 2 and compare.count("- **Tuned:**") == 2


def test_base_model_comparison_switches_the_adapter_off(runs, tmp_path):
    evaluate(f"checkpoint={runs / 'lora' / 'final'}", "eval.subset=1", "eval.max_new_tokens=4",
             "eval.compare_base=true", "eval.compare_n=1", f"output_dir={tmp_path}")
    assert "- **Reference:** `search_hotels" in (tmp_path / "compare.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="compare_base needs checkpoint"):
        evaluate("eval.compare_base=true", "eval.subset=1", "eval.max_new_tokens=2", f"output_dir={tmp_path}",
                 f"data.test={runs / 'test.jsonl'}")


def test_saved_run_config_is_used_and_the_command_line_wins(runs, tmp_path):
    checkpoint = str(runs / "lora" / "final")
    saved = resolve_config(compose_inference(f"checkpoint={checkpoint}"), [f"checkpoint={checkpoint}"])
    assert saved.data.test == str(runs / "test.jsonl") and saved.train.seq_len == 512
    overrides = [f"checkpoint={checkpoint}", "data.test=/elsewhere.jsonl", "model=qwen2"]
    mixed = resolve_config(compose_inference(*overrides), overrides)
    assert mixed.data.test == "/elsewhere.jsonl" and mixed.data.dev == saved.data.dev and mixed.model.name == "qwen2"


def test_batched_left_padded_generation_matches_one_at_a_time():
    cfg = ModelConfig()
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    template = get_template("chatml")
    ids, texts = stop_token_ids(tokenizer, template.stop_strings)
    assert ids == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert texts == []
    prompts = ["<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n我想找一家评分4.5分以上、提供免费wifi的豪华型酒店<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n地址？<|im_end|>\n<|im_start|>assistant\n"]
    settings = GenerationSettings(max_new_tokens=6, batch_size=3)
    batched = generate_turns(model, tokenizer, prompts, template.stop_strings, settings)
    single = [generate_turns(model, tokenizer, [p], template.stop_strings, settings)[0] for p in prompts]
    assert batched == single and all("<|im_end|>" not in t for t in batched)


def test_unknown_eval_keys_fail_when_the_config_is_composed():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="bogus"):
        compose_inference("eval.bogus=1")
    with pytest.raises(ValueError, match="eval.name"):
        evaluate("eval.name=rouge", "output_dir=/nonexistent")


def test_a_turn_cut_inside_a_character_ends_before_it_as_servers_return_it():
    from eval.generate import _decode_turn

    tokenizer = load_tokenizer(ModelConfig())
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer.encode("好龘", add_special_tokens=False)  # 龘 is three byte tokens in the tiny vocabulary
    assert tokenizer.decode(ids[:2]) == "好\ufffd"
    assert _decode_turn(tokenizer, ids[:2], [stop], []) == "好"  # cut by the token limit: the partial bytes go
    assert _decode_turn(tokenizer, ids, [stop], []) == "好龘"
    assert _decode_turn(tokenizer, [*ids[:2], stop], [stop], []) == "好\ufffd"  # ended by the model: kept as made

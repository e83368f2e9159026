"""TruthfulQA MC1/MC2 on hand-made questions with a stub scorer, and the real scorer on the tiny model."""
import json
import math

import pytest
import torch

from conftest import TRUTHFULQA, tiny_variant_dir
from data.errors import DataError
from eval.truthfulqa import bos_ids, evaluate_truthfulqa, load_questions, mc1, mc2, model_scorer, prompt
from models.config import ModelConfig
from models.loading import load_model, load_tokenizer

QUESTIONS = [
    {"question": "What color is the sky?",
     "mc1_targets": {"Blue.": 1, "Green.": 0, "Red.": 0},
     "mc2_targets": {"Blue.": 1, "It is blue.": 1, "Green.": 0}},
    {"question": "Can pigs fly?",
     "mc1_targets": {"No.": 1, "Yes.": 0},
     "mc2_targets": {"No.": 1, "Yes.": 0, "Only on Tuesdays.": 0}},
]
# Log-likelihoods the stub model gives each answer (question 2's false answer wins MC1).
LLS = {"Blue.": -1.0, "Green.": -3.0, "Red.": -2.0, "It is blue.": -2.0, "No.": -2.0, "Yes.": -1.0,
       "Only on Tuesdays.": -5.0}


def test_mc1_and_mc2_follow_the_harness_definitions(tmp_path):
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(QUESTIONS), encoding="utf-8")
    asked = []

    def stub(pairs):
        asked.extend(pairs)
        return [LLS[continuation.removeprefix(" ")] for _, continuation in pairs]

    metrics, records = evaluate_truthfulqa(load_questions(path), stub)
    assert [r["mc1"] for r in records] == [1.0, 0.0]
    p_true_1 = (math.exp(-1) + math.exp(-2)) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    p_true_2 = math.exp(-2) / (math.exp(-2) + math.exp(-1) + math.exp(-5))
    assert records[0]["mc2"] == pytest.approx(p_true_1) and records[1]["mc2"] == pytest.approx(p_true_2)
    assert metrics == {"questions": 2, "mc1": pytest.approx(50.0), "mc2": pytest.approx(50 * (p_true_1 + p_true_2))}
    # the prompt is the QA primer + "Q: ...\nA:", answers are continuations after a space, each scored once
    assert asked[0] == (prompt("What color is the sky?"), " Blue.")
    assert prompt("X?").startswith("Q: What is human life expectancy in the United States?\n")
    assert prompt("X?").endswith("Barcelona, Spain.\n\nQ: X?\nA:")
    assert len(asked) == len(set(asked)) == 7


def test_ties_go_to_the_first_answer_and_mc2_is_stable_for_long_answers():
    assert mc1([-2.0, -2.0], [1, 0]) == 1.0 and mc1([-2.0, -2.0], [0, 1]) == 0.0
    assert mc2([-2000.0, -2001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))  # no underflow to 0/0


def test_the_shipped_file_has_817_questions_and_bad_files_are_named(tmp_path):
    assert len(load_questions(TRUTHFULQA)) == 817
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "mc1_targets": {"a": 0}, "mc2_targets": {"a": 1}}]))
    with pytest.raises(DataError, match=r"\[0\]\.mc1_targets"):
        load_questions(bad)


def test_model_scorer_sums_continuation_log_probs_in_batches():
    cfg = ModelConfig()
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    questions = load_questions(TRUTHFULQA, limit=3)
    pairs = [(prompt(q["question"]), " " + a) for q in questions for a in q["mc1_targets"]]
    batched = model_scorer(model, tokenizer, batch_size=4)(pairs)
    for (context, continuation), got in list(zip(pairs, batched))[:3]:  # one at a time, no padding
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(context + continuation, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            log_probs = model(ids).logits[0, :-1].log_softmax(-1)
        expected = log_probs[n_context - 1:].gather(-1, ids[0, n_context:, None]).sum().item()
        assert got == pytest.approx(expected, abs=1e-3)
    metrics, _ = evaluate_truthfulqa(questions, model_scorer(model, tokenizer, batch_size=8))
    assert metrics["questions"] == 3 and 0 <= metrics["mc1"] <= 100 and 0 < metrics["mc2"] < 100


def _manual_score(model, tokenizer, context: str, continuation: str, bos: tuple[int, ...] = ()) -> float:
    """One sequence, no padding and no cache; logits of virtual tokens (prompt tuning) dropped."""
    n_context = len(bos) + len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([[*bos, *tokenizer(context + continuation, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0, -ids.shape[1]:-1].log_softmax(-1)
    return log_probs[n_context - 1:].gather(-1, ids[0, n_context:, None]).sum().item()


def test_model_scorer_runs_the_shared_primer_once():
    cfg = ModelConfig()
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    pairs = [(prompt(q["question"]), " " + a) for q in load_questions(TRUTHFULQA, limit=2) for a in q["mc1_targets"]]
    fed, head = [], []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: fed.append(kwargs["input_ids"].numel()),
                                           with_kwargs=True)
    head_hook = model.lm_head.register_forward_pre_hook(lambda _, args: head.append(args[0].shape[:2].numel()))
    scores = model_scorer(model, tokenizer, batch_size=4)(pairs)
    hook.remove(), head_hook.remove()
    whole = sum(len(tokenizer(c + a, add_special_tokens=False)["input_ids"]) for c, a in pairs)
    primer = len(tokenizer(prompt(""), add_special_tokens=False)["input_ids"])
    assert sum(fed) < whole - (len(pairs) - 2) * primer  # the primer is fed once, not once per pair
    assert sum(head[1:]) < sum(fed[1:])  # the batches' LM head skips the questions: only answers are scored
    assert scores == pytest.approx([_manual_score(model, tokenizer, c, a) for c, a in pairs], abs=1e-4)


def test_model_scorer_gives_prompt_tuning_whole_sequences():
    from peft import PromptTuningConfig, get_peft_model

    cfg = ModelConfig()
    tokenizer = load_tokenizer(cfg)
    model = get_peft_model(load_model(cfg), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    pairs = [(prompt(q["question"]), " " + a) for q in load_questions(TRUTHFULQA, limit=1) for a in q["mc1_targets"]]
    scores = model_scorer(model, tokenizer, batch_size=2)(pairs)
    assert scores == pytest.approx([_manual_score(model, tokenizer, c, a) for c, a in pairs], abs=1e-4)


def test_gemma_models_are_scored_after_their_bos(tmp_path):
    """lm-eval-harness gives the Gemma family a BOS (it underperforms without one), other models none."""
    cfg = ModelConfig(path=str(tiny_variant_dir(tmp_path, "gemma3_text", head_dim=64)))
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    tokenizer.bos_token = tokenizer.eos_token  # the tiny tokenizer has no BOS of its own
    assert bos_ids(model, tokenizer) == [tokenizer.bos_token_id]
    assert bos_ids(load_model(ModelConfig()), tokenizer) == []
    pairs = [(prompt(q["question"]), " " + a) for q in load_questions(TRUTHFULQA, limit=1) for a in q["mc1_targets"]]
    scores = model_scorer(model, tokenizer, batch_size=4)(pairs)
    assert scores == pytest.approx([_manual_score(model, tokenizer, c, a, (tokenizer.bos_token_id,))
                                    for c, a in pairs], abs=1e-4)

"""Seed 000 §11.7's metrics, rule by rule, on hand-made predictions; re-scoring a file from the CLI."""
import json
import subprocess
import sys
from collections import Counter

import pytest
import sacrebleu
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from conftest import ROOT
from data.templates import get_template
from eval.hotel import as_turn, results_table, score_turn, sentence_bleu4, slot_items, summarize


def call(**arguments):
    return {"role": "search", "arguments": arguments}


def text(content):
    return {"role": "assistant", "content": content}


def record(reference, prediction):
    return {"reference": reference, "prediction": prediction}


def test_list_values_expand_to_one_item_per_element_and_scalars_to_one():
    items = slot_items({"type": "经济型", "facilities": ["无烟房", "wifi"], "price_range_upper": 500})
    assert items == Counter({("type", "string", "经济型"): 1, ("facilities", "string", "无烟房"): 1,
                             ("facilities", "string", "wifi"): 1, ("price_range_upper", "number", 500.0): 1})


def test_correct_items_are_the_multiset_intersection():
    score = score_turn(call(facilities=["无烟房", "无烟房", "wifi"]), call(facilities=["无烟房"] * 3))
    assert (score.slot_correct, score.slot_predicted, score.slot_gold) == (2, 3, 3)


@pytest.mark.parametrize("gold, predicted, correct", [
    (500, 500.0, 1),  # numbers compare numerically
    (4.5, 4.50, 1),
    (500, "500", 0),  # a string is not a number
    ("舒适型", "  舒适型 ", 1),  # strings compare after trimming
    ("wifi", "WIFI", 0),  # ... and exactly otherwise
    (True, 1, 0),  # a boolean is not the number 1
])
def test_value_comparison(gold, predicted, correct):
    assert score_turn(call(x=gold), call(x=predicted)).slot_correct == correct


def test_slot_scores_are_micro_averaged_over_call_turns():
    metrics, _ = summarize([
        record(call(a=1, b=2, c=3, d=4), call(a=1)),  # P 1/1, R 1/4
        record(call(a=1), call(a=1, b=2, c=3)),  # P 1/3, R 1/1
        record(text("好的"), call(a=1, b=2)),  # a reply turn: no effect on slots
    ])
    assert metrics["slot_precision"] == pytest.approx(50.0)  # 2/4 (the macro mean would be 66.7)
    assert metrics["slot_recall"] == pytest.approx(40.0)  # 2/5
    assert metrics["slot_f1"] == pytest.approx(2 * 50 * 40 / 90)


def test_a_call_answered_with_text_adds_gold_items_to_recall_only():
    metrics, scores = summarize([record(call(a=1, b=2), call(a=1, b=2)),
                                 record(call(c=3, d=4, e=5), text("我帮您查一下"))])
    assert (scores[1].slot_predicted, scores[1].slot_gold) == (0, 3)
    assert metrics["slot_precision"] == pytest.approx(100.0)
    assert metrics["slot_recall"] == pytest.approx(40.0)


def test_invalid_calls_predict_no_items_and_are_counted():
    metrics, scores = summarize([
        record(call(a=1, b=2), {"role": "search", "arguments": '{"a": 1,'}),  # arguments not valid JSON
        record(call(a=1, b=2), {"role": "invalid", "content": "<tool_call>\n{oops"}),
        record(call(a=1, b=2), {"role": "search", "arguments": '{"a": 1}'}),  # JSON text that is an object: valid
        record(text("好的"), text("好的")),
    ])
    assert [s.invalid for s in scores] == [True, True, False, False]
    assert [s.slot_predicted for s in scores[:3]] == [0, 0, 1]
    assert metrics["invalid_calls"] == 2
    assert metrics["invalid_call_rate"] == pytest.approx(200 / 3)  # of the 3 predicted calls
    assert metrics["slot_recall"] == pytest.approx(100 / 6)
    assert metrics["confusion"]["call"] == {"call": 3, "text": 0}  # an invalid call is still a call


def test_bleu_is_character_level_nltk_method3_and_zero_for_a_call():
    reference, hypothesis = "地址在北京西城区白广路7号。", "地址在北京白广路7号"
    expected = 100 * sentence_bleu([list(reference)], list(hypothesis), smoothing_function=SmoothingFunction().method3)
    assert sentence_bleu4(reference, hypothesis) == pytest.approx(expected)
    assert 0 < expected < 100
    assert sentence_bleu4("地址 在北京", "地址在 北京") == pytest.approx(100.0)  # whitespace is not a character
    metrics, scores = summarize([record(text(reference), text(hypothesis)),
                                 record(text(reference), call(name="x")),
                                 record(text(reference), {"role": "invalid", "content": reference})])
    assert [s.bleu4 for s in scores[1:]] == [0.0, 0.0]
    assert metrics["bleu4"] == pytest.approx(expected / 3)
    corpus = sacrebleu.corpus_bleu([hypothesis, "", ""], [[reference] * 3], tokenize="zh").score
    assert metrics["corpus_bleu4"] == pytest.approx(corpus)


def test_turn_type_accuracy_and_confusion():
    metrics, _ = summarize([record(call(a=1), call(a=1)), record(call(a=1), text("x")),
                            record(text("y"), text("y")), record(text("y"), text("z")), record(text("y"), call(a=1))])
    assert metrics["confusion"] == {"call": {"call": 1, "text": 1}, "text": {"call": 1, "text": 2}}
    assert metrics["turn_type_accuracy"] == pytest.approx(60.0)
    assert (metrics["turns"], metrics["call_turns"], metrics["text_turns"]) == (5, 2, 3)


def test_metrics_without_turns_of_a_kind_are_none_and_shown_as_a_dash():
    metrics, _ = summarize([record(text("好的，谢谢"), text("好的，谢谢"))])
    assert metrics["slot_f1"] is None and metrics["bleu4"] == pytest.approx(100.0)
    table = results_table([("tiny", "LoRA", metrics)]).splitlines()
    assert table[0] == "| Model | Method | BLEU-4 | SLOT-P | SLOT-R | SLOT-F1 |"
    assert table[2] == "| tiny | LoRA | 100.00 | – | – | – |"


@pytest.mark.parametrize("family, tool_format, call_text", [
    ("chatml", "native", '<tool_call>\n{"name": "search_hotels", "arguments": {"type": "经济型"}}\n</tool_call>'),
    ("chatml", "custom", 'search\n{"type": "经济型"}'),
    ("llama3", "native", '{"name": "search_hotels", "parameters": {"type": "经济型"}}'),
    ("glm4", "native", 'search_hotels\n{"type": "经济型"}'),
    ("mistral", "native", '[TOOL_CALLS] [{"name": "search_hotels", "arguments": {"type": "经济型"}}]'),
])
def test_generated_turns_are_classified_by_the_templates_own_call_format(family, tool_format, call_text):
    template = get_template(family, tool_format)
    stop = template.stop_strings[0]
    predicted = as_turn(template.parse_reply(call_text + stop + "garbage after the end of turn"))
    assert predicted["role"] == "search" and predicted["arguments"] == {"type": "经济型"}
    assert as_turn(template.parse_reply("好的，没问题。" + stop)) == {"role": "assistant", "content": "好的，没问题。"}
    broken = as_turn(template.parse_reply(call_text[:-3]))
    assert broken["role"] in ("invalid", "assistant")  # truncated: never a call with made-up arguments
    assert score_turn(call(type="经济型"), predicted).slot_correct == 1


def test_cli_rescores_a_predictions_file_without_a_model(tmp_path):
    lines = [record(call(type="经济型", facilities=["wifi"]), call(type="经济型", facilities=["wifi", "早餐"])),
             record(call(name="如家"), {"role": "invalid", "content": "search\n{oops"}),
             record(text("地址在北京西城区白广路7号。"), text("地址在北京西城区白广路7号。"))]
    predictions = tmp_path / "other_system" / "predictions.jsonl"
    predictions.parent.mkdir()
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    run = subprocess.run([sys.executable, "launch/evaluate.py", f"eval.predictions={predictions}",
                          "eval.method=Prompt"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((predictions.parent / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["slot_precision"] == pytest.approx(200 / 3) and metrics["slot_recall"] == pytest.approx(200 / 3)
    assert metrics["bleu4"] == pytest.approx(100.0) and metrics["invalid_calls"] == 1
    assert "| other_system | Prompt | 100.00 | 66.67 | 66.67 | 66.67 |" in run.stdout
    assert "loading" not in run.stderr.lower()  # no model, no weights

    predictions.write_text(predictions.read_text(encoding="utf-8") + '{"reference": {"role": "bot"}}\n',
                           encoding="utf-8")
    bad = subprocess.run([sys.executable, "launch/evaluate.py", f"eval.predictions={predictions}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert f"{predictions}:4: field 'reference'" in bad.stderr

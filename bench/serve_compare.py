"""A served evaluation against the in-process one, turn by turn: `python bench/serve_compare.py <local> <served>`.

Both directories are `launch/evaluate.py` outputs (predictions.jsonl). The metrics are recomputed on both over the
turns both have (a served run of the first N turns compares with the same N in-process turns), and every differing
prediction is listed, but two kinds are counted apart: an invalid call on both sides whose text differs
(`transformers serve` answers a call it cannot parse with its parser's error, not the text), and a reply cut by the
token limit inside a character that differs only by that partial character (U+FFFD: vLLM holds its bytes back,
`transformers serve` sends it, in-process decoding kept it before eval/generate.py dropped it as vLLM does); the
metrics are also given with those replies taken as served. Prints one JSON object.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.hotel import summarize  # noqa: E402

KEYS = ("turns", "bleu4", "corpus_bleu4", "slot_precision", "slot_recall", "slot_f1", "turn_type_accuracy",
        "invalid_calls")


def read(directory: str) -> list[dict]:
    with open(Path(directory) / "predictions.jsonl", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def turn_id(record: dict) -> tuple[str, int]:
    return record["source"], record["turn"]


def main(local_dir: str, served_dir: str) -> dict:
    local, served = read(local_dir), read(served_dir)
    n = min(len(local), len(served))
    local, served = local[:n], served[:n]
    if [turn_id(r) for r in local] != [turn_id(r) for r in served]:
        raise SystemExit(f"{local_dir} and {served_dir} hold different turns")
    differ = [(a, b) for a, b in zip(local, served) if a["prediction"] != b["prediction"]]
    both_invalid = {turn_id(a) for a, b in differ
                    if a["prediction"]["role"] == b["prediction"]["role"] == "invalid"}
    partial_character = {turn_id(a) for a, b in differ
                         if a["raw"].rstrip("\ufffd") == b["raw"].rstrip("\ufffd")}
    # the local turns, but those that differ by a partial character only taken as served
    counted_apart = both_invalid | partial_character
    dropped = [b if turn_id(a) in partial_character else a for a, b in zip(local, served)]
    metrics = [{k: summary[k] for k in KEYS} for summary in (summarize(r)[0] for r in (local, served, dropped))]
    return {"turns": n, "same_prediction": n - len(differ), "both_invalid_text_differs": len(both_invalid),
            "only_a_partial_character": len(partial_character),
            "metrics_equal": metrics[0] == metrics[1], "metrics_local": metrics[0], "metrics_served": metrics[1],
            "metrics_equal_apart_from_partial_characters": metrics[2] == metrics[1],
            "differ": [{"source": a["source"], "turn": a["turn"], "local": a["raw"], "served": b["raw"]}
                       for a, b in differ if turn_id(a) not in counted_apart]}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), ensure_ascii=False))

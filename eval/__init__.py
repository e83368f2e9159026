"""Scores a model: token-weighted loss here; task metrics (slots, BLEU, TruthfulQA) beside it."""

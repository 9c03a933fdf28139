"""The GSM8K recipe: data loading and validation, answer-checking rewards, evaluation (``scripts/gsm8k_sapo.py``)."""

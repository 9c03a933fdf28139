"""Command-line entry points: `trl-sapo grpo` (trl_sapo/cli/main.py launches trl_sapo/cli/grpo.py) and the training
path they share with the GSM8K recipe (trl_sapo/cli/training.py)."""

# Rules: evaluate (see src/saca/commands/evaluate.py).

# Rules: policy (see src/saca/commands/policy.py).

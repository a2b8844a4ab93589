# Rules: auditor (see src/saca/commands/auditor.py).

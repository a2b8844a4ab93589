"""The VLM navigation policy: loading (model), the processor adapter, the tiny embedded model,
batched generation, the evaluation / rollout agent, VLN-Ego data and SFT (VLN-R1 §3.3).

Submodules import torch and transformers; import them directly (``saca.policy.model``,
``saca.policy.agent``, ...). See docs/policy.md.
"""

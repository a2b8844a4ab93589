"""Training: supervised fine-tuning and reinforcement fine-tuning of the policy.

* :mod:`saca.train.state`: what every training loop shares (devices, seeds, the
  learning-rate schedule, checkpoints with RNG / optimizer / scheduler state,
  the JSONL journal, distributed helpers);
* :mod:`saca.train.sft`: supervised fine-tuning on VLN-Ego (VLN-R1 §3.3, Eq. 8);
* :mod:`saca.train.grpo`: the GRPO formulas and VLN-R1's Time-Decayed Reward;
* :mod:`saca.train.rollout`: group rollouts in the simulator (SACA §3.1);
* :mod:`saca.train.rft`: reinforcement fine-tuning (online GRPO, VLN-R1's offline RFT).
"""

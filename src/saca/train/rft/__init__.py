"""Reinforcement fine-tuning of the policy: online GRPO (SACA Table 2 row 1), SACA (§3.2-3.3) and VLN-R1's
offline RFT (§3.4), in stages with the papers' names (docs/rft.md):

* :mod:`~saca.train.rft.config`: the ``rft`` section (:class:`RftConfig`) and its variants;
* :mod:`~saca.train.rft.collect`: collection (rollouts or generations) and the reward seam (:class:`RewardFn`);
* :mod:`~saca.train.rft.groups`: SACA's group construction: ``audit``, ``route``, ``repair_resample`` (Eq. 5),
  the rescue (Eq. 6-11, :func:`saca.train.saca.rescue`), ``alignment_samples`` (Eq. 12), ``contrastive_pair``
  (Eq. 13);
* :mod:`~saca.train.rft.objective`: advantages and ``objective`` (``L = L_GRPO + lambda_rep L_rep +
  lambda_align L_align + lambda_con L_con``) with each term's micro-batch share;
* :mod:`~saca.train.rft.samples`: training samples and their teacher-forced log-probs;
* :mod:`~saca.train.rft.trainer`: :class:`RftTrainer`, the loop (collect, advantages, objective, step),
  checkpoints, journal, validation.

The equations themselves are functions of :mod:`saca.train.grpo` (GRPO, the Time-Decayed Reward) and
:mod:`saca.train.saca` (SACA Eq. 4-13).
"""

from saca.train.rft.collect import Batch, RewardFn, TimeDecayedReward, default_reward, outcome_reward
from saca.train.rft.config import EVAL_SAMPLING, MODES, RftConfig, check_variant, eval_agent_settings, resolve_variant
from saca.train.rft.groups import (SacaBatch, alignment_samples, clone_samples, construct_groups, contrastive_pair,
                                   repair_resample, repair_samples)
from saca.train.rft.objective import advantages, objective
from saca.train.rft.samples import ConSample, Sample, option_logprobs, token_logprobs
from saca.train.rft.trainer import GRAD_DUMP_ENV, RftTrainer, check_same_architecture, reduce_by_name

__all__ = [
    "EVAL_SAMPLING", "MODES", "GRAD_DUMP_ENV", "Batch", "ConSample", "RewardFn", "RftConfig", "RftTrainer", "Sample",
    "SacaBatch", "TimeDecayedReward", "advantages", "alignment_samples", "check_same_architecture", "check_variant",
    "clone_samples", "construct_groups", "contrastive_pair", "default_reward", "eval_agent_settings", "objective",
    "option_logprobs", "outcome_reward", "reduce_by_name", "repair_resample", "repair_samples", "resolve_variant", "token_logprobs",
]

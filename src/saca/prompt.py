"""The one prompt builder (VLN-R1 Fig. 2: system message, instruction, history
memory, current observation, action choices). Used by the VLN-Ego exporter,
SFT, RL rollouts and evaluation alike.

The VLN-R1 paper does not print its prompt; this wording is ours. Images are
marked with :data:`IMAGE_TOKEN` placeholders in the text; the policy's
processor adapter (``saca.policy``) turns them into the model's own image
tokens, and the sharegpt exporter keeps them as LLaMA-Factory's ``<image>``.
"""

from __future__ import annotations

from saca.action_text import option_menu

IMAGE_TOKEN = "<image>"
SYSTEM_MESSAGE = (
    "You are a navigation robot in an indoor environment. You see through an egocentric camera "
    "and move by choosing discrete actions."
)


def build_prompt(instruction: str, n_history: int, turn_angle: float, n_actions: int = 6) -> str:
    """User turn text for one decision: instruction, ``n_history`` history images, the current image, options."""
    history = IMAGE_TOKEN * n_history if n_history else "(none yet)"
    return (
        f"Instruction: {instruction.strip()}\n"
        f"History memory: {history}\n"
        f"Current observation: {IMAGE_TOKEN}\n"
        f"Action choices: {option_menu(turn_angle)}.\n"
        f"Predict the next {n_actions} actions, as options separated by commas."
    )

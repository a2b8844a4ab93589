"""The ``auditor:`` config section (SACA Table S2 names and defaults; see docs/auditor.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saca import SacaError
from saca.auditor.scoring import check_modules

BACKENDS = ("oracle", "foundation")


@dataclass
class OracleConfig:
    """Oracle perception from the simulator's instance segmentation (docs/auditor.md, "Oracle calibration").

    ``f0``: visible-pixel fraction scale of the confidence ``c = 1 - exp(-f / f0)``;
    ``u``: the predicted IoU reported for the (exact) instance mask.
    """

    f0: float = 0.01
    u: float = 1.0

    def validate(self, where: str) -> None:
        if not self.f0 > 0:
            raise SacaError(f"{where}.f0: must be > 0, got {self.f0}")
        if not 0.0 <= self.u <= 1.0:
            raise SacaError(f"{where}.u: must be in [0, 1], got {self.u}")


@dataclass
class FoundationConfig:
    """Local model directories (``save_pretrained`` layout) and run settings of the foundation backend.

    The segmenter is SAM3 (``sam3_path``: a ``sam3``, ``sam3_video`` or
    ``sam3_tracker`` checkpoint, run as its box-promptable tracker) with SAM
    (``sam_path``: ``sam`` or ``sam2``) as fallback when ``sam3_path`` is empty.
    ``det_token_scope``: ``landmark`` takes the detection confidence over the
    tokens of ``{l}`` in the prompt only, ``all`` over every prompt token (the
    transformers post-processing default).
    """

    clip_path: str = "models/clip-vit-base-patch32"
    gdino_path: str = "models/grounding-dino-tiny"
    sam3_path: str = "models/sam3"
    sam_path: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float16 | bfloat16
    batch_size: int = 16  # (frame, landmark) pairs per model call
    det_token_scope: str = "landmark"  # landmark | all

    def validate(self, where: str) -> None:
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise SacaError(f"{where}.dtype: choose float32, float16 or bfloat16, got '{self.dtype}'")
        if self.batch_size < 1:
            raise SacaError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.det_token_scope not in ("landmark", "all"):
            raise SacaError(f"{where}.det_token_scope: choose 'landmark' or 'all', got '{self.det_token_scope}'")
        if not self.clip_path:
            raise SacaError(f"{where}.clip_path: the foundation backend needs a CLIP model directory")


@dataclass
class AuditorConfig:
    """PGSA auditor settings; field names are the paper's (method-notes §3.2, §3.5)."""

    backend: str = "oracle"
    tau_soft: float = 0.2
    tau_hard: float = 0.25
    tau_det: float = 0.3
    w_g: float = 0.3
    w_b: float = 0.3
    w_m: float = 0.4
    modules: list = field(default_factory=lambda: ["global", "box", "mask"])
    k_consec: int = 2  # reconstruction
    patience: int = 8  # reconstruction
    count_initial_gap: bool = True  # reconstruction: the search for the first landmark counts as a gap
    # issue 29 (reconstructions, docs/reconstructions.md): which landmarks a step is scored against, and how
    # long the search for the first one may take
    lookahead: int = 0  # 0: the active landmark only (literal); n: also the next n, the transition waits for them
    initial_patience: int | None = None  # longest initial search that keeps the prefix valid; None: patience
    initial_k_consec: int = 1  # hard matches in a row that end the search for the first landmark
    rho: float = 0.5  # near-miss prefix-ratio threshold (Eq. 4); the Appendix-A statistic uses it
    prompt: str = "A photo of a {l}."
    schedule: str = "lazy"  # lazy | all: which (frame, landmark) pairs are scored
    keep_masks: bool = False  # keep boxes' masks in results (for figures)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    # workflow keys (which evaluation runs the `audit` rule audits, in what groups); the Auditor ignores them
    runs: list = field(default_factory=lambda: ["sft", "random", "oracle"])
    splits: list = field(default_factory=lambda: ["val_unseen"])
    group_size: int = 8

    def validate(self, where: str) -> None:
        if self.backend not in BACKENDS:
            raise SacaError(f"{where}.backend: choose one of {', '.join(BACKENDS)}, got '{self.backend}'")
        self.modules = list(check_modules(self.modules, f"{where}.modules"))
        for name in ("tau_soft", "tau_hard", "tau_det", "rho"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise SacaError(f"{where}.{name}: must be a number in [0, 1], got {v!r}")
        for name in ("w_g", "w_b", "w_m"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise SacaError(f"{where}.{name}: must be a non-negative number, got {v!r}")
        if sum(getattr(self, f"w_{m[0]}") for m in self.modules) <= 0:
            raise SacaError(f"{where}: the weights of the enabled modules {self.modules} sum to 0")
        if not isinstance(self.k_consec, int) or self.k_consec < 1:
            raise SacaError(f"{where}.k_consec: must be an integer >= 1, got {self.k_consec!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise SacaError(f"{where}.patience: must be an integer >= 0, got {self.patience!r}")
        if not isinstance(self.lookahead, int) or isinstance(self.lookahead, bool) or self.lookahead < 0:
            raise SacaError(f"{where}.lookahead: must be an integer >= 0, got {self.lookahead!r}")
        if self.initial_patience is not None and (
                not isinstance(self.initial_patience, int) or isinstance(self.initial_patience, bool)
                or self.initial_patience < 0):
            raise SacaError(f"{where}.initial_patience: must be null or an integer >= 0, got {self.initial_patience!r}")
        if not isinstance(self.initial_k_consec, int) or self.initial_k_consec < 1:
            raise SacaError(f"{where}.initial_k_consec: must be an integer >= 1, got {self.initial_k_consec!r}")
        if "{l}" not in self.prompt:
            raise SacaError(f"{where}.prompt: must contain the landmark placeholder '{{l}}', got {self.prompt!r}")
        if self.schedule not in ("lazy", "all"):
            raise SacaError(f"{where}.schedule: choose 'lazy' or 'all', got '{self.schedule}'")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise SacaError(f"{where}.group_size: must be an integer >= 1, got {self.group_size!r}")
        if isinstance(self.oracle, dict) or isinstance(self.foundation, dict):
            raise SacaError(f"{where}: build with saca.config.from_dict")

    def weights(self) -> dict[str, float]:
        return {"w_g": self.w_g, "w_b": self.w_b, "w_m": self.w_m}

"""Configuration of the neural MMOT surrogate: model, data and training, loaded from YAML.

A config file has three sections, each optional (missing keys take the defaults below)::

    model: {kind: transformer, grid_size: 150, d_model: 256, ...}
    data:  {train: data.h5, val_fraction: 0.15, ...}
    train: {lr: 1.0e-4, batch_size: 32, max_steps: 20000, ...}

``load_config(path)`` returns a ``Config``; ``Config.to_dict()`` is what checkpoints store, and
``Config.from_dict`` rebuilds it (unknown keys are a ``ValueError`` naming the key, so a typo in a
YAML file never passes silently).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "Config", "load_config"]


DIST_WEIGHTINGS = ("absolute", "relative", "relative_root")
"""Weightings of the distillation loss per instance (``deepquant.neural.losses``)."""


def _check_numbers(section: Any, name: str, *, positive: tuple[str, ...] = (),
                   non_negative: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming ``name.field`` and the value unless every ``int`` field of the
    dataclass ``section`` holds an integer and every ``float`` one a finite number (``None``
    allowed where the type says so; YAML reads ``nan`` as text and ``1.5`` where an integer
    belongs would reach torch as a shape), the fields in ``positive`` are > 0 and those in
    ``non_negative`` >= 0."""
    for f in fields(section):
        kind = str(f.type).replace(" | None", "")
        if kind not in ("int", "float"):
            continue
        value = getattr(section, f.name)
        if value is None and "None" in str(f.type):
            continue
        ok = (int,) if kind == "int" else (int, float)
        if (isinstance(value, bool) or not isinstance(value, ok)
                or (kind == "float" and not math.isfinite(value))):
            what = "an integer" if kind == "int" else "a finite number"
            raise ValueError(f"{name}.{f.name} must be {what}, got {value!r}")
    for field_name in positive:
        value = getattr(section, field_name)
        if value is not None and value <= 0:
            raise ValueError(f"{name}.{field_name} must be > 0, got {value!r}")
    for field_name in non_negative:
        if getattr(section, field_name) < 0:
            raise ValueError(f"{name}.{field_name} must be >= 0, got "
                             f"{getattr(section, field_name)!r}")

@dataclass
class ModelConfig:
    """Architecture (seed 001 §9.2, DESIGN §3).

    ``kind="transformer"``: Conv1d embedding over the date axis (``in_features * grid_size``
    channels -> ``d_embed``, kernel ``conv_kernel``), a linear layer to ``d_model``, LayerNorm,
    sinusoidal date encoding, ``n_layers`` pre-norm encoder layers (``n_heads`` heads, feed-forward
    ``d_ff`` with GELU, dropout), and two heads ``d_model -> grid_size``: the u-head (column
    potential of the period ending at this date) and the h-head (martingale multiplier of the
    period starting at this date). ``kind="mlp"``: the ablation baseline, a per-period MLP on the
    two marginals of the period.
    """

    kind: str = "transformer"
    grid_size: int = 150
    in_features: int = 2  # density (times M), normalised call curve (+ call increments if 3)
    d_embed: int = 128
    d_model: int = 256
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    conv_kernel: int = 5
    max_dates: int = 64
    mlp_hidden: int = 512
    mlp_layers: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("transformer", "mlp"):
            raise ValueError(f"model.kind must be 'transformer' or 'mlp', got {self.kind!r}")
        _check_numbers(self, "model", positive=("d_embed", "d_model", "n_layers", "n_heads",
                                                "d_ff", "conv_kernel", "mlp_hidden",
                                                "mlp_layers"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.max_dates < 2:
            raise ValueError(f"model.max_dates must be >= 2 (one period), got {self.max_dates}")
        if self.grid_size < 2:
            raise ValueError(f"model.grid_size must be >= 2, got {self.grid_size}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"model.conv_kernel must be odd, got {self.conv_kernel}")
        if self.in_features not in (2, 3):
            raise ValueError(f"model.in_features must be 2 or 3, got {self.in_features}")


@dataclass
class DataConfig:
    """Where the training data lives and how it is split.

    ``train`` is one data file or a list of them (same grid, teacher eps and tolerance), read
    as one set: a fine-tuning mix of separately generated families and support widths.
    ``families``, when given, keeps only the instances of these families (a family held out
    of training, or a test-only family dropped from a shared file).
    """

    train: str | list[str] = "data.h5"
    val: str | None = None  # separate validation file; None = split ``train``
    val_fraction: float = 0.15
    max_instances: int | None = None  # use only the first n instances (tiny runs)
    families: list[str] | None = None  # keep only these families (None = all)
    split_seed: int = 0
    prefix_windows: bool = True  # also train on the prefixes (dates 0..n) of each instance
    unlabelled: int = 0  # extra teacher-free instances 0..n-1 of ``unlabelled_seed`` (gap loss)
    unlabelled_seed: int = 1000

    def __post_init__(self) -> None:
        files = [self.train] if isinstance(self.train, str) else self.train
        if (not isinstance(files, (list, tuple)) or not files
                or not all(isinstance(f, str) and f for f in files)):
            raise ValueError(f"data.train must be a file name or a non-empty list of them, "
                             f"got {self.train!r}")
        if not isinstance(self.train, str):
            self.train = list(self.train)
        if self.families is not None:
            from deepquant.neural.data import ALL_FAMILIES

            fams = [self.families] if isinstance(self.families, str) else self.families
            if (not isinstance(fams, (list, tuple)) or not fams
                    or any(f not in ALL_FAMILIES for f in fams)):
                raise ValueError(f"data.families must be a non-empty list of {ALL_FAMILIES}, "
                                 f"got {self.families!r}")
            self.families = list(fams)
        _check_numbers(self, "data", positive=("max_instances",),
                       non_negative=("split_seed", "unlabelled", "unlabelled_seed"))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.unlabelled < 0:
            raise ValueError(f"data.unlabelled must be >= 0, got {self.unlabelled}")


@dataclass
class TrainConfig:
    """Optimisation (seed 001 §9.3-9.4 with DESIGN §3 weights).

    Loss = ``lambda_dist`` * dist + ``lambda_mart`` * mart + ``lambda_h`` * hpen
    + ``lambda_gap`` * gap + ``lambda_hcons`` * hcons (see ``deepquant.neural.losses``; the gap
    terms run on ``gap_periods`` random periods per batch and weigh instances by
    ``gap_weighting``). ``init_from`` starts from the weights (and output scales) of another
    checkpoint, for fine-tuning; resuming from ``out_dir/last.pt`` takes precedence.
    The learning rate warms up linearly for ``warmup_steps`` then follows a cosine decay to
    ``lr * min_lr_ratio`` at ``max_steps``. Training stops early when the validation loss has
    not improved for ``patience`` evaluations.
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_steps: int = 20000
    max_minutes: float | None = None  # wall-clock budget; stops cleanly (checkpoint kept)
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # gradient norm cap; 0 = no clipping
    eval_every: int = 200
    patience: int = 10
    lambda_mart: float = 5.0
    mart_start: int = 0  # lambda_mart is 0 before this step (distillation only) ...
    mart_warmup: int = 0  # ... then ramps linearly to lambda_mart over this many steps
    lambda_h: float = 1.0
    lambda_dist: float = 1.0
    dist_weighting: str = "absolute"  # or "relative" / "relative_root" per instance, see losses
    dist_floor: float = 1e-6  # relative dist: floor of an instance's target mean square
    lambda_gap: float = 0.0  # dual gap = KL of the projected plan (teacher-free)
    lambda_hcons: float = 0.0  # h-head vs the exact row multipliers of the predicted v
    gap_periods: int = 4  # gap terms on at most this many random periods per batch (0 = all)
    gap_weighting: str = "scaled"  # "scaled" or "kl", see losses.dual_gap_loss
    init_from: str | None = None
    drift_scale: float = 0.01  # drift loss unit (moneyness): a loss of 1 = drift at this size
    h_units: float = 1e-2  # the h penalty acts on h_units * s_t * h (see losses)
    mart_periods: int = 8  # drift loss on at most this many random periods per batch (0 = all)
    mass_floor: float = 1e-10  # grid points with less mass are masked in the distillation
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    out_dir: str = "runs/neural"
    log_dir: str | None = None  # TensorBoard; default <out_dir>/tb
    resume: bool = True

    def __post_init__(self) -> None:
        _check_numbers(self, "train", positive=("lr", "batch_size", "max_steps", "eval_every",
                                                "patience", "threads", "drift_scale",
                                                "h_units", "dist_floor", "max_minutes"),
                       non_negative=("weight_decay", "warmup_steps", "min_lr_ratio",
                                     "grad_clip", "lambda_mart", "mart_start", "mart_warmup",
                                     "lambda_h", "lambda_dist", "lambda_gap", "lambda_hcons",
                                     "gap_periods", "mart_periods", "mass_floor", "seed"))
        if self.min_lr_ratio > 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?",
                                                                self.device):
            raise ValueError(f"train.device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got "
                             f"{self.device!r}")
        if self.dist_weighting not in DIST_WEIGHTINGS:
            raise ValueError(f"train.dist_weighting must be 'absolute', 'relative' or "
                             f"'relative_root', got {self.dist_weighting!r}")
        if self.gap_weighting not in ("kl", "scaled"):
            raise ValueError(f"train.gap_weighting must be 'kl' or 'scaled', got "
                             f"{self.gap_weighting!r}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "data": asdict(self.data),
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        raw = dict(raw or {})
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; "
                             f"expected {sorted(sections)}")
        built = {}
        for name, klass in sections.items():
            values = dict(raw.get(name) or {})
            known = {f.name for f in fields(klass)}
            bad = set(values) - known
            if bad:
                raise ValueError(f"unknown key(s) {sorted(bad)} in config section {name!r}; "
                                 f"known: {sorted(known)}")
            built[name] = klass(**values)
        return cls(**built)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> Config:
    """Read a YAML config. Relative data paths are resolved against the current folder.

    ``overrides`` are dotted keys, e.g. ``load_config(p, **{"train.max_steps": 10})``.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        raw[section][name] = value
    return Config.from_dict(raw)

"""Training configuration: one dataclass, defaults per DESIGN §2 / paper §4.4.

Precedence: the defaults here < a ``--config`` YAML/JSON file < command-line flags.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields

from .masking import EVAL_RATES

STRATEGIES = ("fixed", "random", "progressive")


@dataclass
class TrainConfig:
    # ---- data
    dataset: str = "synthetic"  # synthetic | iemocap4 | iemocap6 | cmumosi | cmumosei
    data_root: str | None = None  # GCNet layout (see iteach_fast.data)
    label_file: str | None = None
    text_root: str | None = None
    audio_root: str | None = None
    visual_root: str | None = None
    fold: int = 1  # IEMOCAP: the held-out session
    select_on: str = "valid"  # valid | test (the paper's protocol: selection on the test session)
    syn_conversations: int = 120
    syn_min_len: int = 10
    syn_max_len: int = 110
    syn_classes: int = 4  # 4 | 6 | 1 (= regression in [-3, 3])
    syn_dims: tuple = (64, 32, 48)  # text, audio, visual; (1024, 512, 1024) is IEMOCAP-like
    # ---- model
    framework: str = "its"  # its | ts | pre
    teacher_mixer: str | None = None  # None: the framework's default (its: tf, ts: nas)
    student_mixer: str | None = None  # None: the framework's default (its: nas, ts: tf)
    teacher_layers: int | None = None  # None: its 3, ts 4
    student_layers: int | None = None  # None: its 4, ts 3
    dim: int = 128
    heads: int = 8
    ffn_ratio: float = 4.0
    max_len: int = 110
    dist: int = 30
    conv_kernel: int = 7
    pool_size: int = 3
    ecce: str = "local+global"  # local+global | global | off
    dropout: float = 0.0
    # ---- optimisation
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-4
    router_lr: float = 5e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.0  # 0: off
    strategy: str = "random"  # fixed | random | progressive (§5.4.2)
    rate: float = 0.0  # the missing rate of the fixed strategy
    max_rate: float = 0.7  # random: U[0, max_rate]; progressive: the cap
    progressive_step: float = 0.1
    progressive_every: int = 10  # epochs per progressive step
    # ---- model selection on the validation split: the student's WAF averaged over these
    # rates with fixed-seed masks (default: UME's 0.0..0.7); the fixed strategy uses its own rate
    select_rates: tuple = EVAL_RATES
    eval_seed: int = 0  # seed of the fixed evaluation masks
    # ---- run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:k]
    backend: str = "auto"  # auto | reference | triton | cpp
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (autocast, GPU only)
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    out_dir: str = "runs/train"
    progress: bool = True  # tqdm bars

    def validate(self) -> "TrainConfig":
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.framework in ("its", "ts", "pre"), "framework must be its, ts or pre"),
            (self.ecce in ("local+global", "global", "off"), "ecce must be local+global, global or off"),
            (self.select_on in ("valid", "test"), "select_on must be valid or test"),
            (self.dtype in ("fp32", "bf16", "fp16"), "dtype must be fp32, bf16 or fp16"),
            (0.0 <= self.rate <= 1.0 and 0.0 <= self.max_rate <= 1.0, "rate and max_rate must lie in [0, 1]"),
            (self.epochs >= 0 and self.batch_size >= 1, "epochs must be >= 0 and batch_size >= 1"),
            (self.dim % self.heads == 0, f"dim ({self.dim}) must be divisible by heads ({self.heads})"),
            (len(self.syn_dims) == 3, "syn_dims must be three ints (text, audio, visual)"),
            (self.progressive_every >= 1, "progressive_every must be >= 1"),
        ]
        for mixer in (self.teacher_mixer, self.student_mixer):
            checks.append((mixer in (None, "tf", "nas"), "teacher_mixer / student_mixer must be tf or nas"))
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid config: {msg}")
        return self

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return dataclasses.replace(self, **{k: _coerce(self, k, v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls().replace(**d)

    @classmethod
    def from_file(cls, path: str) -> "TrainConfig":
        return cls().replace(**load_mapping(path))


def _coerce(cfg, key, value):
    """Lists from YAML/JSON become tuples where the field is a tuple."""
    if isinstance(getattr(cfg, key), tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def load_mapping(path: str) -> dict:
    """A YAML (``.yaml`` / ``.yml``) or JSON file holding one mapping of config keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def field_types() -> dict:
    """``{name: default}``, used by the CLI to build one flag per field."""
    return {f.name: f.default for f in fields(TrainConfig)}


__all__ = ["TrainConfig", "STRATEGIES", "load_mapping", "field_types"]

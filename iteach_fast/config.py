"""Configuration: :class:`ModelConfig` (what :class:`~iteach_fast.model.ITEACHNet` is built
from) nested in :class:`TrainConfig` (data, optimisation, run). Defaults follow the paper
(§4.4) as docs/maths.md states them.

Precedence: the defaults here < a ``--config`` YAML/JSON file < command-line flags. Keys may
be given flat (``dim: 64``) or nested (``model: {dim: 64}``); every value is coerced to its
field's declared type (``"5e-4"`` is a float, ``"two"`` is an error naming the key) and all
problems of one source are reported together.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Literal, Union

import torch

from .choices import Backend, DatasetName, EcceMode, Framework, Mixer, Precision, SelectOn, Strategy
from .masking import EVAL_RATES, MAX_RATE

__all__ = ["ModelConfig", "TrainConfig", "ConfigError", "load_mapping"]


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message names the key (and file) and what was expected."""


@dataclass
class ModelConfig:
    """The hyper-parameters of ITEACH-Net (one teacher and one student; §3.2-3.4)."""
    framework: Framework = "its"
    teacher_mixer: Mixer | None = None  # None: the framework's default (its: tf, ts: nas, pre: tf)
    student_mixer: Mixer | None = None  # None: the framework's default (its: nas, ts: tf, pre: tf)
    teacher_layers: int | None = None  # None: its 3, ts 4
    student_layers: int | None = None  # None: its 4, ts 3, pre 3 (tf) or 4 (nas)
    dim: int = 128
    heads: int = 8
    ffn_ratio: float = 4.0
    mlp_ratio: float = 1.0  # the NAS MLP token mixer's hidden width, in units of max_len
    max_len: int = 110  # the NAS MLP token mixer's token dimension
    dist: int = 30  # ECCE's band: |i - j| < dist
    conv_kernel: int = 7  # ECCE's local conv
    pool_size: int = 3  # the NAS pool mixers' window
    ecce: EcceMode = "local+global"
    dropout: float = 0.0
    backend: Backend = "auto"  # the fused operators' backend
    causal: bool = False  # real-time ERC: every output i sees utterances <= i only (streamable)

    def validate(self) -> ModelConfig:
        problems = _type_problems(self)
        checks = [
            (self.dim >= 1 and self.heads >= 1, "dim and heads must be >= 1"),
            (self.heads >= 1 and self.dim % self.heads == 0,
             f"dim ({self.dim}) must be divisible by heads ({self.heads})"),
            (all(n is None or n >= 1 for n in (self.teacher_layers, self.student_layers)),
             "teacher_layers / student_layers must be >= 1 (or left unset for the framework's default)"),
            (_finite(self.ffn_ratio) and self.ffn_ratio > 0, "ffn_ratio must be a finite number > 0"),
            (_finite(self.mlp_ratio) and self.mlp_ratio > 0, "mlp_ratio must be a finite number > 0"),
            (self.max_len >= 1, "max_len must be >= 1"),
            (self.dist >= 1, "dist must be >= 1"),
            (self.conv_kernel >= 1 and self.conv_kernel % 2 == 1, "conv_kernel must be odd and >= 1"),
            (self.pool_size >= 1 and self.pool_size % 2 == 1, "pool_size must be odd and >= 1"),
            (_finite(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)"),
        ]
        _raise(problems + [msg for ok, msg in checks if not problems and not ok])
        return self

    def model_kwargs(self) -> dict:
        """Every field but the framework's layer / mixer choices: what both models of a net share."""
        skip = {"framework", "teacher_mixer", "student_mixer", "teacher_layers", "student_layers"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@dataclass
class TrainConfig:
    """One training run: data, the model (:attr:`model`), optimisation, selection, run settings."""
    # ---- data
    dataset: DatasetName = "synthetic"
    data_root: str | None = None  # GCNet layout (see iteach_fast.data)
    label_file: str | None = None
    text_root: str | None = None
    audio_root: str | None = None
    visual_root: str | None = None
    fold: int = 1  # IEMOCAP: the held-out session
    select_on: SelectOn = "valid"  # test: the paper's protocol (selection on the test session)
    syn_conversations: int = 120
    syn_min_len: int = 10
    syn_max_len: int = 110
    syn_classes: int = 4  # 4 | 6 | 1 (= regression in [-3, 3])
    syn_dims: tuple[int, ...] = (64, 32, 48)  # text, audio, visual; (1024, 512, 1024) is IEMOCAP-like
    # ---- the model
    model: ModelConfig = field(default_factory=ModelConfig)
    # ---- optimisation
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-4
    router_lr: float = 5e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.0  # 0: off
    strategy: Strategy = "random"  # §5.4.2
    rate: float = 0.0  # the missing rate of the fixed strategy
    max_rate: float = 0.7  # random: U[0, max_rate]; progressive: the cap
    progressive_step: float = 0.1
    progressive_every: int = 10  # epochs per progressive step
    # ---- model selection on the validation split: the student's WAF averaged over these
    # rates with fixed-seed masks (default: UME's 0.0..0.7); the fixed strategy uses its own rate
    select_rates: tuple[float, ...] = EVAL_RATES
    eval_seed: int = 0  # seed of the fixed evaluation masks
    # ---- run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:k]
    dtype: Precision = "fp32"  # fp32 | bf16 | fp16 (autocast, GPU only)
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    out_dir: str = "runs/train"
    progress: bool = True  # tqdm bars
    # ---- speed (docs/training.md): neither changes what is computed
    compile: bool = False  # torch.compile the forward + loss (fullgraph), batches padded to length buckets
    cuda_graphs: bool = False  # CUDA only: capture the whole step (forward, loss, backward, AdamW) in a graph

    def validate(self) -> TrainConfig:
        problems = _type_problems(self)
        if not problems:
            checks = [
                (self.epochs >= 0, "epochs must be >= 0"),
                (self.batch_size >= 1, "batch_size must be >= 1"),
                (_finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
                (_finite(self.router_lr) and self.router_lr > 0,
                 f"router_lr must be a finite number > 0, got {self.router_lr}"),
                (_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay must be a finite number >= 0"),
                (_finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip must be a finite number >= 0 (0: off)"),
                (_rate_ok(self.rate), f"rate must lie in [0, {MAX_RATE}], got {self.rate}"),
                (_rate_ok(self.max_rate), f"max_rate must lie in [0, {MAX_RATE}], got {self.max_rate}"),
                (_finite(self.progressive_step) and self.progressive_step >= 0, "progressive_step must be >= 0"),
                (self.progressive_every >= 1, "progressive_every must be >= 1"),
                (len(self.select_rates) >= 1 and all(map(_rate_ok, self.select_rates)),
                 f"select_rates must be one or more rates in [0, {MAX_RATE}], got {list(self.select_rates)}"),
                (len(self.syn_dims) == 3 and min(self.syn_dims) >= 1,
                 "syn_dims must be three ints >= 1 (text, audio, visual)"),
                (self.syn_conversations >= 3, "syn_conversations must be >= 3 (train, valid and test need one each)"),
                (1 <= self.syn_min_len <= self.syn_max_len, "need 1 <= syn_min_len <= syn_max_len"),
                (self.syn_classes in (1, 4, 6), "syn_classes must be 4, 6 or 1 (regression)"),
                (self.fold >= 1, "fold must be >= 1"),
                (self.seed >= 0 and self.eval_seed >= 0, "seed and eval_seed must be >= 0"),
                (self.threads >= 0, f"threads must be >= 0 (0: torch's default), got {self.threads}"),
                (bool(self.out_dir), "out_dir must not be empty"),
            ]
            problems = [msg for ok, msg in checks if not ok]
            try:
                _check_device(self.device)
            except ConfigError as err:
                problems.append(str(err))
        _raise(problems)
        self.model.validate()
        return self

    # -------------------------------------------------------------- building and merging

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` (flat keys; model keys route to :attr:`model`), each coerced
        to its field's type. Unknown keys and wrong types are reported together."""
        return _merge(self, changes, source="")

    def to_dict(self) -> dict:
        """Plain JSON-able values, the model nested under ``"model"``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = ({k: _plain(x) for k, x in dataclasses.asdict(v).items()} if f.name == "model"
                           else _plain(v))
        return out

    def flat_dict(self) -> dict:
        """Every field, the model's flattened in (the keys of the command line)."""
        d = self.to_dict()
        return {**{k: v for k, v in d.items() if k != "model"}, **d["model"]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> TrainConfig:
        """From flat or nested keys (checkpoints of either layout load)."""
        return _merge(cls(), d, source)

    @classmethod
    def from_file(cls, path: str) -> TrainConfig:
        return _merge(cls(), load_mapping(path), source=path)


MODEL_KEYS = tuple(f.name for f in fields(ModelConfig))
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name != "model")


# ----------------------------------------------------------------------------- coercion

def _merge(cfg: TrainConfig, changes: dict, source: str) -> TrainConfig:
    where = f"{source}: " if source else ""
    problems, train_changes, model_changes = [], {}, {}
    flat = dict(changes)
    nested = flat.pop("model", None)
    if nested is not None:
        if not isinstance(nested, (dict, ModelConfig)):
            problems.append(f"key 'model': expected a mapping of model keys, got {type(nested).__name__}")
        else:
            nested = dataclasses.asdict(nested) if isinstance(nested, ModelConfig) else nested
            flat = {**{f"model.{k}" if not isinstance(k, str) else k: v for k, v in nested.items()}, **flat}
    hints_t, hints_m = _hints(TrainConfig), _hints(ModelConfig)
    unknown = []
    for key, value in flat.items():
        if not isinstance(key, str):
            problems.append(f"key {key!r}: keys must be strings")
            continue
        name = key.replace("-", "_")
        if name in hints_m:
            target, hint = model_changes, hints_m[name]
        elif name in hints_t:
            target, hint = train_changes, hints_t[name]
        else:
            unknown.append(key)
            continue
        try:
            target[name] = coerce(value, hint)
        except (TypeError, ValueError) as err:
            problems.append(f"key '{name}': {err}")
    if unknown:
        problems.append(f"unknown config keys {sorted(map(str, unknown))}; known: {sorted(TRAIN_KEYS + MODEL_KEYS)}")
    if problems:
        raise ConfigError(where + "invalid config: " + "; ".join(problems))
    model = dataclasses.replace(cfg.model, **model_changes)
    return dataclasses.replace(cfg, **train_changes, model=model)


def _hints(cls) -> dict:
    return {k: v for k, v in typing.get_type_hints(cls).items() if k != "model"}


def coerce(value, hint):
    """``value`` as the type ``hint`` declares (int, float, str, bool, Literal, Optional,
    tuple[int | float, ...]); a ``TypeError`` saying what was expected otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        kind = args[0]
        if isinstance(value, str):
            value = [x for x in value.replace(" ", ",").split(",") if x]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list of {kind.__name__}, got {_show(value)}")
        return tuple(coerce(x, kind) for x in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise TypeError(f"expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an int, got {_show(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise TypeError(f"expected an int, got {_show(value)}")
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {_show(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {_show(value)}")
    raise TypeError(f"unsupported field type {hint}")  # a new field type: teach coerce() about it


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_problems(cfg) -> list[str]:
    """Fields whose value does not have the declared type (a config built directly, not merged)."""
    problems = []
    for name, hint in _hints(type(cfg)).items():
        value = getattr(cfg, name)
        try:
            same = coerce(value, hint)
            ok = type(same) is type(value) and (same == value or _both_nan(same, value))
        except (TypeError, ValueError) as err:
            problems.append(f"{name}: {err}")
            continue
        if not ok:
            problems.append(f"{name}: expected {getattr(hint, '__name__', hint)}, got {_show(value)}")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _both_nan(a, b) -> bool:  # NaN is a float (the range checks reject it, naming the key)
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _rate_ok(r) -> bool:
    return _finite(r) and 0.0 <= r <= MAX_RATE


def _check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: training runs on cpu or cuda (use auto, cpu, cuda or cuda:N)")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def load_mapping(path: str) -> dict:
    """A YAML (``.yaml`` / ``.yml``) or JSON file holding one mapping of config keys; parse
    errors name the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data

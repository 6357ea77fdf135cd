"""The model's own configuration: :class:`ModelConfig` (what :class:`~iteach_fast.nn.model.ITEACHNet`
is built from; defaults follow the paper, §4.4) and the typed coercion every configuration
shares (:func:`coerce`: ``"5e-4"`` is a float, ``"two"`` an error naming the key).

The training tier nests it in :class:`~iteach_fast.training.config.TrainConfig`.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Literal, Union

from ..checks import check_heads, check_int, check_odd
from ..choices import Backend, EarlyFusion, EcceMode, Framework, Mixer, early_fusion_mode

__all__ = ["ModelConfig", "ConfigError", "coerce", "type_hints", "type_problems", "raise_problems", "finite"]


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
    cross_ecce: bool = False  # not the paper's: the text stream's ECCE bias guides its cross-attentions too
    early_fusion: EarlyFusion = "off"  # not the paper's: text / all: those streams' projections read all three
    recurrent: bool = False  # not the paper's: a residual GRU over each stream's utterances before ECCE
    presence: bool = False  # not the paper's: every input projection also reads the three presence flags

    def __post_init__(self):
        if isinstance(self.early_fusion, bool):  # the release where it was a bool (text stream only)
            self.early_fusion = early_fusion_mode(self.early_fusion)

    def validate(self) -> ModelConfig:
        problems = type_problems(self)
        raise_problems(problems)  # the checks below compare values: their types first
        checks = [
            (all(n is None or n >= 1 for n in (self.teacher_layers, self.student_layers)),
             "teacher_layers / student_layers must be >= 1 (or left unset for the framework's default)"),
            (finite(self.ffn_ratio) and self.ffn_ratio > 0, "ffn_ratio must be a finite number > 0"),
            (finite(self.mlp_ratio) and self.mlp_ratio > 0, "mlp_ratio must be a finite number > 0"),
            (finite(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        # the rules the modules and operators apply themselves, from their one statement (iteach_fast.checks)
        for rule in (lambda: check_heads(self.dim, self.heads), lambda: check_int("max_len", self.max_len, 1),
                     lambda: check_int("dist", self.dist, 1), lambda: check_odd("conv_kernel", self.conv_kernel),
                     lambda: check_odd("pool_size", self.pool_size)):
            try:
                rule()
            except (TypeError, ValueError) as err:
                problems.append(str(err))
        raise_problems(problems)
        return self

    def options(self) -> list[str]:
        """The options that are not the paper's and are on, as a log names them."""
        return ((["cross-ECCE"] if self.cross_ecce else [])
                + ([f"early fusion ({self.early_fusion})"] if self.early_fusion != "off" else [])
                + (["recurrent"] if self.recurrent else [])
                + (["presence flags"] if self.presence else []))

    def model_kwargs(self) -> dict:
        """Every field but the framework's layer / mixer choices: what both models of a net share."""
        skip = {"framework", "teacher_mixer", "student_mixer", "teacher_layers", "student_layers"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def type_hints(cls) -> dict:
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
    if hint in (int, float):
        # an int key takes 3, 3.0 and "3"; a float key any number; neither takes a bool
        if not isinstance(value, bool):
            if isinstance(value, int) or (isinstance(value, float) and (hint is float or value.is_integer())):
                return hint(value)
            if isinstance(value, str):
                try:
                    return hint(value.strip())
                except ValueError:
                    pass
        raise TypeError(f"expected {'an int' if hint is int else 'a number'}, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {_show(value)}")
    raise TypeError(f"unsupported field type {hint}")  # a new field type: teach coerce() about it


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def type_problems(cfg) -> list[str]:
    """Fields whose value does not have the declared type (a config built directly, not merged)."""
    problems = []
    for name, hint in type_hints(type(cfg)).items():
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


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _both_nan(a, b) -> bool:  # NaN is a float (the range checks reject it, naming the key)
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

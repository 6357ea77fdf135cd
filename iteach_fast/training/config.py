"""A training run's configuration: :class:`TrainConfig` (data, optimisation, run) with the
model's :class:`~iteach_fast.nn.config.ModelConfig` nested in it. Defaults follow the paper
(§4.4) as docs/maths.md states them.

Precedence: the defaults here < a ``--config`` YAML/JSON file < command-line flags. Keys may
be given flat (``dim: 64``) or nested (``model: {dim: 64}``), not both for one key with two
values (an error naming both); every value is coerced to its field's declared type
(``"5e-4"`` is a float, ``"two"`` is an error naming the key) and all problems of one source
are reported together.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields

from ..checks import check_fold
from ..choices import EVAL_RATES, MAX_RATE, DatasetName, Precision, SelectOn, Strategy, early_fusion_mode
from ..nn.config import ConfigError, ModelConfig, coerce, finite, raise_problems, type_hints, type_problems
from .runtime import THREADS_ALL, parse_device, parse_threads

__all__ = ["TrainConfig", "ModelConfig", "ConfigError", "load_mapping", "MODEL_KEYS", "TRAIN_KEYS"]


@dataclass
class TrainConfig:
    """One training run: data, the model (:attr:`model`), optimisation, selection, run settings."""
    # ---- data
    dataset: DatasetName = "synthetic"
    data_root: str | None = None  # GCNet layout (see iteach_fast.data.dataset)
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
    rec_weight: float = 1.0  # not the paper's (eq. 15 adds L_rec with weight 1): L_rec's weight in the total loss
    ema: float = 0.0  # not the paper's: evaluate and save a moving average of the weights, this decay per step (0: off)
    strategy: Strategy = "random"  # §5.4.2
    rate: float = 0.0  # the missing rate of the fixed strategy
    max_rate: float = 0.7  # random: U[0, max_rate]; progressive: the cap
    rate_power: float = 1.0  # not the paper's: random draws max_rate * U ** (1 / rate_power) (1: uniform)
    outage_prob: float = 0.0  # not the paper's: P(a conversation loses one or two modalities for its whole length)
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
    threads: int = 0  # CPU threads: 0 fits the machine (cores, CPU quota, processes beside), -1 ("all") every core
    out_dir: str = "runs/train"
    progress: bool = True  # tqdm bars
    # ---- speed (docs/training.md): neither changes what is computed
    compile: bool = False  # torch.compile the forward + loss (fullgraph), batches padded to length buckets
    cuda_graphs: bool = False  # CUDA only: capture the whole step (forward, loss, backward, AdamW) in a graph

    def validate(self) -> TrainConfig:
        problems = type_problems(self)
        if not problems:
            checks = [
                (self.epochs >= 0, "epochs must be >= 0"),
                (self.batch_size >= 1, "batch_size must be >= 1"),
                (finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
                (finite(self.router_lr) and self.router_lr > 0,
                 f"router_lr must be a finite number > 0, got {self.router_lr}"),
                (finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay must be a finite number >= 0"),
                (finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip must be a finite number >= 0 (0: off)"),
                (finite(self.ema) and 0.0 <= self.ema < 1.0, "ema must lie in [0, 1) (0: off)"),
                (finite(self.rec_weight) and self.rec_weight >= 0.0, "rec_weight must be a finite number >= 0"),
                (_rate_ok(self.rate), f"rate must lie in [0, {MAX_RATE}], got {self.rate}"),
                (_rate_ok(self.max_rate), f"max_rate must lie in [0, {MAX_RATE}], got {self.max_rate}"),
                (finite(self.rate_power) and self.rate_power > 0,
                 f"rate_power must be a finite number > 0 (1: uniform), got {self.rate_power}"),
                (finite(self.outage_prob) and 0.0 <= self.outage_prob <= 1.0,
                 f"outage_prob must lie in [0, 1], got {self.outage_prob}"),
                (finite(self.progressive_step) and self.progressive_step >= 0, "progressive_step must be >= 0"),
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
                (self.threads >= THREADS_ALL,
                 f"threads must be >= 0 (0: fit the machine) or 'all' ({THREADS_ALL}), got {self.threads}"),
                (bool(self.out_dir), "out_dir must not be empty"),
            ]
            problems = [msg for ok, msg in checks if not ok]
            for check in (lambda: _check_device(self.device), lambda: check_fold(self.dataset, self.fold)):
                try:
                    check()
                except ValueError as err:
                    problems.append(str(err))
        raise_problems(problems)
        self.model.validate()
        return self

    # -------------------------------------------------------------- building and merging

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` (flat keys; model keys route to :attr:`model`), each coerced
        to its field's type. Unknown keys and wrong types are reported together."""
        return _merge(self, changes, source="")

    def merge(self, mapping: dict, source: str = "") -> TrainConfig:
        """A copy with the keys of ``mapping`` (flat or nested, as a config file holds them) over
        this config's values; errors name ``source``."""
        return _merge(self, mapping, source)

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
            for key, value in nested.items():
                name = key.replace("-", "_") if isinstance(key, str) else key
                twice = [k for k in flat if isinstance(k, str) and k.replace("-", "_") == name]
                if twice and not _same(value, flat[twice[0]]):
                    problems.append(f"key '{name}' is given twice, as model.{key} ({value!r}) and as {twice[0]} "
                                    f"({flat[twice[0]]!r}): give it once")
            flat = {**{f"model.{k}" if not isinstance(k, str) else k: v for k, v in nested.items()}, **flat}
    hints_t, hints_m = type_hints(TrainConfig), type_hints(ModelConfig)
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
            if name == "early_fusion" and isinstance(value, bool):
                value = early_fusion_mode(value)  # a config or checkpoint of the release where it was a bool
            target[name] = parse_threads(value) if name == "threads" else coerce(value, hint)
        except (TypeError, ValueError) as err:
            problems.append(f"key '{name}': {err}")
    if unknown:
        problems.append(f"unknown config keys {sorted(map(str, unknown))}; known: {sorted(TRAIN_KEYS + MODEL_KEYS)}")
    if problems:
        raise ConfigError(where + "invalid config: " + "; ".join(problems))
    model = dataclasses.replace(cfg.model, **model_changes)
    return dataclasses.replace(cfg, **train_changes, model=model)


def _same(a, b) -> bool:
    """Whether two values of one key agree (``[1, 2]`` and ``(1, 2)`` do)."""
    return _plain(a) == _plain(b)


def _rate_ok(r) -> bool:
    return finite(r) and 0.0 <= r <= MAX_RATE


def _check_device(device: str) -> None:
    if device != "auto":
        try:
            parse_device(device, "device")
        except ValueError as err:
            raise ConfigError(str(err)) from err


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

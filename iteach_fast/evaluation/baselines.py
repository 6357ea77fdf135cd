"""The baselines every ITEACH-Net result stands beside, trained and tested like it.

Each is trained on the run's training split with the run's missing-rate strategy (the same
sampler, GCNet's, fresh masks per batch or per copy), chosen on its validation split, and
tested with the same fixed-seed UME masks as the model (:func:`~iteach_fast.data.masking.fixed_masks`),
so a row of a baseline and a row of the model at one rate read the same utterances with the
same modalities missing. An utterance's input is its three feature vectors, zero where a
modality is missing (GCNet's convention), and the three presence bits.

* ``majority`` — the training split's most frequent class (regression: the mean score).
* ``logreg`` — a per-utterance logistic regression (ridge regression for MOSI / MOSEI) on
  standardised features: no context at all.
* ``logreg_context`` — the same model, its log-probabilities summed over ``±k`` neighbours of
  the conversation (``k`` chosen on validation): the crudest use of local emotional stability.
* ``gru`` — a recurrent ERC model of the kind the field uses (bc-LSTM style): utterances
  fused early (one linear layer), a bidirectional GRU over the conversation, a linear
  classifier on the GRU's output beside the utterance's own; ``causal=True`` makes it
  unidirectional (what a streaming model competes with).

:func:`baseline_rows` returns their per-rate rows in the format of
:func:`~iteach_fast.training.validation.evaluate_rates`, for the tables, the plots and the
reports of ``demo``, ``evaluate`` and ``reproduce baselines``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import torch
from torch import nn

from ..choices import MODALITIES
from ..data.dataset import collate
from ..data.masking import EVAL_RATES, fixed_masks, random_rate, sample_present
from ..files import atomic_write
from ..training.validation import compute_metrics

__all__ = ["BASELINES", "LABELS", "BaselineConfig", "GRUBaseline", "fit_linear", "linear_predictions", "train_gru",
           "gru_inputs", "gru_predictions", "window_sum", "baseline_rows",
           "majority_rows", "baselines_for_run", "DATA_FIELDS"]

#: the baselines, in the order the tables show them
BASELINES = ("majority", "logreg", "logreg_context", "gru")
#: what their rows are called in tables and plots
LABELS = {"majority": "majority class", "logreg": "logistic regression (per utterance)",
          "logreg_context": "logistic regression, log-probs summed over ±k", "gru": "BiGRU (bc-LSTM style)",
          "gru_causal": "GRU, causal"}


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """How the baselines train: the run's missing-rate strategy and the GRU's recipe.

    The GRU's recipe was chosen on the synthetic data's validation split (docs/baselines.md);
    ``windows`` are the ``±k`` the context baseline chooses among on validation."""
    strategy: str = "random"
    rate: float = 0.0  # the fixed strategy's rate
    max_rate: float = 0.7  # random: U[0, max_rate]; progressive: every step up to it
    rate_power: float = 1.0  # random: max_rate * U ** (1 / rate_power) (1: uniform)
    copies: int = 4  # masked copies of the training split the linear models see (the first complete)
    windows: tuple = (1, 2, 3, 4, 6)
    hidden: int = 64
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 8
    epochs: int = 40
    select_rates: tuple = (0.0, 0.3, 0.5, 0.7)
    causal: bool = False
    seed: int = 0

    @classmethod
    def from_train_config(cls, cfg, **changes) -> BaselineConfig:
        """The baselines of a run: its strategy, rates and seed."""
        return cls(strategy=cfg.strategy, rate=cfg.rate, max_rate=cfg.max_rate, rate_power=cfg.rate_power,
                   seed=cfg.seed, causal=cfg.model.causal, **changes)

    def training_rate(self, generator: torch.Generator, step: int, steps: int) -> float:
        """A training batch's (or copy's) missing rate under the strategy; progressive climbs
        from 0 to ``max_rate`` over the ``steps``."""
        if self.strategy == "fixed":
            return self.rate
        if self.strategy == "random":
            return random_rate(self.max_rate, self.rate_power, generator)
        return self.max_rate * step / max(steps - 1, 1)


def _inputs(conv: dict, keep: np.ndarray) -> np.ndarray:
    """``(n, d_t + d_a + d_v + 3)``: the features, zero where missing, and the presence bits."""
    xs = [np.asarray(conv[m], dtype=np.float64) * keep[:, i:i + 1] for i, m in enumerate(MODALITIES)]
    return np.concatenate(xs + [keep.astype(np.float64)], axis=1)


def window_sum(v: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = sum of v[i-k .. i+k]`` within one conversation."""
    n = len(v)
    csum = np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, 0)])
    idx = np.arange(n)
    return csum[np.clip(idx + k + 1, 0, n)] - csum[np.clip(idx - k, 0, n)]


def _masks_for(dataset, rate: float, seed: int) -> dict:
    return {cid: m.numpy() for cid, m in fixed_masks(dataset, rate, seed).items()}


def _scores(dataset, predictions: dict, regression: bool, rate: float, masks: dict) -> dict:
    ys = np.concatenate([np.asarray(c["labels"]) for c in dataset]) if len(dataset) else np.zeros(0)
    ps = np.concatenate([predictions[c["id"]] for c in dataset]) if len(dataset) else np.zeros(0)
    cells = sum(3 * len(c["labels"]) for c in dataset)
    lost = sum(int((~masks[c["id"]]).sum()) for c in dataset)
    task = "regression" if regression else "classification"
    return {"rate": float(rate), "realised_rate": round(lost / max(cells, 1), 4), **compute_metrics(ys, ps, task),
            "n": len(ys)}


# ------------------------------------------------------------------ majority and linear

def majority_rows(splits, rates=EVAL_RATES, split: str = "test", mask_seed: int = 0) -> list[dict]:
    """The majority class (regression: the training mean) at every rate: what chance looks like."""
    regression = splits.num_classes == 1
    train_labels = np.concatenate([np.asarray(c["labels"]) for c in splits.train])
    guess = float(train_labels.mean()) if regression else int(np.bincount(train_labels.astype(np.int64)).argmax())
    data = getattr(splits, split)
    preds = {c["id"]: np.full(len(c["labels"]), guess) for c in data}
    return [_scores(data, preds, regression, r, _masks_for(data, r, mask_seed)) for r in rates]


def fit_linear(splits, config: BaselineConfig):
    """A standardised logistic (ridge, for regression) model on the training split and
    ``config.copies`` masked copies of it (the first complete, the others at the strategy's rates)."""
    from sklearn.linear_model import LogisticRegression, Ridge  # scikit-learn: where used
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(config.seed)
    xs, ys = [], []
    for copy in range(config.copies):
        for conv in splits.train:
            n = len(conv["labels"])
            rate = 0.0 if copy == 0 else config.training_rate(g, copy - 1, config.copies - 1)
            keep = sample_present(torch.tensor([n]), n, rate, g)[0].numpy()
            xs.append(_inputs(conv, keep))
            ys.append(np.asarray(conv["labels"]))
    head = Ridge(alpha=1.0) if splits.num_classes == 1 else LogisticRegression(max_iter=2000)
    return make_pipeline(StandardScaler(), head).fit(np.concatenate(xs), np.concatenate(ys))


def linear_predictions(model, dataset, masks: dict, window: int, regression: bool) -> dict:
    out = {}
    for conv in dataset:
        x = _inputs(conv, masks[conv["id"]])
        if regression:  # the window's mean score
            score = model.predict(x)[:, None]
            out[conv["id"]] = (window_sum(score, window) / window_sum(np.ones_like(score), window))[:, 0]
        else:
            logp = model.predict_log_proba(x)
            out[conv["id"]] = model.classes_[(window_sum(logp, window) if window else logp).argmax(1)]
    return out


# ------------------------------------------------------------------ the recurrent model

class GRUBaseline(nn.Module):
    """bc-LSTM-style ERC: early fusion, a (bi)directional GRU over the conversation, a linear
    head on ``[GRU output, fused utterance]``. Inputs ``(B, L, d_t + d_a + d_v + 3)``."""

    def __init__(self, input_dim: int, num_classes: int, hidden: int = 64, dropout: float = 0.3,
                 causal: bool = False):
        super().__init__()
        self.fuse = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=not causal)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (1 if causal else 2) + hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.fuse(x)
        # packed: the padding never reaches the backward direction's state
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(self.dropout(torch.cat([out, h], dim=-1)))


def gru_inputs(convs: list, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate(convs)
    xs = [batch[m] * present[..., i:i + 1].float() for i, m in enumerate(MODALITIES)]
    return torch.cat(xs + [present.float()], dim=-1), batch


@torch.no_grad()
def gru_predictions(model: GRUBaseline, dataset, masks: dict, regression: bool) -> dict:
    model.eval()
    out = {}
    convs = list(dataset)
    for i in range(0, len(convs), 32):
        part = convs[i:i + 32]
        L = max(len(c["labels"]) for c in part)
        present = torch.zeros(len(part), L, 3, dtype=torch.bool)
        for b, c in enumerate(part):
            present[b, :len(c["labels"])] = torch.from_numpy(masks[c["id"]])
        x, batch = gru_inputs(part, present)
        y = model(x, batch["lengths"])
        for b, c in enumerate(part):
            n = len(c["labels"])
            out[c["id"]] = (y[b, :n, 0] if regression else y[b, :n].argmax(-1)).numpy()
    return out


def train_gru(splits, config: BaselineConfig, log=None) -> tuple[GRUBaseline, list[float]]:
    """The recurrent baseline trained with the strategy's masks, its epoch chosen by the
    validation WAF averaged over ``config.select_rates``; returns the model and that curve."""
    regression = splits.num_classes == 1
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed + 1)
    dim = sum(splits.input_dims) + 3
    model = GRUBaseline(dim, splits.num_classes, config.hidden, config.dropout, config.causal)
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train = list(splits.train)
    valid_masks = {r: _masks_for(splits.valid, r, 0) for r in config.select_rates}
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    best, best_state, curve, step = -math.inf, None, [], 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        for i in range(0, len(order), config.batch_size):
            convs = [train[j] for j in order[i:i + config.batch_size]]
            lengths = torch.tensor([len(c["labels"]) for c in convs])
            present = sample_present(lengths, int(lengths.max()), config.training_rate(g, step, steps), g)
            step += 1
            x, batch = gru_inputs(convs, present)
            y = model(x, lengths)
            valid = torch.arange(x.shape[1])[None] < lengths[:, None]
            if regression:
                loss = nn.functional.mse_loss(y[..., 0][valid], batch["labels"][valid])
            else:
                loss = nn.functional.cross_entropy(y[valid], batch["labels"][valid])
            optim.zero_grad()
            loss.backward()
            optim.step()
        score = float(np.mean([_scores(splits.valid, gru_predictions(model, splits.valid, m, regression), regression,
                                       r, m)["waf"] for r, m in valid_masks.items()]))
        curve.append(score)
        if log is not None:
            log(f"  GRU epoch {epoch + 1}/{config.epochs}: valid WAF {score:.2f}")
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, curve


# ------------------------------------------------------------------ every baseline, per rate

def baseline_rows(splits, config: BaselineConfig, rates=EVAL_RATES, split: str = "test", mask_seed: int = 0,
                  which=BASELINES, log=None) -> dict:
    """``{baseline: [row per rate]}`` on ``split`` with the fixed masks of ``mask_seed`` (the
    model's), plus ``{"logreg_context_k": k}``: the window chosen on validation."""
    regression = splits.num_classes == 1
    data = getattr(splits, split)
    masks = {r: _masks_for(data, r, mask_seed) for r in rates}
    out = {}
    if "majority" in which:
        out["majority"] = majority_rows(splits, rates, split, mask_seed)
    if "logreg" in which or "logreg_context" in which:
        model = fit_linear(splits, config)
        if "logreg" in which:
            out["logreg"] = [_scores(data, linear_predictions(model, data, masks[r], 0, regression), regression, r,
                                     masks[r]) for r in rates]
        if "logreg_context" in which:
            vmasks = {r: _masks_for(splits.valid, r, 0) for r in config.select_rates}
            window_score = {k: np.mean([_scores(splits.valid, linear_predictions(model, splits.valid, m, k, regression),
                                                regression, r, m)["waf"] for r, m in vmasks.items()])
                            for k in config.windows}
            k = max(window_score, key=window_score.get)
            out["logreg_context"] = [_scores(data, linear_predictions(model, data, masks[r], k, regression), regression,
                                             r, masks[r]) for r in rates]
            out["logreg_context_k"] = k
    if "gru" in which:
        model, _ = train_gru(splits, config, log)
        name = "gru_causal" if config.causal else "gru"
        out[name] = [_scores(data, gru_predictions(model, data, masks[r], regression), regression, r, masks[r])
                     for r in rates]
    return out


# ------------------------------------------------------------------ a run's baselines, cached

#: the config fields that decide a run's data (the baselines are the same for every model on it)
DATA_FIELDS = ("dataset", "data_root", "label_file", "text_root", "audio_root", "visual_root", "fold", "select_on",
               "syn_conversations", "syn_min_len", "syn_max_len", "syn_classes", "syn_dims", "seed")


def baselines_for_run(cfg, splits, rates=EVAL_RATES, split: str = "test", mask_seed: int = 0, folder: str | None = None,
                      config: BaselineConfig | None = None, log=None) -> dict:
    """The baselines of the run ``cfg`` (its data, strategy and seed) on ``split`` at ``rates``:
    ``{"key", "rows": {baseline: rows}, "logreg_context_k", "config"}``. With ``folder``, kept
    there as ``baselines-<key>.json`` (the key: data, strategy, masks, recipe), so re-evaluating
    a checkpoint, or another model on the same data, does not retrain them."""
    config = config or BaselineConfig.from_train_config(cfg)
    plain = cfg.to_dict()
    recipe = dataclasses.asdict(config)
    if recipe["rate_power"] == 1.0:  # the uniform draw: left out, so baselines kept before the option still match
        del recipe["rate_power"]
    what = {"data": {k: plain[k] for k in DATA_FIELDS}, "baseline": recipe,
            "rates": [float(r) for r in rates], "split": split, "mask_seed": mask_seed}
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = os.path.join(folder, f"baselines-{key}.json") if folder else None
    if path and os.path.isfile(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cached
        except (OSError, ValueError):
            pass  # unreadable: computed again
    if log is not None:
        log(f"training the baselines on {getattr(splits, split).name} (majority, logistic regression, BiGRU; "
            f"{config.strategy} missing rates, as the model) ...")
    out = baseline_rows(splits, config, rates, split, mask_seed)
    result = {"key": key, "config": what, "logreg_context_k": out.pop("logreg_context_k", None), "rows": out}
    if path:
        atomic_write(path, json.dumps(result, indent=1))
    return result

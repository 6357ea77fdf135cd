"""Synthetic conversations (the default dataset; docs/data.md says what they encode).

* 10-110 utterances, two alternating speakers (one for regression, like CMU-MOSI).
* Labels follow *local emotional stability*: a sticky Markov chain — runs of one emotion
  that change at context shifts (probability ``shift_prob`` per utterance), the new emotion
  drawn from IEMOCAP-like class frequencies.
* Each modality sees the label through a latent class prototype plus noise, mapped by a
  fixed random matrix into ``d_m`` dimensions. Modalities differ in signal scale (text 1.0,
  audio 0.8, visual 0.6: measured, text is the strongest, audio and visual close) and each
  merges particular class pairs (audio: arousal — happy/angry and
  sad/neutral; visual: neutral/sad, happy/excited; text: mild ones), so modalities are
  complementary and dropping one costs accuracy.
* Context matters: a fraction ``ambiguous`` of utterances carry only a weak signal in every
  modality (the label is still the run's emotion): a model that reads its neighbours
  resolves them, a per-utterance classifier cannot. Each conversation and speaker also adds
  a small offset to the features.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import MODALITIES
from .dataset import CLASS_COUNTS, CLASS_NAMES, SYNTHETIC_DIMS, ConversationDataset, DataSplits

__all__ = ["SyntheticSpec", "make_synthetic"]


# which class groups each modality (text, audio, visual) can barely tell apart
_CONFUSIONS = {
    4: ([(2, 1)], [(0, 3), (1, 2)], [(2, 1), (0, 3)]),
    6: ([(0, 4), (3, 5)], [(0, 3, 4), (1, 2, 5)], [(2, 5, 1), (0, 4)]),
}


_RELIABILITY = (1.0, 0.8, 0.6)  # latent signal scale of text, audio, visual
_AMBIGUOUS_SCALE = 0.15  # an ambiguous utterance's share of the signal
_CONVERSATION_OFFSET = 0.6  # std of a conversation's constant latent offset (recording conditions)
_SPEAKER_OFFSET = 0.4  # std of a speaker's constant latent offset
_FEATURE_NOISE = 0.3  # std of the noise added after the latent-to-feature map


@dataclass
class SyntheticSpec:
    num_conversations: int = 120
    min_len: int = 10
    max_len: int = 110
    num_classes: int = 4  # 4 or 6 emotions, or 1 = regression in [-3, 3]
    dims: tuple = SYNTHETIC_DIMS["small"]  # (text, audio, visual)
    seed: int = 0
    shift_prob: float = 0.12  # P(context shift) before each utterance
    ambiguous: float = 0.3  # fraction of utterances whose signal is weak in every modality
    signal: float = 2.4  # latent signal scale (noise has unit variance)
    latent: int = 8  # latent dimension per modality
    split: tuple = (0.7, 0.1, 0.2)


def _prototypes(rng, num_classes, latent, groups):
    """Unit class prototypes in which the classes of each group sit close together."""
    protos = rng.standard_normal((max(num_classes, 2), latent))
    for g in groups:
        centre = rng.standard_normal(latent)
        for c in g:  # mostly the shared centre, a little of their own direction
            protos[c] = 0.92 * centre / np.linalg.norm(centre) + 0.39 * protos[c] / np.linalg.norm(protos[c])
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def make_synthetic(spec: SyntheticSpec) -> DataSplits:
    """Train/valid/test conversations, all from ``spec.seed`` (no download)."""
    if spec.num_classes not in (1, 4, 6):
        raise ValueError(f"synthetic num_classes must be 4, 6 or 1 (regression), got {spec.num_classes}")
    if not 1 <= spec.min_len <= spec.max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {spec.min_len}, {spec.max_len}")
    rng = np.random.default_rng(spec.seed)
    C = spec.num_classes
    regression = C == 1
    r = spec.latent
    if regression:
        # direction 0: valence (sign), 1: intensity; audio hears intensity better than sign
        mix = ((1.0, 0.3), (0.35, 1.0), (0.7, 0.5))
        basis = [rng.standard_normal((2, r)) for _ in MODALITIES]
        basis = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in basis]
    else:
        protos = [_prototypes(rng, C, r, g) for g in _CONFUSIONS[C]]
        prior = np.asarray(CLASS_COUNTS[C], dtype=float)
        prior /= prior.sum()
    # fixed random maps latent -> feature space, scaled so features have O(1) entries
    maps = [rng.standard_normal((r, d)) / np.sqrt(r) for d in spec.dims]

    conversations = []
    for ci in range(spec.num_conversations):
        n = int(rng.integers(spec.min_len, spec.max_len + 1))
        # sticky chain: a shift before utterance i starts a new run with a new emotion
        shifts = rng.random(n) < spec.shift_prob
        shifts[0] = True
        if regression:
            seg = np.where(shifts, rng.uniform(-3, 3, n), 0.0)
            run_value = seg[np.maximum.accumulate(np.where(shifts, np.arange(n), 0))]
            labels = np.clip(np.round((run_value + 0.4 * rng.standard_normal(n)) * 3) / 3, -3, 3)
            labels = labels.astype(np.float32)
            speakers = np.zeros(n, dtype=np.int64)
        else:
            labels = np.empty(n, dtype=np.int64)
            cur = -1
            for i in range(n):
                if shifts[i]:
                    p = prior.copy()
                    if cur >= 0:
                        p[cur] = 0.0
                    cur = int(rng.choice(C, p=p / p.sum()))
                labels[i] = cur
            # alternating turns, sometimes a speaker holds the floor
            turns = rng.random(n) < 0.8
            turns[0] = bool(rng.integers(2))
            speakers = (np.cumsum(turns) % 2).astype(np.int64)
        strength = np.where(rng.random(n) < spec.ambiguous, _AMBIGUOUS_SCALE, 1.0) * spec.signal
        conv = {"id": f"syn{ci:04d}", "labels": labels, "speakers": speakers}
        for m, name in enumerate(MODALITIES):
            if regression:
                y = labels / 3.0
                signal = np.outer(mix[m][0] * y, basis[m][0]) + np.outer(mix[m][1] * np.abs(y), basis[m][1])
            else:
                signal = protos[m][labels]
            z = _RELIABILITY[m] * strength[:, None] * signal
            z = z + _CONVERSATION_OFFSET * rng.standard_normal(r)
            z = z + _SPEAKER_OFFSET * rng.standard_normal((2, r))[speakers]
            z = z + rng.standard_normal((n, r))
            x = z @ maps[m] + _FEATURE_NOISE * rng.standard_normal((n, spec.dims[m]))
            conv[name] = x.astype(np.float32)
        conversations.append(conv)

    order = rng.permutation(spec.num_conversations)
    n_train = int(round(spec.split[0] * len(order)))
    n_valid = int(round(spec.split[1] * len(order)))
    parts = np.split(order, [n_train, n_train + n_valid])
    names = CLASS_NAMES.get(C, ())
    tag = f"synthetic-{'regression' if regression else f'{C}class'}"
    ds = [ConversationDataset([conversations[i] for i in idx], spec.dims, C, names, f"{tag}/{s}")
          for idx, s in zip(parts, ("train", "valid", "test"))]
    for d in ds:
        d.name = tag
    return DataSplits(*ds, input_dims=tuple(spec.dims), num_classes=C, class_names=names)

"""How close to the best possible are the models on the synthetic data? A near-Bayes reference.

    python experiments/oracle.py --seeds 0,1,2            # WAF per UME rate, test split, mean over seeds

The synthetic generator (``iteach_fast/data/synthetic.py``) is a hidden Markov model: a sticky
chain of emotions (a shift before each utterance with probability ``shift_prob``, the new
emotion drawn from the class prior without the current one) emitting, per modality, a latent
``z = reliability * strength * prototype[label] + offsets + noise`` mapped linearly into the
features. This script rebuilds the generator's own prototypes and maps from the seed (the
first draws of ``make_synthetic``), reads each utterance's latent back through the map's
pseudo-inverse, scores every emotion with the exact emission mixture (ambiguous or not), and
runs forward-backward over the conversation with the exact transition matrix; a missing
modality contributes no factor. The conversation's and speakers' offsets are unknown to it
too: it estimates them from the conversation (their posterior mean given the current emotion
posterior, ``--iterations`` rounds; 0 treats them as independent noise per utterance). So it is
a classifier the data allows, close to the best possible, not a proven bound. The masks are the
evaluation's fixed test masks (``fixed_masks(test, rate, 0)``), the metric its weighted F1.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import f1_score

from iteach_fast.choices import MODALITIES
from iteach_fast.data.dataset import CLASS_COUNTS
from iteach_fast.data.masking import EVAL_RATES, fixed_masks
from iteach_fast.data.sources import synthetic_spec
from iteach_fast.data.synthetic import (
    _AMBIGUOUS_SCALE,
    _CONFUSIONS,
    _CONVERSATION_OFFSET,
    _FEATURE_NOISE,
    _RELIABILITY,
    _SPEAKER_OFFSET,
    SyntheticSpec,
    _prototypes,
    make_synthetic,
)
from iteach_fast.training.config import TrainConfig

OFFSET_VAR = _CONVERSATION_OFFSET ** 2 + _SPEAKER_OFFSET ** 2  # what the offsets add to the unit noise


def generator_parameters(spec: SyntheticSpec):
    """The prototypes and latent-to-feature maps ``make_synthetic(spec)`` draws first."""
    rng = np.random.default_rng(spec.seed)
    protos = [_prototypes(rng, spec.num_classes, spec.latent, g) for g in _CONFUSIONS[spec.num_classes]]
    maps = [rng.standard_normal((spec.latent, d)) / np.sqrt(spec.latent) for d in spec.dims]
    return protos, maps


def _latents(conv: dict, spec: SyntheticSpec, maps) -> list:
    """Each modality's latent read back through its map's pseudo-inverse, and the read-back noise's covariance."""
    out = []
    for m, name in enumerate(MODALITIES):
        pinv = np.linalg.pinv(maps[m])  # (d, r): x = z M + s e, so x pinv = z + s e pinv
        out.append((conv[name].astype(np.float64) @ pinv, _FEATURE_NOISE ** 2 * pinv.T @ pinv))
    return out


def emission_terms(latents, keep, spec: SyntheticSpec, protos, offsets=None):
    """``(loglik (n, C), ambiguous (n, C, M))``: log p(kept latents of utterance i | emotion c),
    and p(utterance i is ambiguous | c, modality m). Without ``offsets`` the conversation and
    speaker offsets count as white noise; with them (``(n, r)`` per modality) they are removed."""
    C, r = spec.num_classes, spec.latent
    n = len(keep)
    loglik, amb = np.zeros((n, C)), np.zeros((n, C, len(MODALITIES)))
    strengths = (_AMBIGUOUS_SCALE * spec.signal, spec.signal)
    with np.errstate(divide="ignore"):  # a weight of 0 is a component that never occurs: log 0 = -inf
        log_w = np.log([spec.ambiguous, 1.0 - spec.ambiguous])
    for m, (z, readback) in enumerate(latents):
        if offsets is None:
            cov = (1.0 + OFFSET_VAR) * np.eye(r) + readback
        else:
            z = z - offsets[m]
            cov = np.eye(r) + readback
        prec = np.linalg.inv(cov)
        _, logdet = np.linalg.slogdet(cov)
        comps = np.empty((n, C, 2))
        for c in range(C):
            for k, s in enumerate(strengths):
                diff = z - _RELIABILITY[m] * s * protos[m][c]
                comps[:, c, k] = log_w[k] - 0.5 * np.einsum("ni,ij,nj->n", diff, prec, diff) - 0.5 * logdet
        both = np.logaddexp(comps[..., 0], comps[..., 1])
        loglik += np.where(keep[:, m:m + 1], both, 0.0)
        amb[..., m] = np.exp(comps[..., 0] - both)
    return loglik, amb


def estimate_offsets(latents, keep, speakers, post, amb, spec: SyntheticSpec, protos) -> list:
    """Each modality's conversation + speaker offset at each utterance: the posterior mean of
    ``c + s_k`` (the generator's Gaussian priors) given the residuals ``z - E[signal]`` of the
    kept utterances, the signal's expectation taken over the current emotion posterior."""
    out = []
    for m, (z, _) in enumerate(latents):
        # E[strength | c] per (i, c)
        scale = _RELIABILITY[m] * spec.signal * (1.0 - (1.0 - _AMBIGUOUS_SCALE) * amb[..., m])
        signal = np.einsum("nc,nc,cr->nr", post, scale, protos[m][:post.shape[1]])
        kept = keep[:, m]
        A = np.stack([np.ones(len(z)), speakers == 0, speakers == 1], 1).astype(float)[kept]
        P = np.diag([_CONVERSATION_OFFSET ** -2, _SPEAKER_OFFSET ** -2, _SPEAKER_OFFSET ** -2]) + A.T @ A  # unit noise
        coef = np.linalg.solve(P, A.T @ (z - signal)[kept]) if kept.any() else np.zeros((3, z.shape[1]))
        out.append(coef[0] + coef[1:][speakers])
    return out


def posterior(loglik: np.ndarray, prior: np.ndarray, shift_prob: float) -> np.ndarray:
    """Forward-backward marginals ``(n, C)`` of the sticky chain."""
    C = len(prior)
    trans = np.empty((C, C))
    for i in range(C):
        p = prior.copy()
        p[i] = 0.0
        trans[i] = shift_prob * p / p.sum()
        trans[i, i] = 1.0 - shift_prob
    like = np.exp(loglik - loglik.max(1, keepdims=True))
    n = len(like)
    alpha, beta = np.zeros((n, C)), np.ones((n, C))
    alpha[0] = prior * like[0]
    alpha[0] /= alpha[0].sum()
    for i in range(1, n):
        alpha[i] = (alpha[i - 1] @ trans) * like[i]
        alpha[i] /= alpha[i].sum()
    for i in range(n - 2, -1, -1):
        beta[i] = trans @ (like[i + 1] * beta[i + 1])
        beta[i] /= beta[i].sum()
    post = alpha * beta
    return post / post.sum(1, keepdims=True)


def oracle_waf(spec: SyntheticSpec, rates=EVAL_RATES, mask_seed: int = 0, iterations: int = 5) -> list[float]:
    """The reference's weighted F1 (%) on the test split of ``spec`` at each rate."""
    test = make_synthetic(spec).test
    protos, maps = generator_parameters(spec)
    prior = np.asarray(CLASS_COUNTS[spec.num_classes], dtype=float)
    prior /= prior.sum()
    scores = []
    for rate in rates:
        masks = fixed_masks(test, rate, mask_seed)
        y, p = [], []
        for conv in test:
            keep = masks[conv["id"]].numpy().astype(bool)
            latents = _latents(conv, spec, maps)
            loglik, amb = emission_terms(latents, keep, spec, protos)
            post = posterior(loglik, prior, spec.shift_prob)
            for _ in range(iterations):  # offsets from the posterior, the posterior without them
                offsets = estimate_offsets(latents, keep, conv["speakers"], post, amb, spec, protos)
                loglik, amb = emission_terms(latents, keep, spec, protos, offsets)
                post = posterior(loglik, prior, spec.shift_prob)
            y.append(conv["labels"])
            p.append(post.argmax(1))
        scores.append(100.0 * f1_score(np.concatenate(y), np.concatenate(p), average="weighted"))
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated data seeds")
    p.add_argument("--conversations", type=int, default=120, help="the recipe's synthetic set: 120")
    p.add_argument("--max-len", type=int, default=60, help="the recipe's longest conversation: 60")
    p.add_argument("--iterations", type=int, default=5,
                   help="rounds of offset estimation (0: offsets as white noise)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [synthetic_spec(TrainConfig().replace(syn_conversations=args.conversations, syn_max_len=args.max_len,
                                                   seed=s)) for s in seeds]
    rows = np.array([oracle_waf(spec, iterations=args.iterations) for spec in specs])
    print(f"near-Bayes reference, test split, WAF % (seeds {args.seeds}):")
    print("| " + " | ".join(f"{r:.1f}" for r in EVAL_RATES) + " | avg |")
    print("|" + "---|" * (len(EVAL_RATES) + 1))
    print("| " + " | ".join(f"{x:.2f}" for x in rows.mean(0)) + f" | {rows.mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a trained model use its neighbours? Two probes of a checkpoint on its test split.

    python experiments/probes.py CHECKPOINT [CHECKPOINT ...]

* **shuffled**: every test conversation's utterances permuted (each keeps its features and
  label): what the model reads from the order of the conversation is gone.
* **self only**: every attention (the encoders' MixMaps and the cross-attentions) returns
  the utterance's own value instead of a mixture over the conversation: self-attention sees
  only itself, the cross-attention fuses the same utterance's audio / visual. The NAS
  student's pools and token MLP still mix neighbours.

A model that exploits context loses accuracy under both; one whose attention does not use
it loses nothing under "self only" (or gains, when its attention mixed in noise).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from iteach_fast.nn import modules
from iteach_fast.training.checkpoint import load_for_eval
from iteach_fast.training.validation import evaluate_rates

RATES = (0.0, 0.3, 0.7)


def measure(net, test) -> dict:
    teacher = evaluate_rates(net, test, (0.0,), 0, 32, "cpu", model="teacher")[0]["waf"]
    student = [r["waf"] for r in evaluate_rates(net, test, RATES, 0, 32, "cpu")]
    return {"teacher": teacher, **{f"student@{r}": w for r, w in zip(RATES, student)}}


def probes(path: str) -> dict:
    net, _, splits, _ = load_for_eval(path, device="cpu")
    test = splits.test
    out = {"as trained": measure(net, test)}
    saved = [dict(c) for c in test.conversations]
    rng = np.random.default_rng(0)
    for c in test.conversations:
        order = rng.permutation(len(c["labels"]))
        for key in ("text", "audio", "visual", "labels", "speakers"):
            c[key] = c[key][order]
    out["shuffled"] = measure(net, test)
    for c, s in zip(test.conversations, saved):
        c.update(s)
    real = modules.backends.call

    def self_only(op, backend, *args):
        return args[2].clone() if op == "ecce_attention" else real(op, backend, *args)

    modules.backends.call = self_only
    try:
        out["self only"] = measure(net, test)
    finally:
        modules.backends.call = real
    return out


def main(argv=None) -> int:
    torch.set_num_threads(1)
    paths = argv if argv is not None else sys.argv[1:]
    print("| checkpoint | probe | teacher (complete) | " + " | ".join(f"student @{r}" for r in RATES) + " |")
    print("|---|---|---|" + "---|" * len(RATES))
    for path in paths:
        for probe, m in probes(path).items():
            print(f"| {path} | {probe} | {m['teacher']:.2f} | " + " | ".join(f"{m[f'student@{r}']:.2f}" for r in RATES)
                  + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

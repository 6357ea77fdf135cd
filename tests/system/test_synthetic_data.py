"""What the synthetic data encodes (docs/data.md, "Synthetic conversations"), measured with
the simplest models on the demo's set (seed 0), so that a model's failure can be told from
the data's: emotion runs, every modality informative alone, text the strongest, modalities
complementary, and context worth several points to a per-utterance classifier."""
import numpy as np
import pytest

from iteach_fast.data.synthetic import SyntheticSpec, make_synthetic
from iteach_fast.evaluation.baselines import window_sum
from iteach_fast.training.validation import compute_metrics

MODALITIES = ("text", "audio", "visual")
pytestmark = pytest.mark.slow  # logistic regressions on ~3,000 utterances


@pytest.fixture(scope="module")
def demo_set():
    return make_synthetic(SyntheticSpec(num_conversations=120, max_len=60, seed=0))


def _features(ds, mods):
    return [np.concatenate([np.asarray(c[m], np.float64) for m in mods], 1) for c in ds]


def _labels(ds):
    return np.concatenate([c["labels"] for c in ds])


def _fit(ds, mods):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        np.concatenate(_features(ds, mods)), _labels(ds))


def test_labels_come_in_runs(demo_set):
    runs = []
    for c in demo_set.train:
        labels = c["labels"]
        runs += list(np.diff(np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])))
    assert 5.0 <= np.mean(runs) <= 10.0  # a shift every ~8 utterances, each to another emotion


def test_each_modality_alone_is_informative_and_text_the_most(demo_set):
    y = _labels(demo_set.test)
    chance = compute_metrics(y, np.full_like(y, np.bincount(_labels(demo_set.train)).argmax()))["waf"]
    waf = {}
    for mods in [(m,) for m in MODALITIES] + [MODALITIES]:
        clf = _fit(demo_set.train, mods)
        waf[mods] = compute_metrics(y, clf.predict(np.concatenate(_features(demo_set.test, mods))))["waf"]
    assert all(waf[(m,)] > chance + 15 for m in MODALITIES), waf
    assert waf[("text",)] > max(waf[("audio",)], waf[("visual",)]) + 3, waf
    assert waf[MODALITIES] > waf[("text",)] + 3, waf  # the others add what text lacks


def test_context_is_worth_several_points(demo_set):
    clf = _fit(demo_set.train, MODALITIES)
    y = _labels(demo_set.test)
    per_utterance, window = [], []
    for x in _features(demo_set.test, MODALITIES):
        logp = clf.predict_log_proba(x)
        per_utterance.append(clf.classes_[logp.argmax(1)])
        window.append(clf.classes_[window_sum(logp, 1).argmax(1)])
    gain = compute_metrics(y, np.concatenate(window))["waf"] - compute_metrics(y, np.concatenate(per_utterance))["waf"]
    assert gain > 5, gain

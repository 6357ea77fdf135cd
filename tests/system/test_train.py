"""Tests of the training loop (iteach_fast.training.loop): every strategy and framework for one
epoch on tiny data, the strategies' rates, atomic checkpoints, bit-identical resume, and
the errors of the set-up helpers. The eq. 12-15 loss itself is tested in test_model.py."""
import os

import numpy as np
import pytest
import torch

from iteach_fast.training import checkpoint, runtime, step
from iteach_fast.training import loop as training
from iteach_fast.training.checkpoint import load_for_eval
from tests.system.helpers import quiet


@pytest.mark.parametrize("strategy,framework", [("fixed", "its"), ("random", "its"), ("progressive", "its"),
                                                ("random", "ts"), ("random", "pre")])
def test_one_epoch_each_strategy_and_framework(tmp_path, strategy, framework, tiny):
    cfg = tiny(tmp_path, strategy=strategy, framework=framework, rate=0.3)
    out = training.train(cfg, log=quiet)
    assert os.path.isfile(out["best"]) and os.path.isfile(out["last"])
    assert not [f for f in os.listdir(cfg.out_dir) if ".tmp" in f]  # no half-written checkpoint left
    (h,) = out["history"]
    assert h["epoch"] == 1 and all(torch.isfinite(torch.tensor(h[k])) for k in ("total", "emo", "rec"))
    assert h["train_conversations"] == 6 and 0 < h["train_seconds"] <= h["seconds"]  # throughput
    assert 0.0 <= h["valid_waf"] <= 100.0 and out["best_epoch"] == 1
    net, cfg2, splits, ckpt = load_for_eval(out["best"], device="cpu")
    assert cfg2.model.framework == framework and cfg2.strategy == strategy and not net.training
    assert (net.teacher is net.student) == (framework == "pre")  # pre: one model, teacher and student
    assert ckpt["data"]["input_dims"] == [6, 4, 5] and ckpt["version"] == checkpoint.CHECKPOINT_VERSION


def test_rate_schedule_of_each_strategy(tmp_path, tiny):
    g = torch.Generator().manual_seed(0)
    assert step.rate_for(tiny(tmp_path, strategy="fixed", rate=0.4), 7, g) == 0.4
    rnd = tiny(tmp_path, strategy="random", max_rate=0.7)
    rates = [step.rate_for(rnd, 0, g) for _ in range(200)]
    assert 0.0 <= min(rates) < 0.1 and 0.6 < max(rates) <= 0.7
    prog = tiny(tmp_path, strategy="progressive", progressive_step=0.1, progressive_every=10, max_rate=0.7)
    got = [step.rate_for(prog, e, g) for e in (0, 9, 10, 25, 69, 70, 99)]
    assert got == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.6, 0.7, 0.7])


def test_rate_power_moves_the_random_rates_up(tmp_path, tiny):
    """--rate-power (not the paper's): power 1 is the uniform draw, draw for draw; power 2 draws
    max_rate * sqrt(U) (mean 2/3 of max_rate, against 1/2), still within [0, max_rate]; the
    baselines of the run train with the same draw. A power <= 0 or non-finite is refused."""
    def draws(cfg, n=4000):
        g = torch.Generator().manual_seed(3)
        return np.array([step.rate_for(cfg, 0, g) for _ in range(n)])
    g = torch.Generator().manual_seed(3)
    uniform = np.array([float(torch.rand((), generator=g)) * 0.7 for _ in range(4000)])
    assert np.array_equal(draws(tiny(tmp_path, strategy="random", max_rate=0.7)), uniform)
    skewed = draws(tiny(tmp_path, strategy="random", max_rate=0.7, rate_power=2.0))
    assert np.allclose(skewed, 0.7 * np.sqrt(uniform / 0.7))
    assert 0.0 <= skewed.min() and skewed.max() <= 0.7
    assert skewed.mean() == pytest.approx(0.7 * 2 / 3, abs=0.01) and uniform.mean() == pytest.approx(0.35, abs=0.01)
    from iteach_fast.evaluation.baselines import BaselineConfig
    cfg = tiny(tmp_path, strategy="random", max_rate=0.7, rate_power=2.0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    baseline = BaselineConfig.from_train_config(cfg)
    assert baseline.rate_power == 2.0
    assert [baseline.training_rate(g1, s, 10) for s in range(10)] == [step.rate_for(cfg, 0, g2) for _ in range(10)]
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="rate_power"):
            tiny(tmp_path, rate_power=bad).validate()


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_is_bit_identical(tmp_path, tiny):
    # dropout and the random strategy exercise the torch RNG and the mask generator
    base = dict(strategy="random", dropout=0.1, epochs=2)
    straight = training.train(tiny(tmp_path / "a", **base), log=quiet)
    first = training.train(tiny(tmp_path / "b", **{**base, "epochs": 1}), log=quiet)
    resumed = training.train(tiny(tmp_path / "b", **base), resume=first["last"], log=quiet)
    a, b = _state(straight["last"]), _state(resumed["last"])
    assert a["epoch"] == b["epoch"] == 1
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]


def test_resume_with_a_weight_average_is_bit_identical(tmp_path, tiny):
    """ema: the trained weights and their average both continue exactly."""
    base = dict(strategy="random", dropout=0.1, epochs=2, ema=0.9)
    straight = training.train(tiny(tmp_path / "a", **base), log=quiet)
    first = training.train(tiny(tmp_path / "b", **{**base, "epochs": 1}), log=quiet)
    resumed = training.train(tiny(tmp_path / "b", **base), resume=first["last"], log=quiet)
    a, b = _state(straight["last"]), _state(resumed["last"])
    for key in ("model", "trained_model"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert [h["valid_waf"] for h in a["history"]] == [h["valid_waf"] for h in b["history"]]


def test_weight_average_is_what_is_validated_saved_and_evaluated(tmp_path, tiny, monkeypatch):
    """With ema the checkpoint's ``model`` is the moving average of the trained weights
    (``trained_model``), every step ``avg <- d avg + (1 - d) w`` from the initial weights;
    validation and load_for_eval read the average."""
    from iteach_fast.training.averaging import WeightAverage

    # the average, replayed by hand over the steps of one epoch
    steps, d = [], 0.7
    real_update = WeightAverage.update

    def update(self):
        steps.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})
        real_update(self)
    monkeypatch.setattr(WeightAverage, "update", update)
    made = []
    real_init = WeightAverage.__init__

    def init(self, net, decay):
        real_init(self, net, decay)
        made.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    monkeypatch.setattr(WeightAverage, "__init__", init)
    out = training.train(tiny(tmp_path, epochs=1, ema=d), log=quiet)
    ckpt = _state(out["last"])
    expect = made[0]
    for w in steps:
        expect = {k: (d * v + (1 - d) * w[k]) if v.is_floating_point() else w[k] for k, v in expect.items()}
    assert len(steps) >= 2
    for k, v in ckpt["model"].items():
        torch.testing.assert_close(v, expect[k], rtol=1e-5, atol=1e-6)
    for k, v in ckpt["trained_model"].items():
        assert torch.equal(v, steps[-1][k]), k
    assert any(not torch.equal(ckpt["model"][k], ckpt["trained_model"][k]) for k in ckpt["model"])
    net, cfg, splits, _ = load_for_eval(out["last"], device="cpu")
    assert cfg.ema == d
    for k, v in net.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    # the epoch was selected on the average's validation score
    scores = training.evaluate_rates(net, splits.valid, cfg.select_rates, cfg.eval_seed, cfg.batch_size, "cpu")
    assert ckpt["history"][0]["valid_waf"] == pytest.approx(sum(r["waf"] for r in scores) / len(scores))
    with pytest.raises(ValueError, match="ema"):
        tiny(tmp_path, ema=1.0).validate()


def test_rec_weight_reaches_the_loss(tmp_path, tiny, monkeypatch):
    """--rec-weight (not the paper's) is the weight the training step gives L_rec; a negative
    or non-finite one is refused before training, naming the key."""
    from iteach_fast.nn.model import ITEACHNet

    seen = []
    real_loss = ITEACHNet.loss

    def loss(self, *args, **kwargs):
        seen.append(kwargs.get("rec_weight"))
        return real_loss(self, *args, **kwargs)
    monkeypatch.setattr(ITEACHNet, "loss", loss)
    training.train(tiny(tmp_path, epochs=1, rec_weight=0.3), log=quiet, max_steps=1)
    assert seen == [0.3]
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="rec_weight"):
            tiny(tmp_path, rec_weight=bad).validate()


def test_max_steps_and_zero_epochs(tmp_path, tiny):
    out = training.train(tiny(tmp_path, epochs=3), log=quiet, max_steps=1)
    assert len(out["history"]) == 1
    out0 = training.train(tiny(tmp_path / "zero", epochs=0), log=quiet)
    assert out0["history"] == [] and checkpoint.load_checkpoint(out0["best"])["config"]["epochs"] == 0
    load_for_eval(out0["last"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pt")
    checkpoint.save_checkpoint(path, model={"w": torch.ones(2)}, config={})
    real_replace = os.replace

    def crash(src, dst):  # the new file is fully written, then the machine dies before the rename
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, model={"w": torch.zeros(2)}, config={})
    monkeypatch.setattr(os, "replace", real_replace)
    assert torch.equal(checkpoint.load_checkpoint(path)["model"]["w"], torch.ones(2))  # the old one is intact
    assert os.listdir(tmp_path) == ["ck.pt"]  # and no temporary file is left behind


def test_checkpoint_and_setup_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        checkpoint.load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not an iteach-fast checkpoint"):
        checkpoint.load_checkpoint(str(bad))
    with pytest.raises(ValueError, match="--device"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="--dtype bf16"):
        runtime.check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="strategy"):
        tiny(tmp_path, strategy="sometimes")
    with pytest.raises(ValueError, match="unknown config keys"):
        tiny(tmp_path).replace(epoch=3)

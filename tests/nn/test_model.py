"""Tests of the model (iteach_fast.nn.model): teacher / student, the frameworks, the eq. 12-15
loss, the optimiser groups, padding invariance, length 0 / 1, training steps, sizes."""
import pytest
import torch
import torch.nn.functional as F

from iteach_fast.nn.config import ConfigError, ModelConfig
from iteach_fast.nn.model import REC_WEIGHTS, ITEACHModel, ITEACHNet, ModelOutput
from iteach_fast.nn.modules import RoutedTokenMixer

DIMS = (12, 8, 10)
SMALL = dict(dim=16, heads=4, max_len=24, dist=5, conv_kernel=3)
B, L, C = 4, 9, 4


def valid(lens, L_=L):
    return torch.arange(L_) < lens[:, None]


def batch(lens=(9, 5, 1, 0), L_=L, missing_rate=0.4):
    """Random complete features, a presence mask keeping >= 1 modality per utterance, the
    incomplete features (missing zeroed, GCNet's convention), lengths, class labels."""
    lens = torch.tensor(lens)
    complete = tuple(torch.randn(len(lens), L_, d) for d in DIMS)
    present = torch.rand(len(lens), L_, 3) > missing_rate
    keep = torch.randint(0, 3, (len(lens), L_))
    present |= F.one_hot(keep, 3).bool() & ~present.any(-1, keepdim=True)
    incomplete = tuple(x * present[..., m:m + 1] for m, x in enumerate(complete))
    labels = torch.randint(0, C, (len(lens), L_))
    labels[~valid(lens, L_)] = -1  # padding labels are garbage; the loss must never look at them
    return complete, incomplete, lens, present, labels


def _perturb(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
    return module


# ----------------------------------------------------------------------------- ITEACHModel

@pytest.mark.parametrize("mixer", ["tf", "nas"])
def test_model_outputs(mixer):
    m = _perturb(ITEACHModel(DIMS, C, num_layers=3, mixer=mixer, **SMALL))
    complete, _, lens, present, _ = batch()
    out = m(*complete, lens, present)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (B, L, C)
    assert len(out.hidden) == 3 and all(h.shape == (B, L, SMALL["dim"]) for h in out.hidden)
    ok = valid(lens)
    assert (out.logits[~ok] == 0).all() and all((h[~ok] == 0).all() for h in out.hidden)
    # H_1 is the last layer's fused text, the classifier's input (eq. 3-4 numbering)
    torch.testing.assert_close(out.logits[ok], m.classifier(out.hidden[0])[ok])
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, inp, o: seen.append(o[0])) for layer in m.layers]
    m(*complete, lens, present)
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(out.hidden, reversed(seen)))


def test_model_regression_output():
    m = ITEACHModel(DIMS, 1, num_layers=2, mixer="nas", **SMALL)
    complete, _, lens, present, _ = batch()
    out = m(*complete, lens, present)
    assert out.logits.shape == (B, L) and (out.logits[~valid(lens)] == 0).all()


def test_model_zp_computed_once_per_modality():
    """ECCE runs once per modality per forward (shared by all layers), not once per layer."""
    m = ITEACHModel(DIMS, C, num_layers=3, **SMALL)
    calls = []
    for e in m.ecce:
        e.register_forward_hook(lambda *a: calls.append(1))
    complete, _, lens, _, _ = batch()
    m(*complete, lens)
    assert len(calls) == 3


@pytest.mark.parametrize("mixer", ["tf", "nas"])
def test_model_padding_invariance(mixer):
    m = _perturb(ITEACHModel(DIMS, C, num_layers=2, mixer=mixer, **SMALL))
    complete, _, lens, present, _ = batch()
    ref = m(*complete, lens)
    extra = 4
    garbage = tuple(torch.where(valid(lens, L + extra)[..., None],
                                F.pad(x, (0, 0, 0, extra)), 100 * torch.randn(B, L + extra, x.shape[-1]))
                    for x in complete)
    out = m(*garbage, lens)
    ok = valid(lens)
    torch.testing.assert_close(out.logits[:, :L][ok], ref.logits[ok], atol=1e-5, rtol=1e-4)
    for h2, h in zip(out.hidden, ref.hidden):
        torch.testing.assert_close(h2[:, :L][ok], h[ok], atol=1e-5, rtol=1e-4)
    ok2 = valid(lens, L + extra)
    assert (out.logits[~ok2] == 0).all() and all((h[~ok2] == 0).all() for h in out.hidden)


def test_model_backends_agree():
    m = _perturb(ITEACHModel(DIMS, C, num_layers=2, mixer="nas", **SMALL))
    complete, _, lens, _, _ = batch()
    m.set_backend("reference")
    ref = m(*complete, lens)
    m.set_backend("auto")
    out = m(*complete, lens)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("lens", [(0, 0, 0, 0), (1, 0, 1, 0), (1, 9, 0, 1)])
def test_model_length_zero_and_one_no_nan(lens):
    net = _perturb(ITEACHNet(DIMS, C, **SMALL))
    complete, incomplete, lens, present, labels = batch(lens)
    t_out, s_out = net(complete, incomplete, lens, present)
    for out in (t_out, s_out):
        assert torch.isfinite(out.logits).all() and all(torch.isfinite(h).all() for h in out.hidden)
    losses = net.loss(t_out, s_out, labels, lens, present)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    if int(lens.max()) == 0:
        assert all(v.item() == 0 for v in losses.values())


def test_model_input_validation():
    m = ITEACHModel(DIMS, C, num_layers=1, mixer="nas", **SMALL)
    t, a, v = (torch.randn(2, 5, d) for d in DIMS)
    lens = torch.tensor([5, 3])
    with pytest.raises(ValueError, match="audio.*feature dim 9"):
        m(t, torch.randn(2, 5, 9), v, lens)
    with pytest.raises(ValueError, match="visual"):
        m(t, a, torch.randn(2, 6, DIMS[2]), lens)
    with pytest.raises(ValueError, match="text"):
        m(torch.randn(2, 5), a, v, lens)
    with pytest.raises(TypeError, match="text"):
        m(t.long(), a, v, lens)
    with pytest.raises(ValueError, match="lengths"):
        m(t, a, v, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="lengths"):
        m(t, a, v, torch.tensor([5]))
    with pytest.raises(TypeError, match="lengths"):
        m(t, a, v, torch.tensor([5.0, 3.0]))
    with pytest.raises(ValueError, match="present"):
        m(t, a, v, lens, torch.ones(2, 5, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="present"):
        m(t, a, v, lens, torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="max_len"):
        m(*(torch.randn(1, 30, d) for d in DIMS), torch.tensor([3]))
    with pytest.raises(ValueError, match="input_dims"):
        ITEACHModel((12, 8), C, 1)
    with pytest.raises(ValueError, match="mixer"):
        ITEACHModel(DIMS, C, 1, mixer="mlp")


# ----------------------------------------------------------------------------- frameworks

def _layers(model):
    return len(model.layers), model.mixer


def test_frameworks():
    its = ITEACHNet(DIMS, C, **SMALL)
    assert _layers(its.teacher) == (3, "tf") and _layers(its.student) == (4, "nas")
    ts = ITEACHNet(DIMS, C, framework="ts", **SMALL)
    assert _layers(ts.teacher) == (4, "nas") and _layers(ts.student) == (3, "tf")
    pre = ITEACHNet(DIMS, C, framework="pre", **SMALL)
    assert pre.teacher is pre.student and _layers(pre.student) == (3, "tf")  # the paper's "PRE | TF"
    pre_nas = ITEACHNet(DIMS, C, framework="pre", student_mixer="nas", **SMALL)
    assert pre_nas.teacher is pre_nas.student and _layers(pre_nas.student) == (4, "nas")
    assert not any(k.startswith("teacher.") for k in pre.state_dict())  # stored once
    ablation = ITEACHNet(DIMS, C, student_mixer="tf", **SMALL)
    assert _layers(ablation.student) == (4, "tf") and _layers(ablation.teacher) == (3, "tf")
    custom = ITEACHNet(DIMS, C, teacher_layers=2, student_layers=5, teacher_mixer="nas", **SMALL)
    assert _layers(custom.teacher) == (2, "nas") and _layers(custom.student) == (5, "nas")
    with pytest.raises(ValueError, match="framework"):
        ITEACHNet(DIMS, C, framework="kd")


def test_forward_routes_complete_to_teacher_incomplete_to_student():
    net = ITEACHNet(DIMS, C, **SMALL)
    complete, incomplete, lens, present, _ = batch()
    t_out, s_out = net(complete, incomplete, lens, present)
    torch.testing.assert_close(t_out.logits, net.teacher(*complete, lens).logits)
    torch.testing.assert_close(s_out.logits, net.student(*incomplete, lens).logits)
    torch.testing.assert_close(net.predict(incomplete, lens, present), s_out.logits)
    assert not net.predict(incomplete, lens).requires_grad


# ----------------------------------------------------------------------------- loss

def _hand_loss(t_out, s_out, labels, lens, present, regression=False):
    """eq. 12-15 written out per utterance, with Python loops."""
    emo_t = emo_s = 0.0
    n_valid, lost_rows = 0, []
    for b in range(labels.shape[0]):
        for i in range(int(lens[b])):
            n_valid += 1
            for out, acc in ((t_out, "t"), (s_out, "s")):
                if regression:
                    e = (out.logits[b, i] - labels[b, i]) ** 2
                else:
                    e = -torch.log_softmax(out.logits[b, i], -1)[labels[b, i]]
                if acc == "t":
                    emo_t = emo_t + e
                else:
                    emo_s = emo_s + e
            if not bool(present[b, i].all()):
                lost_rows.append((b, i))
    emo_t, emo_s = emo_t / max(n_valid, 1), emo_s / max(n_valid, 1)
    rec = 0.0
    D = s_out.hidden[0].shape[-1]
    for w, hs, ht in zip((0.5, 0.1, 0.05), s_out.hidden, t_out.hidden):
        se = sum(((hs[b, i] - ht[b, i].detach()) ** 2).sum() for b, i in lost_rows)
        rec = rec + w * se / max(len(lost_rows) * D, 1)
    return emo_t, emo_s, rec


@pytest.mark.parametrize("regression", [False, True])
def test_loss_matches_hand_computation(regression):
    net = _perturb(ITEACHNet(DIMS, 1 if regression else C, **SMALL))
    complete, incomplete, lens, present, labels = batch((6, 3, 1), L_=6)
    if regression:
        labels = torch.empty(3, 6).uniform_(-3, 3)
        labels[~valid(lens, 6)] = float("nan")  # garbage in the padding
    t_out, s_out = net(complete, incomplete, lens, present)
    got = net.loss(t_out, s_out, labels, lens, present)
    emo_t, emo_s, rec = _hand_loss(t_out, s_out, labels, lens, present, regression)
    torch.testing.assert_close(got["emo_teacher"], emo_t)
    torch.testing.assert_close(got["emo_student"], emo_s)
    torch.testing.assert_close(got["emo"], emo_t + emo_s)
    torch.testing.assert_close(got["rec"], rec)
    torch.testing.assert_close(got["total"], emo_t + emo_s + rec)
    # rec_weight (not the paper's) scales L_rec in the total only; 0 leaves the emotion losses
    scaled = net.loss(t_out, s_out, labels, lens, present, rec_weight=0.25)
    torch.testing.assert_close(scaled["rec"], rec)
    torch.testing.assert_close(scaled["total"], emo_t + emo_s + 0.25 * rec)
    torch.testing.assert_close(net.loss(t_out, s_out, labels, lens, present, rec_weight=0.0)["total"], emo_t + emo_s)
    assert REC_WEIGHTS == (0.5, 0.1, 0.05)
    if not regression:  # cross-check eq. 12 against torch's own mean CE over valid utterances
        ok = valid(lens, 6)
        torch.testing.assert_close(got["emo_student"], F.cross_entropy(s_out.logits[ok], labels[ok]))


def test_rec_loss_sends_no_gradient_to_teacher():
    net = _perturb(ITEACHNet(DIMS, C, **SMALL))
    complete, incomplete, lens, present, labels = batch()
    t_out, s_out = net(complete, incomplete, lens, present)
    rec = net.loss(t_out, s_out, labels, lens, present)["rec"]
    assert rec.item() > 0
    rec.backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in net.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.student.parameters())


def test_rec_loss_only_on_utterances_that_lost_a_modality():
    net = ITEACHNet(DIMS, C, **SMALL)
    complete, incomplete, lens, present, labels = batch()
    t_out, s_out = net(complete, incomplete, lens, present)
    # all present: no distillation target, rec exactly 0 (not NaN)
    full = torch.ones_like(present)
    assert net.loss(t_out, s_out, labels, lens, full)["rec"].item() == 0
    # changing the student's features on a complete or invalid utterance changes nothing
    lost = valid(lens) & ~present.all(-1)
    hidden = [h.clone() for h in s_out.hidden]
    for h in hidden:
        h[~lost] += 10
    a = net.loss(t_out, s_out, labels, lens, present)["rec"]
    b = net.loss(t_out, s_out._replace(hidden=hidden), labels, lens, present)["rec"]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="present"):
        net.loss(t_out, s_out, labels, lens, None)
    with pytest.raises(ValueError, match="labels"):
        net.loss(t_out, s_out, labels[:, :3], lens, present)


# ----------------------------------------------------------------------------- optimisation

def test_parameter_groups_split_router():
    net = ITEACHNet(DIMS, C, **SMALL)
    groups = net.parameter_groups(lr=1e-3, router_lr=1e-2, weight_decay=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["weights"]["lr"] == 1e-3 and by_name["router"]["lr"] == 1e-2
    router_ids = {id(p) for n, p in net.named_parameters() if "router" in n}
    assert {id(p) for p in by_name["router"]["params"]} == router_ids
    # 4 student layers x 3 modalities x (weight, bias); the TF teacher has no router
    assert len(router_ids) == 4 * 3 * 2
    assert all(isinstance(m.router, torch.nn.Linear) for m in net.modules() if isinstance(m, RoutedTokenMixer))
    n_all = sum(1 for _ in net.parameters())
    assert sum(len(g["params"]) for g in groups) == n_all
    torch.optim.AdamW(groups)
    pre = ITEACHNet(DIMS, C, framework="pre", **SMALL)  # shared model: every parameter once
    assert sum(len(g["params"]) for g in pre.parameter_groups()) == sum(1 for _ in pre.parameters())
    tf_only = ITEACHNet(DIMS, C, student_mixer="tf", **SMALL)
    assert [g["name"] for g in tf_only.parameter_groups()] == ["weights"]


@pytest.mark.parametrize("framework", ["its", "pre"])
def test_training_step_and_loss_decreases(framework):
    torch.manual_seed(0)
    net = ITEACHNet(DIMS, C, framework=framework, **SMALL)
    opt = torch.optim.AdamW(net.parameter_groups(lr=3e-3, router_lr=3e-2))
    complete, incomplete, lens, present, labels = batch((9, 7, 5, 2))
    history = []
    for _ in range(12):
        t_out, s_out = net(complete, incomplete, lens, present)
        losses = net.loss(t_out, s_out, labels, lens, present)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append(losses["total"].item())
    assert history[-1] < 0.7 * history[0], history


# ----------------------------------------------------------------------------- sizes

PAPER_TABLE3 = {"teacher": 2.19e6, "student": 3.88e6}


def test_parameter_counts_at_paper_settings(record_property):
    """Teacher and student sizes at the paper's settings (D=128, 8 heads, FFN 4.0, text 1024,
    audio 512, visual 1024, 4 classes, max_len 110), reported next to Table 3. Not tuned to
    match; asserted only to lie in a plausible range."""
    net = ITEACHNet((1024, 512, 1024), 4, dim=128, heads=8, ffn_ratio=4.0, max_len=110)
    counts = {}
    for role in ("teacher", "student"):
        m = getattr(net, role)
        n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
        counts[role] = n(m)
        counts[role + "_layers_only"] = n(m.layers)
        counts[role + "_proj_and_ecce"] = n(m.proj) + n(m.ecce)
    report = ", ".join(f"{k}={v / 1e6:.3f}M" for k, v in counts.items())
    report += f" (paper Table 3: teacher {PAPER_TABLE3['teacher'] / 1e6}M, student {PAPER_TABLE3['student'] / 1e6}M)"
    print("\n" + report)
    for k, v in counts.items():
        record_property(k, v)
    assert 1.5e6 < counts["teacher"] < 4e6, report
    assert 2.5e6 < counts["student"] < 6e6, report
    assert counts["student"] > counts["teacher"], report  # inverted: the student is the bigger model


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_other_dtypes(dtype):
    net = ITEACHNet(DIMS, C, **SMALL).to(dtype)
    complete, incomplete, lens, present, labels = batch()
    cast = lambda xs: tuple(x.to(dtype) for x in xs)  # noqa: E731
    t_out, s_out = net(cast(complete), cast(incomplete), lens, present)
    assert s_out.logits.dtype == dtype and t_out.hidden[0].dtype == dtype
    losses = net.loss(t_out, s_out, labels, lens, present)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and all(p.grad is None or torch.isfinite(p.grad).all()
                                                   for p in net.parameters())


# ----------------------------------------------------------------------------- labels in the loss

def test_loss_float_class_labels_are_a_type_error():
    """A float label such as 2.7 is not truncated to 2: a classifier's labels must be integer ids."""
    net = ITEACHNet(DIMS, C, **SMALL)
    complete, incomplete, lens, present, labels = batch()
    t_out, s_out = net(complete, incomplete, lens, present)
    with pytest.raises(TypeError, match="labels.*integer"):
        net.loss(t_out, s_out, labels.float() + 0.7, lens, present)
    with pytest.raises(TypeError, match="labels"):
        net.loss(t_out, s_out, labels.bool(), lens, present)
    reg = ITEACHNet(DIMS, 1, **SMALL)  # a regressor's labels are scores: floats are right
    t_out, s_out = reg(complete, incomplete, lens, present)
    assert torch.isfinite(reg.loss(t_out, s_out, torch.randn(B, L), lens, present)["total"])


def test_loss_ignore_index_left_out_of_sum_and_count():
    """IGNORE_INDEX (-100) at a valid utterance: out of L_emo's sum and its count, as
    F.cross_entropy(ignore_index=-100) does; L_rec still distils that utterance."""
    from iteach_fast.nn.model import IGNORE_INDEX

    net = _perturb(ITEACHNet(DIMS, C, **SMALL))
    complete, incomplete, lens, present, labels = batch((9, 7, 5, 2))
    t_out, s_out = net(complete, incomplete, lens, present)
    ok = valid(lens)
    labels[0, :4] = IGNORE_INDEX
    labels[3, 1] = IGNORE_INDEX
    got = net.loss(t_out, s_out, labels, lens, present)
    torch.testing.assert_close(got["emo_student"], F.cross_entropy(s_out.logits[ok], labels[ok]))  # ignore_index=-100
    torch.testing.assert_close(got["emo_teacher"], F.cross_entropy(t_out.logits[ok], labels[ok]))
    counts = net.loss_counts(labels, lens, present)
    assert counts["valid"].item() == int(ok.sum()) - 5
    assert counts["lost"].item() == int((ok & ~present.all(-1)).sum())
    # every valid label ignored: L_emo is 0 (not NaN), L_rec unchanged
    labels[ok] = IGNORE_INDEX
    none = net.loss(t_out, s_out, labels, lens, present)
    assert none["emo"].item() == 0 and torch.equal(none["rec"], got["rec"])


def test_loss_out_of_range_label_fails_without_reading_the_device():
    """A class id outside [0, C) at a valid utterance fails with a message naming labels (a
    device-side assert: raised at once on the CPU, at the next synchronisation on CUDA); the
    padding's labels are never read."""
    net = ITEACHNet(DIMS, C, **SMALL)
    complete, incomplete, lens, present, labels = batch()
    t_out, s_out = net(complete, incomplete, lens, present)
    labels[~valid(lens)] = 1000  # padding: anything goes
    net.loss(t_out, s_out, labels, lens, present)
    for bad in (C, -1):
        labels[0, 0] = bad
        with pytest.raises(RuntimeError, match=r"labels must be class ids in \[0, 4\)"):
            net.loss(t_out, s_out, labels, lens, present)


@pytest.mark.parametrize("regression", [False, True])
def test_loss_with_global_counts_sums_over_shards(regression):
    """Data parallelism: with the global batch's counts, the per-shard losses add up to the
    single-process loss (every term averaged over the global batch, not a mean of means)."""
    net = _perturb(ITEACHNet(DIMS, 1 if regression else C, **SMALL))
    complete, incomplete, lens, present, labels = batch((9, 7, 5, 2))
    if regression:
        labels = torch.randn(B, L)
    full = net.loss(*net(complete, incomplete, lens, present), labels, lens, present)
    shards = [slice(0, 1), slice(1, 4)]  # unequal numbers of utterances
    counts = [net.loss_counts(labels[s], lens[s], present[s]) for s in shards]
    total = {k: sum(c[k] for c in counts) for k in ("valid", "lost")}  # the all-reduce
    parts = []
    for s in shards:
        outs = net(tuple(x[s] for x in complete), tuple(x[s] for x in incomplete), lens[s], present[s])
        parts.append(net.loss(*outs, labels[s], lens[s], present[s], counts=total))
    for k in full:
        torch.testing.assert_close(sum(p[k] for p in parts), full[k])
    with pytest.raises(ValueError, match="counts"):
        net.loss(*net(complete, incomplete, lens, present), labels, lens, present, counts={"valid": 3})


# ----------------------------------------------------------------------------- the step: sync-free, compilable

def _step(net, opt, complete, incomplete, lens, present, labels):
    t_out, s_out = net(complete, incomplete, lens, present)
    loss = net.loss(t_out, s_out, labels, lens, present)["total"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@pytest.mark.parametrize("framework,mixer,causal,options", [("its", None, False, {}), ("pre", "nas", True, {}),
                                                            ("its", None, False, {"cross_ecce": True,
                                                                                  "early_fusion": "all"}),
                                                            ("its", None, False, {"recurrent": True}),
                                                            ("pre", "nas", True, {"recurrent": True}),
                                                            ("its", None, False, {"presence": True})])
def test_training_step_has_no_host_synchronisation(framework, mixer, causal, options):
    """Forward, loss, backward and the AdamW step dispatch no op that reads a value back to the
    host (.item(), nonzero, boolean-mask indexing, ...): the step can be captured as a CUDA
    graph. The lengths arrive as the data loader hands them (a CPU tensor), and AdamW runs
    fused (the default implementation reads its step count on the host)."""
    from bench.counters import count_syncs

    net = ITEACHNet(DIMS, C, framework=framework, student_mixer=mixer, causal=causal, **options, **SMALL)
    opt = torch.optim.AdamW(net.parameter_groups(), fused=True)
    args = batch()
    _step(net, opt, *args)  # AdamW's state exists from here on
    assert count_syncs(lambda: _step(net, opt, *args)) == {}
    # --ema: the weight average's update, after every step, is sync-free too
    from iteach_fast.training.averaging import WeightAverage

    assert count_syncs(WeightAverage(net, 0.99).update) == {}
    assert count_syncs(lambda: net.predict(args[1], args[2], args[3])) == {}
    logits = net.predict(args[1], args[2], args[3])
    assert count_syncs(lambda: logits[valid(args[2])])  # the counter sees what the old loss did


def test_model_traces_as_one_graph():
    """torch.compile(fullgraph=True) traces forward + loss (and AOTAutograd the backward)
    without a graph break; the compiled step matches the eager one."""
    net = _perturb(ITEACHNet(DIMS, C, teacher_layers=1, student_layers=1, **SMALL))
    complete, incomplete, lens, present, labels = batch()

    def fwd_loss(complete, incomplete, lens, present, labels):
        t_out, s_out = net(complete, incomplete, lens, present)
        return net.loss(t_out, s_out, labels, lens, present)["total"]

    eager = fwd_loss(complete, incomplete, lens, present, labels)
    g_eager = torch.autograd.grad(eager, list(net.parameters()), allow_unused=True)
    compiled = torch.compile(fwd_loss, fullgraph=True, backend="aot_eager")(complete, incomplete, lens, present,
                                                                             labels)
    g = torch.autograd.grad(compiled, list(net.parameters()), allow_unused=True)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(g, g_eager):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- causal model

@pytest.mark.parametrize("framework,student_mixer", [("its", None), ("ts", None)])  # TF and NAS, both roles
def test_causal_net_ignores_the_future(framework, student_mixer):
    """causal=True: garbage at utterances > t leaves every output <= t (logits and hidden
    features of teacher and student) bit-identical; the bidirectional net's would change."""
    torch.manual_seed(0)
    net = _perturb(ITEACHNet(DIMS, C, framework=framework, student_mixer=student_mixer, causal=True, **SMALL))
    assert net.causal and net.teacher.causal and net.config.causal
    complete, incomplete, lens, present, _ = batch((9, 9, 6, 3))
    ref_t, ref_s = net(complete, incomplete, lens, present)
    def spoil(xs, t):
        return tuple(torch.cat([x[:, :t + 1], 1e3 * torch.randn_like(x[:, t + 1:])], 1) for x in xs)

    for t in (0, 3, 5):
        out_t, out_s = net(spoil(complete, t), spoil(incomplete, t), lens, present)
        for ref, out in ((ref_t, out_t), (ref_s, out_s)):
            assert torch.equal(out.logits[:, :t + 1], ref.logits[:, :t + 1])
            assert all(torch.equal(h[:, :t + 1], g[:, :t + 1]) for h, g in zip(out.hidden, ref.hidden))
    torch.manual_seed(0)
    bidirectional = _perturb(ITEACHNet(DIMS, C, framework=framework, student_mixer=student_mixer, **SMALL))
    spoilt = tuple(torch.cat([x[:, :4], 1e3 * torch.randn_like(x[:, 4:])], 1) for x in complete)
    assert not torch.equal(bidirectional.teacher(*spoilt, lens).logits[:, :4],
                           bidirectional.teacher(*complete, lens).logits[:, :4])


def test_causal_from_config_and_state_dict():
    """ModelConfig.causal builds the causal net; its weights are the bidirectional net's (a
    checkpoint of either loads into the other: causality lives in the forward, not the weights)."""
    cfg = ModelConfig(causal=True, **SMALL)
    net = ITEACHNet.from_config(cfg, DIMS, C)
    assert net.causal and all(m.causal for m in net.modules() if hasattr(m, "causal") and m is not net)
    plain = ITEACHNet(DIMS, C, **SMALL)
    plain.load_state_dict(net.state_dict())
    assert set(plain.state_dict()) == set(net.state_dict())


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_step_never_waits_for_the_device(causal):
    """On a GPU, with the lengths already on the device: forward, loss, backward and a fused
    AdamW step run under torch.cuda.set_sync_debug_mode("error") (any synchronisation raises)."""
    net = ITEACHNet(DIMS, C, causal=causal, **SMALL).cuda()
    opt = torch.optim.AdamW(net.parameter_groups(), fused=True)
    complete, incomplete, lens, present, labels = batch()
    args = (tuple(x.cuda() for x in complete), tuple(x.cuda() for x in incomplete), lens.cuda(), present.cuda(),
            labels.cuda())
    _step(net, opt, *args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(net, opt, *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("framework", ["its", "pre", "ts"])
def test_a_batch_without_any_utterance(framework, causal):
    """L = 0 (every conversation empty): empty outputs, a zero loss, a backward that runs
    (the local conv used to reject the empty sequence)."""
    net = ITEACHNet.from_config(ModelConfig(framework=framework, dim=16, heads=2, max_len=8, causal=causal),
                                (6, 5, 4), 4)
    x = tuple(torch.randn(2, 0, d) for d in (6, 5, 4))
    lengths, present = torch.zeros(2, dtype=torch.long), torch.ones(2, 0, 3, dtype=torch.bool)
    t_out, s_out = net(x, x, lengths, present)
    assert s_out.logits.shape == (2, 0, 4) and t_out.logits.shape == (2, 0, 4)
    losses = net.loss(t_out, s_out, torch.zeros(2, 0, dtype=torch.long), lengths, present)
    assert all(torch.equal(v.detach(), torch.zeros(())) for v in losses.values())
    losses["total"].backward()


# ----------------------------------------------------------------------------- early fusion (an option)

@pytest.mark.parametrize("mixer", ["tf", "nas"])
@pytest.mark.parametrize("mode,fused", [("text", 1), ("all", 3)])
def test_early_fusion_is_the_paper_model_fed_the_three_modalities_as_its_inputs(mixer, mode, fused):
    """early_fusion: the text stream's projection ("text") or every stream's ("all") reads
    (text | audio | visual). The same weights in the paper's model, given that concatenation
    as those streams' inputs, give the same outputs; the other streams keep their own."""
    m = _perturb(ITEACHModel(DIMS, C, num_layers=2, mixer=mixer, early_fusion=mode, **SMALL))
    dims = (sum(DIMS),) * fused + DIMS[fused:]
    assert [p.in_features for p in m.proj] == list(dims)
    paper = ITEACHModel(dims, C, num_layers=2, mixer=mixer, **SMALL)
    paper.load_state_dict(m.state_dict())
    _, incomplete, lens, present, _ = batch()
    out = m(*incomplete, lens, present)
    cat = torch.cat(incomplete, -1)
    ref = paper(*((cat,) * fused + tuple(incomplete[fused:])), lens, present)
    torch.testing.assert_close(out.logits, ref.logits)
    for h, r in zip(out.hidden, ref.hidden):
        torch.testing.assert_close(h, r)
    # the text stream sees the audio of its own utterance: changing it moves that utterance's logits
    audio = incomplete[1].clone()
    audio[0, 2] += 1.0
    moved = m(incomplete[0], audio, incomplete[2], lens, present).logits
    assert (moved[0, 2] - out.logits[0, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["text", "all"])
def test_early_fusion_round_trips_through_its_config(mode):
    net = ITEACHNet(DIMS, C, early_fusion=mode, **SMALL)
    again = ITEACHNet.from_config(net.config, DIMS, C)
    again.load_state_dict(net.state_dict())
    assert net.config.early_fusion == again.student.early_fusion == again.teacher.early_fusion == mode
    assert ModelConfig().early_fusion == "off"  # the paper's model by default


def test_early_fusion_as_a_bool_reads_as_the_text_stream_only():
    """The release before ``all`` had ``early_fusion: bool`` (the text stream only): its configs
    and checkpoints, and Python calls, load as what they hold; anything else is refused by name."""
    from iteach_fast.training.config import TrainConfig

    assert TrainConfig.from_dict({"model": {"early_fusion": True}}).model.early_fusion == "text"
    assert TrainConfig.from_dict({"early_fusion": False}).model.early_fusion == "off"
    assert ModelConfig(early_fusion=True).early_fusion == "text"
    assert ITEACHModel(DIMS, C, num_layers=1, early_fusion=True, **SMALL).proj[0].in_features == sum(DIMS)
    with pytest.raises(ValueError, match="early_fusion"):
        ITEACHModel(DIMS, C, num_layers=1, early_fusion="audio", **SMALL)
    with pytest.raises(ConfigError, match="early_fusion"):
        TrainConfig.from_dict({"early_fusion": "both"})


# ----------------------------------------------------------------------------- recurrence (an option)

def _gru_reference(rnn, x, lengths):
    """The residual GRU run one conversation at a time on its valid utterances only (no
    padding anywhere), the backward direction on the reversed conversation: what
    :class:`Recurrence` must compute on a padded batch."""
    out = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        xb = x[b:b + 1, :n]
        h = rnn.forward_gru(xb)[0]
        if rnn.backward_gru is not None:
            h = torch.cat([h, rnn.backward_gru(xb.flip(1))[0].flip(1)], -1)
        out[b, :n] = (xb + h)[0]
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_recurrence_equals_each_conversation_run_alone(causal):
    """Ragged lengths (one empty, one full) with garbage in the padding: the output and every
    gradient equal the per-conversation reference; padding stays 0 and never leaks in."""
    from iteach_fast.nn.modules import Recurrence

    g = torch.Generator().manual_seed(11)
    rnn = _perturb(Recurrence(8, causal=causal))
    lengths = torch.tensor([7, 0, 3, 5])
    x = torch.randn(4, 7, 8, generator=g, dtype=torch.float64)
    rnn = rnn.double()
    x[2, 3:] = 1e3  # padding: must not reach a valid utterance
    x.requires_grad_(True)
    out = rnn(x, lengths)
    ref = _gru_reference(rnn, x, lengths)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.equal(out[2, 3:], torch.zeros_like(out[2, 3:]))
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    params = [x] + list(rnn.parameters())
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, b)


def test_recurrence_causal_output_sees_only_the_past():
    from iteach_fast.nn.modules import Recurrence

    g = torch.Generator().manual_seed(12)
    rnn = Recurrence(6, causal=True)
    x = torch.randn(2, 9, 6, generator=g)
    out = rnn(x, torch.tensor([9, 9]))
    later = x.clone()
    later[:, 5:] += torch.randn(2, 4, 6, generator=g)
    moved = rnn(later, torch.tensor([9, 9]))
    torch.testing.assert_close(moved[:, :5], out[:, :5], rtol=0, atol=0)
    assert (moved[:, 5:] - out[:, 5:]).abs().max() > 1e-3
    bidirectional = Recurrence(6)
    assert (bidirectional(later, torch.tensor([9, 9]))[:, :5]
            - bidirectional(x, torch.tensor([9, 9]))[:, :5]).abs().max() > 1e-4  # the backward GRU sees ahead


def test_presence_flags_reach_the_projections():
    """``presence``: a modality marked absent is not the same input as one that is present and
    zero; no ``present`` (the teacher's complete data) means every modality present; the config
    round-trips and a checkpoint built without it is refused, naming the input width."""
    from iteach_fast.training.checkpoint import CheckpointError, check_weights
    from iteach_fast.training.config import TrainConfig

    torch.manual_seed(0)
    m = _perturb(ITEACHModel(DIMS, C, num_layers=1, mixer="tf", presence=True, **SMALL)).eval()
    xs = tuple(torch.randn(2, 7, d) for d in DIMS)
    xs[1][:, 3] = 0  # utterance 3's audio: zero, whether present or not
    present = torch.ones(2, 7, 3, dtype=torch.bool)
    lens = torch.tensor([7, 5])
    with torch.no_grad():
        everything = m(*xs, lens, present).logits
        torch.testing.assert_close(m(*xs, lens).logits, everything, rtol=0, atol=0)
        present[:, 3, 1] = False
        absent = m(*xs, lens, present).logits
    assert (absent[:, 3] - everything[:, 3]).abs().max() > 1e-4
    assert m.proj[0].in_features == DIMS[0] + 3
    net = ITEACHNet(DIMS, C, presence=True, **SMALL)
    ITEACHNet.from_config(net.config, DIMS, C).load_state_dict(net.state_dict())
    assert net.config.options() == ["presence flags"] and ModelConfig().presence is False
    assert TrainConfig.from_dict({"presence": "true"}).model.presence is True
    with pytest.raises(CheckpointError, match=f"input dim 0 .*config {DIMS[0]}, weights {DIMS[0] + 3}.*"
                                              "presence .*: config False, weights True"):
        check_weights(ITEACHNet(DIMS, C, **SMALL).state_dict(), net.state_dict(), "run/best.pt")


def test_recurrent_round_trips_through_its_config_and_checkpoint_check():
    from iteach_fast.training.checkpoint import CheckpointError, check_weights
    from iteach_fast.training.config import TrainConfig

    net = ITEACHNet(DIMS, C, recurrent=True, **SMALL)
    again = ITEACHNet.from_config(net.config, DIMS, C)
    again.load_state_dict(net.state_dict())
    assert again.student.recurrence is not None and net.config.options() == ["recurrent"]
    assert ModelConfig().recurrent is False and ITEACHNet(DIMS, C, **SMALL).student.recurrence is None
    assert TrainConfig.from_dict({"recurrent": "true"}).model.recurrent is True
    with pytest.raises(CheckpointError, match="recurrent: config False, weights True"):
        check_weights(ITEACHNet(DIMS, C, **SMALL).state_dict(), net.state_dict(), "run/best.pt")
    with pytest.raises(ValueError, match="even dim"):
        ITEACHModel(DIMS, C, num_layers=1, dim=9, heads=1, recurrent=True)

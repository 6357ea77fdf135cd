"""Issue 24, streaming: a StreamingSession refuses a NaN (or a value beyond float32) of a
present modality, naming it, and keeps nothing of that push, so the conversation goes on
unpoisoned; a model left in train() mode is still evaluated without dropout (and its modes
restored); an utterance with no modality present gets a NoModalityWarning. Each test failed
before the fix."""
import warnings

import pytest
import torch

from iteach_fast.nn.model import ITEACHNet
from iteach_fast.nn.streaming import NoModalityWarning

DIMS = (6, 4, 5)
SMALL = dict(dim=16, heads=4, dist=3, conv_kernel=3, max_len=12, teacher_layers=1, student_layers=2)
L = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _net(dropout=0.0):
    torch.manual_seed(0)
    net = ITEACHNet(DIMS, 4, causal=True, dropout=dropout, **SMALL)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _inputs():
    torch.manual_seed(1)
    return [torch.randn(L, d) for d in DIMS]


def _replay(session, xs, skip=None):
    return [session.push(*(x[t] for x in xs)) for t in range(L) if t != skip]


def test_a_nan_pushed_is_refused_naming_the_modality_and_the_conversation_goes_on():
    net, xs = _net(), _inputs()
    clean = _replay(net.stream(), xs)
    session = net.stream()
    out = [session.push(*(x[t] for x in xs)) for t in range(2)]
    bad = xs[1][2].clone()
    bad[1] = float("nan")
    with pytest.raises(ValueError, match=r"audio: 1 value\(s\) are NaN or infinite as torch.float32 "
                                         r"\(conversation\(s\) \[0\] of the batch, utterance 2\); refused, nothing "
                                         r"was kept"):
        session.push(xs[0][2], bad, xs[2][2])
    assert session.length == 2
    huge = xs[0][2].double()
    huge[0] = 1e300  # finite as float64, inf as the model's float32
    with pytest.raises(ValueError, match="text: 1 value.* as torch.float32"):
        session.push(huge, xs[1][2], xs[2][2])
    out += [session.push(*(x[t] for x in xs)) for t in range(2, L)]
    for a, b in zip(out, clean):  # nothing of the refused pushes reached the state
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a NaN of a modality marked absent never reaches the model: accepted
    session.reset()
    session.push(xs[0][0], bad, xs[2][0], torch.tensor([True, False, True]))


def test_a_session_on_a_model_in_train_mode_applies_no_dropout():
    net, xs = _net(dropout=0.5), _inputs()
    expected = _replay(net.stream(), xs)  # eval mode
    net.train()
    got = _replay(net.stream(), xs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(m.training for m in net.modules())  # the caller's modes are kept


def test_an_utterance_with_no_modality_present_is_said():
    net, xs = _net(), _inputs()
    session = net.stream()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about a normal utterance
        session.push(*(x[0] for x in xs), torch.tensor([True, False, True]))
    with pytest.warns(NoModalityWarning, match=r"utterance 1 of conversation\(s\) \[0\]: no modality present"):
        probs = session.push(*(x[1] for x in xs), torch.tensor([False, False, False]))
    assert torch.isfinite(probs).all() and session.length == 2  # predicted from the earlier utterance

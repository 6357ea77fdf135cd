"""Tests of utterance-by-utterance inference (iteach_fast.nn.streaming): a StreamingSession's
predictions equal the full causal forward's at every step, for the teacher and the student,
every mixer, with missing modalities; its errors; its state's size."""
import pytest
import torch
import torch.nn.functional as F

from iteach_fast.nn.model import ITEACHModel, ITEACHNet
from iteach_fast.nn.streaming import StreamingSession

DIMS = (12, 8, 10)
SMALL = dict(dim=16, heads=4, dist=7, conv_kernel=5)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def _conversations(B, L, missing=0.4):
    complete = tuple(torch.randn(B, L, d) for d in DIMS)
    present = torch.rand(B, L, 3) > missing
    present |= F.one_hot(torch.randint(0, 3, (B, L)), 3).bool() & ~present.any(-1, keepdim=True)
    incomplete = tuple(x * present[..., m:m + 1] for m, x in enumerate(complete))
    return complete, incomplete, present


def _replay(session, xs, present=None):
    """Every utterance pushed in turn; the logits of each push, stacked ``(B, L, C)``."""
    out = []
    for t in range(xs[0].shape[1]):
        session.push(*(x[:, t] for x in xs), None if present is None else present[:, t])
        out.append(session.last_logits)
    return torch.stack(out, 1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_stream_equals_full_causal_forward():
    """110 pushes: the TF teacher (complete data) and the NAS student (missing modalities, given
    as present and zeroed by the session) match the full causal forward at every step within 1e-5."""
    L = 110
    net = _perturb(ITEACHNet(DIMS, 4, causal=True, max_len=L, **SMALL))
    complete, incomplete, present = _conversations(2, L)
    lens = torch.tensor([L, L])
    with torch.no_grad():
        t_out, s_out = net(complete, incomplete, lens, present)
    student = _replay(net.stream(batch_size=2), complete, present)  # the session zeroes what is absent
    assert _rel(student, s_out.logits) <= 1e-5
    teacher = _replay(net.stream(batch_size=2, model="teacher"), complete)
    assert _rel(teacher, t_out.logits) <= 1e-5
    # the probabilities push returns
    session = net.stream(batch_size=2)
    probs = session.push(*(x[:, 0] for x in incomplete))
    torch.testing.assert_close(probs, torch.softmax(s_out.logits[:, 0], -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("option", [{"cross_ecce": True}, {"early_fusion": "text"}, {"early_fusion": "all"},
                                    {"recurrent": True},
                                    {"recurrent": True, "early_fusion": "all", "cross_ecce": True},
                                    {"presence": True}, {"presence": True, "early_fusion": "all", "recurrent": True}])
def test_stream_with_each_option(option):
    """The options, streamed too: cross_ecce (the text stream's band bias in the
    cross-attentions), early_fusion (the text stream's projection, or every stream's, reads
    all three modalities), recurrent (the residual GRU steps from its kept hidden state) and
    presence (the pushed presence flags reach the projections; None: all present, as for the teacher)."""
    L = 40
    net = _perturb(ITEACHNet(DIMS, 4, causal=True, max_len=L, **option, **SMALL))
    complete, incomplete, present = _conversations(2, L)
    with torch.no_grad():
        t_out, s_out = net(complete, incomplete, torch.tensor([L, L]), present)
    assert _rel(_replay(net.stream(batch_size=2), complete, present), s_out.logits) <= 1e-5
    assert _rel(_replay(net.stream(batch_size=2, model="teacher"), complete), t_out.logits) <= 1e-5


@pytest.mark.parametrize("ecce", ["local+global", "global", "off"])
@pytest.mark.parametrize("mixer", ["tf", "nas"])
def test_stream_every_mixer_and_ecce_mode(mixer, ecce):
    """Bands wider and narrower than the conversation (dist 7 vs 20 utterances: three chunks),
    regression and classification, a ratio-2 MLP token mixer."""
    L = 20
    for classes in (3, 1):
        m = _perturb(ITEACHModel(DIMS, classes, num_layers=2, mixer=mixer, ecce=ecce, causal=True, max_len=24,
                                 mlp_ratio=2.0, **SMALL))
        xs = tuple(torch.randn(3, L, d) for d in DIMS)
        with torch.no_grad():
            ref = m(*xs, torch.full((3,), L)).logits
        session = m.stream(batch_size=3)
        got = _replay(session, xs)
        assert _rel(got if classes > 1 else got[..., 0], ref) <= 1e-5
        if classes == 1:  # a regressor's push returns its scores
            session.reset()
            torch.testing.assert_close(session.push(*(x[:, 0] for x in xs)), ref[:, 0], atol=1e-6, rtol=1e-5)


def test_session_reset_length_and_errors():
    m = _perturb(ITEACHModel(DIMS, 4, num_layers=1, mixer="nas", causal=True, max_len=5, **SMALL))
    xs = tuple(torch.randn(1, 5, d) for d in DIMS)
    session = m.stream()
    first = _replay(session, xs)
    assert session.length == 5
    with pytest.raises(ValueError, match="max_len=5"):
        session.push(*(x[:, 0] for x in xs))
    session.reset()
    assert session.length == 0
    torch.testing.assert_close(_replay(session, xs), first, rtol=0, atol=0)
    session.reset()
    session.push(*(x[0, 0] for x in xs))  # (d,) for a batch of one
    with pytest.raises(ValueError, match=r"audio must be .*\(1, 8\)"):
        session.push(xs[0][:, 0], torch.randn(1, 9), xs[2][:, 0])
    with pytest.raises(ValueError, match="present"):
        session.push(*(x[:, 0] for x in xs), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal"):
        ITEACHModel(DIMS, 4, num_layers=1, **SMALL).stream()
    with pytest.raises(ValueError, match="causal"):
        ITEACHNet(DIMS, 4, **SMALL).stream()
    with pytest.raises(ValueError, match="batch_size"):
        StreamingSession(m, 0)
    with pytest.raises(ValueError, match="model"):
        ITEACHNet(DIMS, 4, causal=True, **SMALL).stream(model="both")


def test_session_state_is_linear_in_length():
    """The session's memory is O(max_len * D) (caches), not O(max_len^2)."""
    def state_numel(max_len):
        m = ITEACHModel(DIMS, 4, num_layers=2, mixer="tf", causal=True, max_len=max_len, **SMALL)
        s = m.stream()
        tensors = [t for obj in [*s._modalities, *[e for layer in s._encoders for e in layer],
                                 *[k for layer in s._cross for k in layer]]
                   for t in vars(obj).values() if isinstance(t, torch.Tensor)]
        tensors += [t for e in (e for layer in s._encoders for e in layer) for t in vars(e.kv).values()
                    if isinstance(t, torch.Tensor)]
        return sum(t.numel() for t in tensors)

    assert state_numel(200) == 2 * state_numel(100)


@pytest.mark.gpu
def test_stream_on_cuda_equals_the_triton_forward():
    """On a GPU the full forward runs the Triton attention and the cpp mixture (auto); the
    session's plain-PyTorch rows match it."""
    L = 64
    net = _perturb(ITEACHNet(DIMS, 4, causal=True, max_len=L, **SMALL)).cuda()
    complete, incomplete, present = (t.cuda() if isinstance(t, torch.Tensor) else tuple(x.cuda() for x in t)
                                     for t in _conversations(2, L))
    with torch.no_grad():
        _, s_out = net(complete, incomplete, torch.tensor([L, L], device="cuda"), present)
    got = _replay(net.stream(batch_size=2), complete, present)
    assert _rel(got, s_out.logits) <= 1e-4  # Triton's float32 dots (3xTF32) against float32 matmuls

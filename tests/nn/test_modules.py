"""Tests of the drop-in modules (iteach_fast.modules): shapes, backends, padding invariance,
length 0 / 1, ECCE's bias and modes, the token mixers against their definitions."""
import math

import pytest
import torch
import torch.nn.functional as F

from iteach_fast import backends, ops
from iteach_fast.modules import (
    ECCE,
    AvgPoolTokenMixer,
    CrossAttention,
    ECCEAttention,
    EncoderLayer,
    ITEACHEncoder,
    MaxPoolTokenMixer,
    MLPTokenMixer,
    RoutedTokenMixer,
    set_backend,
)

B, L, D, H = 3, 11, 16, 4
MAX_LEN, DIST = 16, 5
LENGTHS = [11, 6, 1]


def lengths(values=LENGTHS):
    return torch.tensor(values)


def valid(lens, L_):
    return (torch.arange(L_) < lens[:, None])[..., None]


# Every module under one calling convention: (module, fn(module, x, zp, lengths) -> output (B, L, D or H))
def _encoder_layer_t(m, x, zp, lens):
    return m(x, x.flip(-1), x * 0.5, (zp, zp.flip(-1), -zp), lens)[0]


MODULES = {
    "ecce": (lambda: ECCE(D, H, kernel_size=3, dist=DIST), lambda m, x, zp, lens: m(x, lens)),
    "ecce_global": (lambda: ECCE(D, H, dist=DIST, mode="global"), lambda m, x, zp, lens: m(x, lens)),
    "attention": (lambda: ECCEAttention(D, H, DIST), lambda m, x, zp, lens: m(x, zp, lens)),
    "mlp": (lambda: MLPTokenMixer(MAX_LEN, ratio=2.0), lambda m, x, zp, lens: m(x, None, lens)),
    "avgpool": (lambda: AvgPoolTokenMixer(3), lambda m, x, zp, lens: m(x, None, lens)),
    "maxpool": (lambda: MaxPoolTokenMixer(5), lambda m, x, zp, lens: m(x, None, lens)),
    "routed": (lambda: RoutedTokenMixer(D, H, MAX_LEN, DIST, 3), lambda m, x, zp, lens: m(x, zp, lens)),
    "encoder_tf": (lambda: ITEACHEncoder(D, H, "tf", dist=DIST), lambda m, x, zp, lens: m(x, zp, lens)),
    "encoder_nas": (lambda: ITEACHEncoder(D, H, "nas", max_len=MAX_LEN, dist=DIST),
                    lambda m, x, zp, lens: m(x, zp, lens)),
    "cross_attention": (lambda: CrossAttention(D, H), lambda m, x, zp, lens: m(x, x.flip(-1) * 2, lens)),
    "encoder_layer": (lambda: EncoderLayer(D, H, "nas", max_len=MAX_LEN, dist=DIST), _encoder_layer_t),
}


def _perturb_params(module):
    """Random, non-zero biases everywhere: a bias that leaks into the padding must show up."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return module


@pytest.mark.parametrize("name", MODULES)
def test_shapes_and_padding_zero(name):
    make, call = MODULES[name]
    m = _perturb_params(make())
    x, zp, lens = torch.randn(B, L, D), torch.randn(B, L, H), lengths()
    y = call(m, x, zp, lens)
    width = H if name.startswith("ecce") else D
    assert y.shape == (B, L, width)
    assert torch.isfinite(y).all()
    assert (y[~valid(lens, L).expand_as(y)] == 0).all(), "outputs at invalid positions must be exactly 0"


@pytest.mark.parametrize("name", MODULES)
def test_padding_invariance(name):
    """Garbage beyond lengths — in place, and appended (a longer L) — changes no valid
    output, and every invalid output stays exactly 0."""
    make, call = MODULES[name]
    m = _perturb_params(make())
    lens = lengths()
    x, zp = torch.randn(B, L, D), torch.randn(B, L, H)
    ref = call(m, x, zp, lens)
    extra = 3
    x2 = torch.cat([x, torch.zeros(B, extra, D)], 1)
    zp2 = torch.cat([zp, torch.zeros(B, extra, H)], 1)
    pad = ~valid(lens, L + extra)
    x2 = torch.where(pad, 50 * torch.randn_like(x2), x2)
    zp2 = torch.where(pad, 50 * torch.randn_like(zp2), zp2)
    out = call(m, x2, zp2, lens)
    v = valid(lens, L).expand_as(ref)
    torch.testing.assert_close(out[:, :L][v], ref[v], atol=1e-5, rtol=1e-5)
    assert (out[~valid(lens, L + extra).expand_as(out)] == 0).all()


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("lens", [[0, 0, 0], [1, 0, 1], [0, 1, 11]])
def test_length_zero_and_one_no_nan(name, lens):
    make, call = MODULES[name]
    m = _perturb_params(make())
    lens = lengths(lens)
    x = torch.randn(B, L, D, requires_grad=True)
    zp = torch.randn(B, L, H, requires_grad=True)
    y = call(m, x, zp, lens)
    assert torch.isfinite(y).all()
    assert (y[~valid(lens, L).expand_as(y)] == 0).all()
    (y * torch.randn_like(y)).sum().backward()
    grads = [x.grad, zp.grad] + [p.grad for p in m.parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert (x.grad[~valid(lens, L).expand_as(x)] == 0).all(), "padding must receive no gradient"


def _backends_for(ops_used):
    """Every backend that runs here for all ``ops_used``, plus "auto"."""
    names = ["auto", "reference"]
    for b in ("triton", "cpp"):
        if all(b in backends.REGISTRY[op] and backends.REGISTRY[op][b].unavailable_reason(torch.device("cpu")) is None
               for op in ops_used):
            names.append(b)
    return names


@pytest.mark.parametrize("backend", _backends_for(["ecce_attention"]) + ["routed:" + b for b in
                                                                        _backends_for(["routed_mixture"])])
def test_backends_agree(backend):
    """A module on any available backend (and "auto") matches the reference, forward and backward."""
    if backend.startswith("routed:"):
        backend = backend.split(":", 1)[1]
        make = lambda: RoutedTokenMixer(D, H, MAX_LEN, DIST, 3)  # noqa: E731
    else:
        make = lambda: ITEACHEncoder(D, H, "tf", dist=DIST)  # noqa: E731
    m = _perturb_params(make())
    x, zp, lens = torch.randn(B, L, D, requires_grad=True), torch.randn(B, L, H), lengths()
    outs, grads = [], []
    for b in ("reference", backend):
        if isinstance(m, RoutedTokenMixer):
            m.backend = b  # the mixture only: its attention has no cpp backend
        else:
            set_backend(m, b)
        y = m(x, zp, lens)
        g, = torch.autograd.grad((y * torch.linspace(-1, 1, D)).sum(), x)
        outs.append(y)
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-3)


def test_set_backend_reaches_every_fused_call():
    layer = EncoderLayer(D, H, "nas", max_len=MAX_LEN)
    set_backend(layer, "reference")
    holders = [m for m in layer.modules() if hasattr(m, "backend")]
    assert holders and all(m.backend == "reference" for m in holders)
    set_backend(layer, "no-such-backend")
    with pytest.raises(ValueError, match="backend"):
        layer(torch.randn(1, 4, D), torch.randn(1, 4, D), torch.randn(1, 4, D),
              (torch.randn(1, 4, H),) * 3, torch.tensor([4]))


# ----------------------------------------------------------------------------- ECCE

def test_ecce_matches_definition_and_bias():
    """zp = mask(Conv1d(mask(x))) @ W_fc (eq. 5, DESIGN), and ECCE.bias = ops.ecce_bias(zp)."""
    m = _perturb_params(ECCE(D, H, kernel_size=7, dist=DIST))
    x, lens = torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    z = torch.where(ok, m.conv(torch.where(ok, x, 0).transpose(1, 2)).transpose(1, 2), 0)
    zp = m(x, lens)
    torch.testing.assert_close(zp, torch.where(ok, z @ m.fc.weight.T, 0))
    E = m.bias(x, lens)
    assert E.shape == (B, H, L, L)
    torch.testing.assert_close(E, ops.ecce_bias(zp, lens, DIST, backend="reference"))
    # spot-check one band entry against Algorithm 1 (inclusive window mean, then FC)
    i, j = 2, 5
    torch.testing.assert_close(E[0, :, i, j], z[0, i:j + 1].mean(0) @ m.fc.weight.T)
    assert (E[0, :, 0, DIST:] == 0).all(), "outside the band |i-j| < dist, E = 0"


def test_ecce_fc_has_no_bias():
    assert ECCE(D, H).fc.bias is None  # DESIGN §2: Algorithm 1's FC bias cannot change the softmax


def test_ecce_modes():
    x, lens = torch.randn(B, L, D), lengths()
    off = ECCE(D, H, mode="off")
    assert list(off.parameters()) == []
    assert (off(x, lens) == 0).all() and (off.bias(x, lens) == 0).all()
    glob = ECCE(D, H, mode="global")
    assert glob.conv is None
    ok = valid(lens, L)
    torch.testing.assert_close(glob(x, lens), torch.where(ok, x @ glob.fc.weight.T, 0))
    with pytest.raises(ValueError, match="mode"):
        ECCE(D, H, mode="local")
    with pytest.raises(ValueError, match="kernel_size"):
        ECCE(D, H, kernel_size=4)


def test_attention_with_ecce_off_is_plain_attention():
    """With zp = 0 the MixMap attention is ordinary masked multi-head attention (C.1-C.2)."""
    m = _perturb_params(ECCEAttention(D, H, DIST))
    x, lens = torch.randn(B, L, D), lengths()
    y = m(x, torch.zeros(B, L, H), lens)
    ok = valid(lens, L)
    heads = lambda t: t.view(B, L, H, D // H).transpose(1, 2)  # noqa: E731
    mask = ok[:, None, None, :, 0].expand(B, H, L, L)
    o = F.scaled_dot_product_attention(heads(m.q(x)), heads(m.k(x)), heads(m.v(x)), attn_mask=mask)
    expected = torch.where(ok, m.out(o.transpose(1, 2).reshape(B, L, D)), 0)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x, None, lens), y)


def test_attention_gradcheck_float64():
    m = ECCEAttention(8, 2, dist=3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    zp = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, zp: m(x, zp, torch.tensor([5, 3])), (x, zp))


# ----------------------------------------------------------------------------- mixers

def test_mlp_mixer_definition_and_max_len_error():
    m = _perturb_params(MLPTokenMixer(MAX_LEN))
    x, lens = torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    xt = F.pad(torch.where(ok, x, 0).transpose(1, 2), (0, MAX_LEN - L))
    expected = m.fc2(F.gelu(m.fc1(xt)))[..., :L].transpose(1, 2)
    torch.testing.assert_close(m(x, None, lens), torch.where(ok, expected, 0))
    assert m.fc1.out_features == MAX_LEN  # ratio 1 by default
    with pytest.raises(ValueError, match=f"max_len={MAX_LEN}"):
        m(torch.randn(1, MAX_LEN + 1, D))
    m(torch.randn(1, MAX_LEN, D))  # exactly max_len is fine


def _naive_pools(x, lens, p):
    """Loop-by-loop pools over [i - p//2, i + p//2] ∩ valid."""
    avg, mx = torch.zeros_like(x), torch.zeros_like(x)
    for b in range(x.shape[0]):
        n = int(lens[b])
        for i in range(n):
            w = x[b, max(0, i - p // 2):min(n, i + p // 2 + 1)]
            avg[b, i], mx[b, i] = w.mean(0), w.max(0).values
    return avg, mx


@pytest.mark.parametrize("p", [1, 3, 5])
def test_pool_mixers_match_naive(p):
    x, lens = torch.randn(B, L, D), lengths([11, 4, 0])
    avg, mx = _naive_pools(x, lens, p)
    torch.testing.assert_close(AvgPoolTokenMixer(p)(x, None, lens), avg)
    torch.testing.assert_close(MaxPoolTokenMixer(p)(x, None, lens), mx)
    with pytest.raises(ValueError, match="pool_size"):
        AvgPoolTokenMixer(2)


def test_routed_mixer_is_router_weighted_sum_of_the_four_mixers():
    """eq. 8-9 from the separate modules: softmax(router(x)) . (attn, mlp, avgpool, maxpool)."""
    m = _perturb_params(RoutedTokenMixer(D, H, MAX_LEN, DIST, 3))
    x, zp, lens = torch.randn(B, L, D), torch.randn(B, L, H), lengths()
    w = torch.softmax(m.router(x), -1)
    ys = [m.attention(x, zp, lens), m.mlp(x, None, lens), AvgPoolTokenMixer(3)(x, None, lens),
          MaxPoolTokenMixer(3)(x, None, lens)]
    expected = sum(w[..., o:o + 1] * y for o, y in enumerate(ys))
    expected = torch.where(valid(lens, L), expected, 0)
    torch.testing.assert_close(m(x, zp, lens), expected, atol=1e-5, rtol=1e-5)
    rw = m.routing_weights(x, lens)
    torch.testing.assert_close(rw.sum(-1), valid(lens, L)[..., 0].float())
    assert all("router" in n for n, _ in m.router.named_parameters(prefix="router"))


def test_encoder_block_definition():
    """x = x + Mixer(LN(x), E); x = x + FFN(LN(x)) (MetaFormer), padding 0."""
    m = _perturb_params(ITEACHEncoder(D, H, "tf", dist=DIST))
    x, zp, lens = torch.randn(B, L, D), torch.randn(B, L, H), lengths()
    ok = valid(lens, L)
    xm = torch.where(ok, x, 0)
    h = xm + m.mixer(m.norm1(xm), zp, lens)
    expected = torch.where(ok, h + m.ffn(m.norm2(h)), 0)
    torch.testing.assert_close(m(x, zp, lens), expected)
    assert isinstance(m.ffn[1], torch.nn.GELU) and m.ffn[0].out_features == 4 * D
    assert isinstance(ITEACHEncoder(D, H, "nas", max_len=MAX_LEN).mixer, RoutedTokenMixer)
    with pytest.raises(ValueError, match="mixer"):
        ITEACHEncoder(D, H, "mlp")


def test_cross_attention_keys_masked_and_definition():
    m = _perturb_params(CrossAttention(D, H))
    q, kv, lens = torch.randn(B, L, D), torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    y = m(q, kv, lens)
    # by hand: eq. 7 with C = head dim, per head, keys beyond lengths excluded
    qh = m.q(m.norm_q(q)).view(B, L, H, -1).transpose(1, 2)
    kh = m.k(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    vh = m.v(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D // H)
    s = s.masked_fill(~ok[:, None, None, :, 0], float("-inf"))
    o = (torch.softmax(s, -1) @ vh).transpose(1, 2).reshape(B, L, D)
    torch.testing.assert_close(y, torch.where(ok, m.out(o), 0), atol=1e-5, rtol=1e-5)


def test_encoder_layer_fuses_audio_then_visual_into_text():
    m = _perturb_params(EncoderLayer(D, H, "tf", dist=DIST))
    t, a, v = (torch.randn(B, L, D) for _ in range(3))
    zps = tuple(torch.randn(B, L, H) for _ in range(3))
    lens = lengths()
    t2, a2, v2 = m(t, a, v, zps, lens)
    et, ea, ev = m.enc_t(t, zps[0], lens), m.enc_a(a, zps[1], lens), m.enc_v(v, zps[2], lens)
    torch.testing.assert_close(a2, ea)
    torch.testing.assert_close(v2, ev)
    h = et + m.ca_a(et, ea, lens)
    torch.testing.assert_close(t2, h + m.ca_v(h, ev, lens))


@pytest.mark.parametrize("name", ["attention", "routed", "encoder_nas", "cross_attention", "encoder_layer"])
def test_autocast_float32_inputs(name):
    """Under autocast the projections run in bfloat16 while the inputs stay float32: the
    modules hand each fused op one dtype, and padding stays 0."""
    make, call = MODULES[name]
    m = _perturb_params(make())
    x, zp, lens = torch.randn(B, L, D), torch.randn(B, L, H), lengths()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = call(m, x, zp, lens)
    ref = call(m, x, zp, lens)
    assert torch.isfinite(y).all() and (y[~valid(lens, L).expand_as(y)] == 0).all()
    torch.testing.assert_close(y.float(), ref, atol=0.15, rtol=0.1)

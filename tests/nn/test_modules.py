"""Tests of the drop-in modules (iteach_fast.nn.modules): shapes, backends, padding invariance,
length 0 / 1, ECCE's bias and modes, the token mixers against their definitions, causal mode,
validation once (Padded), no copies around the fused attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from iteach_fast import ops
from iteach_fast.nn.modules import (
    ECCE,
    AvgPoolTokenMixer,
    CrossAttention,
    ECCEAttention,
    EncoderLayer,
    ITEACHEncoder,
    MaxPoolTokenMixer,
    MLPTokenMixer,
    Padded,
    RoutedTokenMixer,
    padded,
    set_backend,
)
from iteach_fast.ops import backends

B, L, D, H = 3, 11, 16, 4
MAX_LEN, DIST = 16, 5
LENGTHS = [11, 6, 1]


def lengths(values=LENGTHS):
    return torch.tensor(values)


def valid(lens, L_):
    return (torch.arange(L_) < lens[:, None])[..., None]


def table(zp, lens):
    """ECCE's band-mean table of a given ``zp (B, L, H)`` (the projection by the identity)."""
    lens = lens.lengths if isinstance(lens, Padded) else lens
    return ops.ecce_prefix(zp, torch.eye(zp.shape[-1], dtype=zp.dtype), lens, DIST, backend="reference")[1]


# Every module under one calling convention: (module, fn(module, x, zp, lengths) -> output (B, L, D or H));
# the mixers get ECCE's table of zp
def _encoder_layer_t(m, x, zp, lens):
    return m(x, x.flip(-1), x * 0.5, (table(zp, lens), table(zp.flip(-1), lens), table(-zp, lens)), lens)[0]


def _mixer(m, x, zp, lens):
    return m(x, table(zp, lens), lens)


MODULES = {
    "ecce": (lambda **kw: ECCE(D, H, kernel_size=3, dist=DIST, **kw), lambda m, x, zp, lens: m.project(x, lens)),
    "ecce_global": (lambda **kw: ECCE(D, H, dist=DIST, mode="global", **kw),
                    lambda m, x, zp, lens: m.project(x, lens)),
    "attention": (lambda **kw: ECCEAttention(D, H, DIST, **kw), _mixer),
    "mlp": (lambda **kw: MLPTokenMixer(MAX_LEN, ratio=2.0, **kw), lambda m, x, zp, lens: m(x, None, lens)),
    "mlp_narrow": (lambda **kw: MLPTokenMixer(MAX_LEN, ratio=0.3, **kw), lambda m, x, zp, lens: m(x, None, lens)),
    "avgpool": (lambda **kw: AvgPoolTokenMixer(3, **kw), lambda m, x, zp, lens: m(x, None, lens)),
    "maxpool": (lambda **kw: MaxPoolTokenMixer(5, **kw), lambda m, x, zp, lens: m(x, None, lens)),
    "routed": (lambda **kw: RoutedTokenMixer(D, H, MAX_LEN, DIST, 3, **kw), _mixer),
    "encoder_tf": (lambda **kw: ITEACHEncoder(D, H, "tf", dist=DIST, **kw), _mixer),
    "encoder_nas": (lambda **kw: ITEACHEncoder(D, H, "nas", max_len=MAX_LEN, dist=DIST, **kw), _mixer),
    "cross_attention": (lambda **kw: CrossAttention(D, H, **kw), lambda m, x, zp, lens: m(x, x.flip(-1) * 2, lens)),
    "encoder_layer": (lambda **kw: EncoderLayer(D, H, "nas", max_len=MAX_LEN, dist=DIST, **kw), _encoder_layer_t),
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
    x, lens = torch.randn(B, L, D, requires_grad=True), lengths()
    prefix = table(torch.randn(B, L, H), lens)
    outs, grads = [], []
    for b in ("reference", backend):
        if isinstance(m, RoutedTokenMixer):
            m.backend = b  # the mixture only: its attention stays on auto
        else:
            set_backend(m, b)
        y = m(x, prefix, lens)
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
        layer(torch.randn(1, 4, D), torch.randn(1, 4, D), torch.randn(1, 4, D), (None,) * 3, torch.tensor([4]))


# ----------------------------------------------------------------------------- validation once

def test_standalone_modules_validate():
    """Called on its own, a module checks its inputs and names what is wrong."""
    m = ECCEAttention(D, H, DIST)
    x, lens = torch.randn(B, L, D), lengths()
    with pytest.raises(ValueError, match="lengths"):
        m(x, None, torch.tensor([L + 1, 1, 1]))
    with pytest.raises(ValueError, match="lengths"):
        m(x, None, torch.tensor([-1, 1, 1]))
    with pytest.raises(TypeError, match="lengths"):
        m(x, None, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="lengths"):
        m(x, None, "11")
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(B, L, D + 1), None, lens)
    with pytest.raises(ValueError, match="prefix"):
        m(x, torch.randn(B, H, 3, L + 1), lens)
    with pytest.raises(ValueError, match="kv"):
        CrossAttention(D, H)(x, torch.randn(B, L + 1, D), lens)
    with pytest.raises(ValueError, match="a must have"):
        EncoderLayer(D, H)(x, x[:, :3], x, (None,) * 3, lens)


def test_padded_is_trusted_and_checked_once():
    """A Padded (validated lengths + mask, built once at the model boundary) is passed through
    untouched; every module given one computes the same as from the raw lengths."""
    lens = lengths()
    pad = padded(lens, B, L, torch.device("cpu"))
    assert isinstance(pad, Padded) and padded(pad, B, L, torch.device("cpu")) is pad
    assert pad.lengths.dtype == torch.int64 and pad.valid.shape == (B, L, 1)
    assert torch.equal(pad.valid, valid(lens, L))
    for name, (make, call) in MODULES.items():
        m = _perturb_params(make())
        x, zp = torch.randn(B, L, D), torch.randn(B, L, H)
        torch.testing.assert_close(call(m, x, zp, pad), call(m, x, zp, lens), msg=name)


def test_lengths_checked_without_reading_the_device():
    """On the host for CPU lengths (a ValueError with the values), with a device-side assert
    (torch._assert_async, no synchronisation) for lengths on an accelerator or under compile."""
    with pytest.raises(ValueError, match=r"\[0, L=4\], got values in \[0, 5\]"):
        padded(torch.tensor([5, 0]), 2, 4, torch.device("cpu"))
    seen = []
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Record():
        padded(torch.tensor([3, 0]), 2, 4, torch.device("cpu"))
    assert "aten._local_scalar_dense" not in seen and "aten.item" not in seen, seen


# ----------------------------------------------------------------------------- ECCE

def test_ecce_matches_definition_and_bias():
    """zp = mask(Conv1d(mask(x))) @ W_fc (eq. 5), forward = its band-mean table, and
    ECCE.bias = ops.ecce_bias(zp)."""
    m = _perturb_params(ECCE(D, H, kernel_size=7, dist=DIST))
    x, lens = torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    z = torch.where(ok, m.conv(torch.where(ok, x, 0).transpose(1, 2)).transpose(1, 2), 0)
    zp = m.project(x, lens)
    torch.testing.assert_close(zp, torch.where(ok, z @ m.fc.weight.T, 0))
    torch.testing.assert_close(m(x, lens), table(zp, lens))
    E = m.bias(x, lens)
    assert E.shape == (B, H, L, L)
    torch.testing.assert_close(E, ops.ecce_bias(zp, lens, DIST, backend="reference"))
    # spot-check one band entry against Algorithm 1 (inclusive window mean, then FC)
    i, j = 2, 5
    torch.testing.assert_close(E[0, :, i, j], z[0, i:j + 1].mean(0) @ m.fc.weight.T)
    assert (E[0, :, 0, DIST:] == 0).all(), "outside the band |i-j| < dist, E = 0"


def test_ecce_causal_conv_sees_the_past_only():
    """causal: Z[t] = sum_{s=0..k-1} W[s] x[t-k+1+s] (padded on the left only), and the bias is causal."""
    m = _perturb_params(ECCE(D, H, kernel_size=5, dist=DIST, causal=True))
    x, lens = torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    xm = F.pad(torch.where(ok, x, 0).transpose(1, 2), (4, 0))
    z = F.conv1d(xm, m.conv.weight, m.conv.bias).transpose(1, 2)
    torch.testing.assert_close(m.project(x, lens), torch.where(ok, z @ m.fc.weight.T, 0))
    E = m.bias(x, lens)
    assert (E.triu(1) == 0).all()


def test_ecce_fc_has_no_bias():
    assert ECCE(D, H).fc.bias is None  # Algorithm 1's FC bias cannot change the softmax (docs/maths.md)


def test_ecce_modes():
    x, lens = torch.randn(B, L, D), lengths()
    off = ECCE(D, H, mode="off")
    assert list(off.parameters()) == []
    assert off(x, lens) is None  # no table: plain attention
    assert (off.project(x, lens) == 0).all() and (off.bias(x, lens) == 0).all()
    glob = ECCE(D, H, mode="global")
    assert glob.conv is None
    ok = valid(lens, L)
    torch.testing.assert_close(glob.project(x, lens), torch.where(ok, x @ glob.fc.weight.T, 0))
    with pytest.raises(ValueError, match="mode"):
        ECCE(D, H, mode="local")
    with pytest.raises(ValueError, match="kernel_size"):
        ECCE(D, H, kernel_size=4)


def test_attention_with_ecce_off_is_plain_attention():
    """With no table (ECCE off) the MixMap attention is ordinary masked multi-head attention (C.1-C.2)."""
    m = _perturb_params(ECCEAttention(D, H, DIST))
    x, lens = torch.randn(B, L, D), lengths()
    y = m(x, None, lens)
    ok = valid(lens, L)
    heads = lambda t: t.view(B, L, H, D // H).transpose(1, 2)  # noqa: E731
    mask = ok[:, None, None, :, 0].expand(B, H, L, L)
    o = F.scaled_dot_product_attention(heads(m.q(x)), heads(m.k(x)), heads(m.v(x)), attn_mask=mask)
    expected = torch.where(ok, m.out(o.transpose(1, 2).reshape(B, L, D)), 0)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x, table(torch.zeros(B, L, H), lens), lens), y)  # E = 0: the same


def test_attention_gradcheck_float64():
    m = ECCEAttention(8, 2, dist=3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    zp = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([5, 3])
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, zp: m(x, ops.ecce_prefix(zp, eye, lens, 3, backend="reference")[1], lens), (x, zp))


# ----------------------------------------------------------------------------- no copies

def _copies(fn) -> dict:
    """The copy ops (copy_, clone, _to_copy, contiguous's clone) one call of ``fn`` dispatches."""
    from bench.counters import count_ops

    return {k: n for k, n in count_ops(fn).items() if k in ("aten.copy_", "aten.clone", "aten._to_copy")}


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_attention_passes_views_without_copies(backend):
    """ECCEAttention and CrossAttention hand the fused op (Triton, or the C++ CPU kernel)
    (B, L, H, Dh) views of their projections and reshape the output as a view: one forward +
    backward issues no copy_/clone/_to_copy at all (Triton through its interpreter on the CPU;
    the reference's own matmuls copy, so it is not the subject here)."""
    impl = backends.REGISTRY["ecce_attention"].get(backend)
    if impl is None or impl.unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip(f"the {backend} backend does not run here")
    attention, cross = ECCEAttention(D, H, DIST, backend=backend), CrossAttention(D, H, backend=backend)
    lens = lengths()
    x = torch.randn(B, L, D, requires_grad=True)
    prefix = table(torch.randn(B, L, H), lens).detach()

    def step():
        y = attention(x, prefix, lens) + cross(x, x.flip(1), lens)
        y.backward(torch.ones_like(y))

    assert _copies(lambda: x.transpose(1, 2).contiguous()) == {"aten.clone": 1}  # the counter sees a copy
    assert _copies(step) == {}


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


@pytest.mark.parametrize("ratio", [1.0, 2.0, 0.5])
def test_causal_mlp_mixer_lower_triangular(ratio):
    """Hidden unit k belongs to position floor(k / ratio): it reads tokens <= that position, and
    output i reads units of positions <= i. The masks are applied in the forward, so weights
    trained (here: overwritten) anywhere cannot break causality; masked-out weights get no gradient."""
    m = MLPTokenMixer(MAX_LEN, ratio=ratio, causal=True)
    hidden = m.fc1.out_features
    owner = torch.clamp((torch.arange(hidden) / ratio).floor().long(), max=MAX_LEN - 1)
    assert torch.equal(m.owner, owner)
    w1, w2 = m.weights()
    t = torch.arange(MAX_LEN)
    assert torch.equal(w1 != 0, (t[None, :] <= owner[:, None]) & (m.fc1.weight != 0))
    assert torch.equal(w2 != 0, (owner[None, :] <= t[:, None]) & (m.fc2.weight != 0))
    with torch.no_grad():  # "training" that wrote every weight
        m.fc1.weight.normal_()
        m.fc2.weight.normal_()
    x, lens = torch.randn(B, L, D, requires_grad=True), lengths()
    y = m(x, None, lens)
    x2 = x.detach().clone()
    x2[:, 6:] = 1e3 * torch.randn(B, L - 6, D)
    assert torch.equal(m(x2, None, lens)[:, :6], y[:, :6].detach())
    y.sum().backward()
    assert (m.fc1.weight.grad[~m.mask1] == 0).all() and (m.fc2.weight.grad[~m.mask2] == 0).all()
    assert set(m.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}  # masks are not stored


def _naive_pools(x, lens, p, causal=False):
    """Loop-by-loop pools over [i - p//2, i + p//2] ∩ valid ([i - p + 1, i] ∩ valid if causal)."""
    avg, mx = torch.zeros_like(x), torch.zeros_like(x)
    for b in range(x.shape[0]):
        n = int(lens[b])
        for i in range(n):
            lo, hi = (i - p + 1, i + 1) if causal else (i - p // 2, i + p // 2 + 1)
            w = x[b, max(0, lo):min(n, hi)]
            avg[b, i], mx[b, i] = w.mean(0), w.max(0).values
    return avg, mx


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("p", [1, 3, 5])
def test_pool_mixers_match_naive(p, causal):
    x, lens = torch.randn(B, L, D), lengths([11, 4, 0])
    avg, mx = _naive_pools(x, lens, p, causal)
    torch.testing.assert_close(AvgPoolTokenMixer(p, causal=causal)(x, None, lens), avg)
    torch.testing.assert_close(MaxPoolTokenMixer(p, causal=causal)(x, None, lens), mx)
    with pytest.raises(ValueError, match="pool_size"):
        AvgPoolTokenMixer(2)


@pytest.mark.parametrize("causal", [False, True])
def test_routed_mixer_is_router_weighted_sum_of_the_four_mixers(causal):
    """eq. 8-9 from the separate modules: softmax(router(x)) . (attn, mlp, avgpool, maxpool)."""
    m = _perturb_params(RoutedTokenMixer(D, H, MAX_LEN, DIST, 3, causal=causal))
    x, zp, lens = torch.randn(B, L, D), torch.randn(B, L, H), lengths()
    prefix = table(zp, lens)
    w = torch.softmax(m.router(x), -1)
    ys = [m.attention(x, prefix, lens), m.mlp(x, None, lens), AvgPoolTokenMixer(3, causal)(x, None, lens),
          MaxPoolTokenMixer(3, causal)(x, None, lens)]
    expected = sum(w[..., o:o + 1] * y for o, y in enumerate(ys))
    expected = torch.where(valid(lens, L), expected, 0)
    torch.testing.assert_close(m(x, prefix, lens), expected, atol=1e-5, rtol=1e-5)
    rw = m.routing_weights(x, lens)
    torch.testing.assert_close(rw.sum(-1), valid(lens, L)[..., 0].float())
    assert all("router" in n for n, _ in m.router.named_parameters(prefix="router"))


def test_encoder_block_definition():
    """x = x + Mixer(LN(x), E); x = x + FFN(LN(x)) (MetaFormer), padding 0."""
    m = _perturb_params(ITEACHEncoder(D, H, "tf", dist=DIST))
    x, lens = torch.randn(B, L, D), lengths()
    prefix = table(torch.randn(B, L, H), lens)
    ok = valid(lens, L)
    xm = torch.where(ok, x, 0)
    h = xm + m.mixer(m.norm1(xm), prefix, lens)
    expected = torch.where(ok, h + m.ffn(m.norm2(h)), 0)
    torch.testing.assert_close(m(x, prefix, lens), expected)
    assert isinstance(m.ffn[1], torch.nn.GELU) and m.ffn[0].out_features == 4 * D
    assert isinstance(ITEACHEncoder(D, H, "nas", max_len=MAX_LEN).mixer, RoutedTokenMixer)
    with pytest.raises(ValueError, match="mixer"):
        ITEACHEncoder(D, H, "mlp")


@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_keys_masked_and_definition(causal):
    m = _perturb_params(CrossAttention(D, H, causal=causal))
    q, kv, lens = torch.randn(B, L, D), torch.randn(B, L, D), lengths()
    ok = valid(lens, L)
    y = m(q, kv, lens)
    # by hand: eq. 7 with C = head dim, per head, keys beyond lengths (and after the query if causal) excluded
    qh = m.q(m.norm_q(q)).view(B, L, H, -1).transpose(1, 2)
    kh = m.k(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    vh = m.v(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D // H)
    s = s.masked_fill(~ok[:, None, None, :, 0], float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    o = (torch.softmax(s, -1) @ vh).transpose(1, 2).reshape(B, L, D)
    expected = torch.where(ok, m.out(torch.nan_to_num(o)), 0)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_guided_by_the_query_streams_band(causal):
    """cross_ecce: the text stream's ECCE bias E (the band means of its table) added to the
    cross-attention's scores, as in the MixMap; and the encoder layer passes the text table."""
    m = _perturb_params(CrossAttention(D, H, causal=causal, dist=DIST))
    q, kv, lens = torch.randn(B, L, D), torch.randn(B, L, D), lengths()
    zp = torch.randn(B, L, H)
    ok = valid(lens, L)
    y = m(q, kv, lens, table(zp, lens))
    qh = m.q(m.norm_q(q)).view(B, L, H, -1).transpose(1, 2)
    kh = m.k(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    vh = m.v(m.norm_kv(kv)).view(B, L, H, -1).transpose(1, 2)
    E = ops.ecce_bias(zp, lens, DIST, causal=causal, backend="reference")
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(D // H) + E
    s = s.masked_fill(~ok[:, None, None, :, 0], float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    o = (torch.softmax(s, -1) @ vh).transpose(1, 2).reshape(B, L, D)
    torch.testing.assert_close(y, torch.where(ok, m.out(torch.nan_to_num(o)), 0), atol=1e-5, rtol=1e-5)
    layer = _perturb_params(EncoderLayer(D, H, "tf", dist=DIST, causal=causal, cross_ecce=True))
    t, a, v = (torch.randn(B, L, D) for _ in range(3))
    tables = tuple(table(torch.randn(B, L, H), lens) for _ in range(3))
    t2, _, _ = layer(t, a, v, tables, lens)
    et, ea, ev = (enc(x, p, lens) for enc, x, p in zip((layer.enc_t, layer.enc_a, layer.enc_v), (t, a, v), tables))
    h = et + layer.ca_a(et, ea, lens, tables[0])
    torch.testing.assert_close(t2, h + layer.ca_v(h, ev, lens, tables[0]))


def test_encoder_layer_fuses_audio_then_visual_into_text():
    m = _perturb_params(EncoderLayer(D, H, "tf", dist=DIST))
    t, a, v = (torch.randn(B, L, D) for _ in range(3))
    lens = lengths()
    tables = tuple(table(torch.randn(B, L, H), lens) for _ in range(3))
    t2, a2, v2 = m(t, a, v, tables, lens)
    et, ea, ev = m.enc_t(t, tables[0], lens), m.enc_a(a, tables[1], lens), m.enc_v(v, tables[2], lens)
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


# ----------------------------------------------------------------------------- causal mode

@pytest.mark.parametrize("name", MODULES)
def test_causal_modules_ignore_the_future(name):
    """causal=True: garbage at utterances > t (in x and in zp) leaves every output <= t
    bit-identical, for every module; the outputs differ from the bidirectional module's."""
    make, call = MODULES[name]
    torch.manual_seed(0)
    m = _perturb_params(make(causal=True))
    lens = lengths([11, 11, 8])
    x, zp = torch.randn(B, L, D), torch.randn(B, L, H)
    ref = call(m, x, zp, lens)
    for t in (0, 4, 7):
        x2, zp2 = x.clone(), zp.clone()
        x2[:, t + 1:] = 1e3 * torch.randn(B, L - t - 1, D)
        zp2[:, t + 1:] = 1e3 * torch.randn(B, L - t - 1, H)
        out = call(m, x2, zp2, lens)
        assert torch.equal(out[:, :t + 1], ref[:, :t + 1]), f"{name}: output <= {t} changed"
    if name not in ("ecce_global",):  # ECCE without a conv is per-position either way
        torch.manual_seed(0)
        bidirectional = _perturb_params(make())
        assert not torch.allclose(call(bidirectional, x, zp, lens), ref)

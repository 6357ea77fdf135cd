"""A short multi-step convergence check: ten AdamW steps of a small ITEACH-Net with every op on
the reference backend and with ``backend="auto"`` (the fastest registered implementation of
each op here) follow the same loss curve within the registry's float32 tolerances. A kernel
that is right on one call but drifts (a wrong gradient, say) shows up as diverging losses."""
import torch

from iteach_fast.nn.model import ITEACHNet
from iteach_fast.ops import backends

DIMS, C, B, L, STEPS = (12, 8, 10), 4, 4, 24, 10


def _losses(backend: str) -> torch.Tensor:
    torch.manual_seed(0)
    net = ITEACHNet(DIMS, C, dim=16, heads=4, max_len=L, dist=5, conv_kernel=3, backend=backend)
    opt = torch.optim.AdamW(net.parameter_groups(lr=1e-3, router_lr=1e-2))
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        lengths = torch.randint(1, L + 1, (B,), generator=g)
        lengths[0] = L
        complete = [torch.randn(B, L, d, generator=g) for d in DIMS]
        present = torch.rand(B, L, 3, generator=g) > 0.4
        present[..., 0] |= ~present.any(-1)  # every utterance keeps a modality
        incomplete = [x * present[..., m, None] for m, x in enumerate(complete)]
        labels = torch.randint(0, C, (B, L), generator=g)
        teacher_out, student_out = net(complete, incomplete, lengths, present)
        loss = net.loss(teacher_out, student_out, labels, lengths, present)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def test_ten_steps_reference_and_auto_follow_the_same_losses():
    device = torch.device("cpu")
    picked = {op: backends.select(op, "auto", device, torch.float32) for op in backends.OPS}
    atol, rtol = (max(t) for t in zip(*(impl.tolerances[torch.float32] for impl in picked.values())))
    ref, auto = _losses("reference"), _losses("auto")
    assert ref[-1] < ref[0], "the loss should fall over ten steps (else the comparison says little)"
    torch.testing.assert_close(auto, ref, atol=atol * float(ref.abs().max()), rtol=rtol,
                               msg=lambda m: f"auto picked {[(op, i.backend) for op, i in picked.items()]}: {m}")

"""End-to-end entries: a whole ITEACH-Net training step and inference, per provider, with the
host synchronisations and kernel launches of one step recorded beside its time.

Providers: ``reference`` (every op on the reference backend), ``auto`` (the registry's best
backend of each op), ``auto+compile`` (``torch.compile`` of the forward + loss; the backward
through AOTAutograd, AdamW eager) and, on CUDA, ``auto+compile+cuda-graphs`` (the compiled
step — forward, loss, backward and ``AdamW(capturable=True)`` — captured once in a CUDA
graph and replayed on static input buffers). A provider that cannot be built here is a
skipped row with the reason (e.g. a step whose host synchronisations forbid graph capture).
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch

from .cases import Case, Entry, Prepared, Size, Skip
from .counters import count_cuda_syncs, count_kernels, count_ops, count_syncs

__all__ = ["ModelEntry", "MODEL_ENTRY", "MODEL_INPUT_DIMS", "MODEL_CLASSES", "make_net", "make_batches"]

MODEL_INPUT_DIMS = (1024, 512, 1024)  # text (DeBERTa), audio (wav2vec), visual (MA-Net): the paper's features
MODEL_CLASSES = 4
HEADLINE = frozenset({"headline"})
COMPILE = "auto+compile"
GRAPHS = "auto+compile+cuda-graphs"


def make_net(L: int, backend: str, device: torch.device, dtype: torch.dtype = torch.float32, D: int = 128,
             H: int = 8, **config):
    """The paper's ITS net (3 x TF teacher, 4 x NAS student) for conversations of up to ``L``
    utterances, the same weights for every provider (seed 0)."""
    from iteach_fast.model import ITEACHNet

    torch.manual_seed(0)
    net = ITEACHNet(input_dims=MODEL_INPUT_DIMS, num_classes=MODEL_CLASSES, framework="its", dim=D, heads=H,
                    max_len=L, backend=backend, **config)
    return net.to(device=device, dtype=dtype)


def make_batches(B: int, L: int, device: torch.device, dtype: torch.dtype, copies: int,
                 gen: torch.Generator) -> list[tuple]:
    """``copies`` batches ``(complete, incomplete, lengths, present, labels)``: ragged lengths in
    [L/2, L] (the first full), ~30 % of modalities missing, every utterance keeping one."""
    batches = []
    for _ in range(copies):
        complete = tuple(torch.randn((B, L, d), generator=gen).to(device, dtype) for d in MODEL_INPUT_DIMS)
        present = torch.rand((B, L, 3), generator=gen) > 0.3
        present[..., 0] |= ~present.any(-1)
        present = present.to(device)
        incomplete = tuple(x * present[..., m:m + 1] for m, x in enumerate(complete))
        lengths = torch.randint(max(1, L // 2), L + 1, (B,), generator=gen)
        lengths[0] = L
        labels = torch.randint(0, MODEL_CLASSES, (B, L), generator=gen).to(device)
        batches.append((complete, incomplete, lengths.to(device), present, labels))
    return batches


def _loss_fn(net) -> Callable:
    def forward_and_loss(complete, incomplete, lengths, present, labels):
        teacher_out, student_out = net(complete, incomplete, lengths, present)
        return net.loss(teacher_out, student_out, labels, lengths, present)["total"]
    return forward_and_loss


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


class _Compiled:
    """``torch.compile`` of ``fn``, ``fullgraph=True`` first; where that fails (a graph break),
    the default mode, with the failure and the graph breaks kept for the row's note."""

    def __init__(self, fn: Callable):
        self.fn, self.compiled, self.note = fn, torch.compile(fn, fullgraph=True), ""

    def __call__(self, *args):
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - the fallback is the measurement
            if self.note:
                raise
            before = _graph_breaks()
            self.compiled = torch.compile(self.fn)
            out = self.compiled(*args)
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            self.note = (f"fullgraph=True failed ({type(err).__name__}: {reason}); "
                         f"default mode: {_graph_breaks() - before} graph breaks")
            return out


class ModelEntry(Entry):
    op = "iteach_net"
    baseline = "reference"
    modes = ("train_step", "inference")
    dtypes = {"cuda": ("float32",), "cpu": ("float32",)}  # the model trains in float32 (bf16: autocast)
    # the NAS MLP token mixer is Linear(L, L): the model runs at conversation lengths only
    sizes = {"cuda": (Size(32, 110, tags=HEADLINE), Size(4, 2048)),
             "cpu": (Size(8, 110), Size(32, 110, tags=HEADLINE), Size(4, 1024)),
             "cpu-quick": (Size(8, 110), Size(32, 110, tags=HEADLINE)),
             "smoke": (Size(2, 16, tags=HEADLINE),)}

    def providers(self) -> list[str]:
        return ["reference", "auto", COMPILE, GRAPHS]

    def describe(self) -> dict[str, str]:
        return {"auto": "the whole model with backend='auto': the best registered backend of each op",
                COMPILE: "backend='auto', forward + loss through torch.compile (fullgraph=True where it "
                         "compiles, else the default mode), backward through AOTAutograd, AdamW eager",
                GRAPHS: "auto+compile with the whole step (forward, loss, backward, AdamW(capturable=True)) "
                        "captured in one CUDA graph, inputs copied into static buffers"}

    def is_compiled(self, provider: str) -> bool:
        return provider in (COMPILE, GRAPHS)

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        c0 = cases[0]
        gen = torch.Generator().manual_seed(seed)
        batches = make_batches(c0.B, c0.L, device, c0.torch_dtype, copies, gen)
        shared = functools.cache(lambda backend: make_net(c0.L, backend, device, c0.torch_dtype, c0.D, c0.H))
        compiled = {}  # one compiled function per mode, shared by auto+compile and its CUDA graph
        out = {}
        for case in cases:
            try:
                out[case] = self._prepare(case, device, batches, shared, compiled)
            except Skip as why:
                out[case] = why
        return out

    def _prepare(self, case: Case, device, batches, shared, compiled) -> Prepared:
        if case.provider == GRAPHS and device.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        net = shared("reference" if case.provider == "reference" else "auto")
        rotation = itertools.cycle(batches)
        n_params = sum(p.numel() for p in net.parameters())
        note = f"{n_params / 1e6:.2f} M parameters"
        if case.mode == "inference":
            return self._inference(case, device, net, rotation, compiled, note)
        net.train()
        loss_fn = _loss_fn(net)
        if case.provider in (COMPILE, GRAPHS):
            loss_fn = compiled.setdefault("train_step", _Compiled(loss_fn))
        if case.provider == GRAPHS:
            return _graphed_step(net, loss_fn, batches, note)
        optimizer = torch.optim.AdamW(net.parameter_groups(lr=5e-4, router_lr=5e-3))

        def model_part():
            complete, incomplete, lengths, present, labels = next(rotation)
            loss_fn(complete, incomplete, lengths, present, labels).backward()

        def step():
            optimizer.zero_grad(set_to_none=True)
            model_part()
            optimizer.step()

        prepared = Prepared(step, note=note)
        prepared.counters = lambda: {**_counters(case, device, model_part, step, loss_fn),
                                     **({"note": f"{note}; {loss_fn.note}"} if getattr(loss_fn, "note", "") else {})}
        return prepared

    def _inference(self, case, device, net, rotation, compiled, note) -> Prepared:
        net.eval()
        forward = net.student
        if case.provider in (COMPILE, GRAPHS):
            forward = compiled.setdefault("inference", _Compiled(net.student))
        if case.provider == GRAPHS:
            return _graphed_inference(forward, list(itertools.islice(rotation, 3)), note)

        def infer():
            _, incomplete, lengths, present, _ = next(rotation)
            with torch.no_grad():
                forward(*incomplete, lengths, present)

        prepared = Prepared(infer, note=note)
        prepared.counters = lambda: {**_counters(case, device, infer, infer, forward),
                                     **({"note": f"{note}; {forward.note}"} if getattr(forward, "note", "") else {})}
        return prepared


def _counters(case: Case, device: torch.device, model_part: Callable, whole: Callable, fn) -> dict:
    """Host syncs of the model's part of one step (forward, loss, backward: the optimizer's
    bookkeeping is not the model's) and the launches of the whole step."""
    compiled = isinstance(fn, _Compiled)
    row: dict = {}
    if device.type == "cuda":
        row["host_syncs"] = count_cuda_syncs(model_part)
        row["host_syncs_method"] = "torch.cuda.set_sync_debug_mode warnings (forward, loss, backward)"
        row["launches"] = count_kernels(whole)
        row["launches_method"] = "CUDA kernels in torch.profiler (whole step)"
    if not compiled:  # compiled code runs eagerly under a dispatch mode: counted only where it is eager
        syncs = count_syncs(model_part)
        row["host_syncs"] = sum(syncs.values())
        row["host_syncs_by_op"] = syncs
        row["host_syncs_method"] = "aten ops that synchronise, counted by a TorchDispatchMode (forward, loss, " \
                                   "backward)"
        if device.type != "cuda":
            row["launches"] = sum(count_ops(whole).values())
            row["launches_method"] = "aten ops dispatched, views excluded (a CPU proxy; whole step)"
    return row


def _static_copy(batch) -> tuple:
    return tuple(tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone() for x in batch)


def _copy_into(static, batch) -> None:
    for s, b in zip(static, batch):
        for dst, src in (zip(s, b) if isinstance(s, tuple) else ((s, b),)):
            dst.copy_(src, non_blocking=True)


def _graphed_step(net, loss_fn, batches: list, note: str) -> Prepared:
    """The whole training step captured in one CUDA graph (after a warm-up on a side stream)."""
    optimizer = torch.optim.AdamW(net.parameter_groups(lr=5e-4, router_lr=5e-3), capturable=True)
    static = _static_copy(batches[0])

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss_fn(*static).backward()
        optimizer.step()

    graph = _capture(step)
    rotation = itertools.cycle(batches)

    def replay():
        _copy_into(static, next(rotation))
        graph.replay()

    prepared = Prepared(replay, note=note)
    prepared.counters = lambda: {"host_syncs": count_cuda_syncs(replay),
                                 "host_syncs_method": "torch.cuda.set_sync_debug_mode warnings (graph replay)",
                                 "launches": count_kernels(replay),
                                 "launches_method": "CUDA kernels in torch.profiler (graph replay)"}
    return prepared


def _graphed_inference(forward, batches: list, note: str) -> Prepared:
    static = _static_copy(batches[0])

    def infer():
        _, incomplete, lengths, present, _ = static
        with torch.no_grad():
            forward(*incomplete, lengths, present)

    graph = _capture(infer)
    rotation = itertools.cycle(batches)

    def replay():
        _copy_into(static, next(rotation))
        graph.replay()
    return Prepared(replay, note=note)


def _capture(fn: Callable[[], None]):
    """``fn`` warmed up on a side stream, then captured; a step that cannot be captured (a host
    synchronisation inside it) is a Skip with the reason."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as err:  # noqa: BLE001
        torch.cuda.synchronize()
        text = str(err).strip().splitlines()
        raise Skip(f"the step cannot be captured in a CUDA graph yet ({type(err).__name__}: "
                   f"{text[0][:200] if text else ''})") from None
    return graph


MODEL_ENTRY = ModelEntry()

"""End-to-end entries: a whole ITEACH-Net training step and inference, per provider, with the
host synchronisations and kernel launches of one step recorded beside its time.

The training step is the one ``iteach-fast train`` runs (:class:`iteach_fast.training.step.Step`:
forward + loss, backward, gradient norm, AdamW, the step's report read once), on batches
collated on the host and copied to the device as training does. Providers: ``reference``
(every op on the reference backend), ``auto`` (the registry's best backend of each op),
``auto+compile`` (``train --compile``: forward + loss through ``torch.compile(fullgraph=True)``,
backward through AOTAutograd) and, on CUDA, ``auto+compile+cuda-graphs`` (``train --compile
--cuda-graphs``: :class:`~iteach_fast.training.step.GraphedStep`, the whole step captured in one CUDA
graph). Inference is the student's forward (compiled, and replayed from a CUDA graph, likewise).
A provider that cannot be built here is a skipped row with the reason. The training tier
(``iteach_fast.training``) is imported where a training step is built, not at import: the op
entries, the inference rows and ``bench.syncs`` need only the model, and a training import that
fails (a module missing on a GPU machine) is the reason in the training rows, not the end of
the whole run.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch

from iteach_fast.nn.config import ModelConfig
from iteach_fast.nn.model import ITEACHNet

from .cases import Case, Entry, Prepared, Size, Skip
from .counters import count_cuda_syncs, count_kernels, count_ops, count_syncs

__all__ = ["ModelEntry", "MODEL_ENTRY", "MODEL_INPUT_DIMS", "MODEL_CLASSES", "make_net", "make_batches"]

MODEL_INPUT_DIMS = (1024, 512, 1024)  # text (DeBERTa), audio (wav2vec), visual (MA-Net): the paper's features
MODEL_CLASSES = 4
HEADLINE = frozenset({"headline"})
COMPILE = "auto+compile"
GRAPHS = "auto+compile+cuda-graphs"


def model_config(L: int, backend: str, D: int = 128, H: int = 8, **config) -> ModelConfig:
    """The paper's ITS net (3 x TF teacher, 4 x NAS student) for conversations of up to ``L`` utterances."""
    return ModelConfig(framework="its", dim=D, heads=H, max_len=L, backend=backend, **config)


def make_net(L: int, backend: str, device: torch.device, dtype: torch.dtype = torch.float32, D: int = 128,
             H: int = 8, **config) -> ITEACHNet:
    """:func:`model_config`'s net with the same weights for every provider (seed 0)."""
    torch.manual_seed(0)
    net = ITEACHNet.from_config(model_config(L, backend, D, H, **config), MODEL_INPUT_DIMS, MODEL_CLASSES)
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


def _train_batch(batch: tuple):
    """One process's whole batch as :class:`iteach_fast.training.step.Batch` (the loss averages over its own counts)."""
    from iteach_fast.training.step import Batch

    complete, incomplete, lengths, present, labels = batch
    return Batch(complete, incomplete, lengths, labels, present)


class ModelEntry(Entry):
    op = "iteach_net"
    baseline = "reference"
    modes = ("train_step", "inference")
    dtypes = {"cuda": ("float32",), "cpu": ("float32",)}  # the model trains in float32 (bf16: autocast)
    min_rounds = 9  # a CPU step takes ~0.5 s on a shared machine: the quick level's 3 rounds are too few
    # the NAS MLP token mixer is Linear(L, L): the model runs at conversation lengths only
    sizes = {"cuda": (Size(32, 110, tags=HEADLINE), Size(4, 2048)),
             "cpu": (Size(8, 110), Size(32, 110, tags=HEADLINE), Size(4, 1024)),
             "cpu-quick": (Size(8, 110), Size(32, 110, tags=HEADLINE)),
             "smoke": (Size(2, 16, tags=HEADLINE),)}

    def providers(self) -> list[str]:
        return ["reference", "auto", COMPILE, GRAPHS]

    def describe(self) -> dict[str, str]:
        return {"auto": "the whole model with backend='auto': the best registered backend of each op",
                COMPILE: "train --compile: backend='auto', forward + loss through torch.compile(fullgraph=True), "
                         "backward through AOTAutograd, AdamW eager (inference: the compiled student)",
                GRAPHS: "train --compile --cuda-graphs: the whole step (forward, loss, backward, "
                        "AdamW(capturable=True)) captured in one CUDA graph, batches copied into static buffers"}

    def is_compiled(self, provider: str) -> bool:
        return provider in (COMPILE, GRAPHS)

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        c0 = cases[0]
        gen = torch.Generator().manual_seed(seed)
        host = torch.device("cpu")  # training collates on the host; the step copies to the device
        batches = make_batches(c0.B, c0.L, host, c0.torch_dtype, copies, gen)
        nets = functools.cache(lambda backend: make_net(c0.L, backend, device, c0.torch_dtype, c0.D, c0.H))
        compiled = {}  # the student's compiled forward, shared by auto+compile and its CUDA graph
        out = {}
        for case in cases:
            try:
                if case.mode == "inference":
                    out[case] = self._inference(case, device, nets, batches, compiled)
                else:
                    out[case] = self._train_step(case, device, batches)
            except Exception as err:  # noqa: BLE001 - a Skip, or this provider's failure: its row, not the group's
                out[case] = err
        return out

    @staticmethod
    def _train_step(case: Case, device: torch.device, batches: list) -> Prepared:
        if case.provider == GRAPHS and device.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        # where it is used: a failing import is this row's reason (bench.run), not the end of the run
        from iteach_fast.training.config import TrainConfig
        from iteach_fast.training.distributed import context
        from iteach_fast.training.step import GRAPH_WARMUP, GraphedStep, Step, make_optimizer

        backend = "reference" if case.provider == "reference" else "auto"
        cfg = TrainConfig(model=model_config(case.L, backend, case.D, case.H), compile=case.provider != backend,
                          cuda_graphs=case.provider == GRAPHS, device=device.type, progress=False)
        ctx = context(device.type)
        net = make_net(case.L, backend, device, case.torch_dtype, case.D, case.H)
        optim = make_optimizer(net, cfg, device)  # as train builds it (fused / capturable on CUDA)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        step = (GraphedStep if cfg.cuda_graphs else Step)(ctx.wrap(net), net, optim, scaler, cfg, ctx, "fp32")
        rotation = itertools.cycle([_train_batch(b) for b in batches])
        note = f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters"
        if cfg.cuda_graphs:
            try:
                for _ in range(GRAPH_WARMUP + 1):  # eager warm-up steps, then the capture
                    step(next(rotation))
            except Exception as err:  # noqa: BLE001 - e.g. a host synchronisation inside the step
                raise Skip(f"the step cannot be captured in a CUDA graph yet ({_first_line(err)})") from None

        def model_part():  # forward, loss, backward: what must not synchronise
            b = step.to_device(next(rotation))
            step.forward_loss(b.complete, b.incomplete, b.lengths, b.labels, b.present, b.counts)[0].backward()

        def one_step():
            step(next(rotation))

        prepared = Prepared(one_step, note=note)
        prepared.counters = lambda: _counters(device, model_part, one_step, eager=not cfg.compile)
        return prepared

    @staticmethod
    def _inference(case: Case, device: torch.device, nets, batches: list, compiled: dict) -> Prepared:
        if case.provider == GRAPHS and device.type != "cuda":
            raise Skip("CUDA graphs need a CUDA device")
        net = nets("reference" if case.provider == "reference" else "auto").eval()
        forward = net.student
        if case.provider in (COMPILE, GRAPHS):
            if "student" not in compiled:
                compiled["student"] = torch.compile(net.student, fullgraph=True, dynamic=False)
            forward = compiled["student"]
        on_device = [tuple(tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device) for x in b)
                     for b in batches]
        rotation = itertools.cycle(on_device)
        note = f"{sum(p.numel() for p in net.student.parameters()) / 1e6:.2f} M parameters (student)"
        if case.provider == GRAPHS:
            return _graphed_inference(forward, on_device, note)

        def infer():
            _, incomplete, lengths, present, _ = next(rotation)
            with torch.no_grad():
                forward(*incomplete, lengths, present)

        prepared = Prepared(infer, note=note)
        prepared.counters = lambda: _counters(device, infer, infer, eager=case.provider not in (COMPILE, GRAPHS))
        return prepared


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _counters(device: torch.device, model_part: Callable, whole: Callable, eager: bool) -> dict:
    """Host syncs of the model's part of one step (forward, loss, backward: the optimizer's
    bookkeeping and the step's one report read are not the model's) and the launches of the whole step."""
    row: dict = {}
    if device.type == "cuda":
        row["host_syncs"] = count_cuda_syncs(model_part)
        row["host_syncs_method"] = "torch.cuda.set_sync_debug_mode warnings (forward, loss, backward)"
        row["launches"] = count_kernels(whole)
        row["launches_method"] = "CUDA kernels in torch.profiler (whole step)"
    if eager:  # compiled code runs eagerly under a dispatch mode: counted only where it is eager
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


def _graphed_inference(forward, batches: list, note: str) -> Prepared:
    """The student's forward captured in a CUDA graph, replayed on static copies of the inputs."""
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
    """``fn`` warmed up on a side stream, then captured; a forward that cannot be captured (a
    host synchronisation inside it) is a Skip with the reason."""
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
        raise Skip(f"the forward cannot be captured in a CUDA graph yet ({_first_line(err)})") from None
    return graph


MODEL_ENTRY = ModelEntry()

"""What one measurement is (:class:`Case`), what an entry of the suite provides (:class:`Entry`),
and what preparing a case gives the runner (:class:`Prepared`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["Case", "Size", "Skip", "Prepared", "Entry", "size_kind"]


class Skip(Exception):
    """This case cannot run here; ``str(err)`` says why."""


@dataclass(frozen=True)
class Size:
    """``B`` conversations of ``L`` utterances, model width ``D`` in ``H`` heads. ``modes``
    narrows the entry's modes at this size (None: all of them); ``tags`` mark the size for a
    preset (``"headline"``)."""
    B: int
    L: int
    D: int = 128
    H: int = 8
    modes: tuple | None = None
    tags: frozenset = frozenset()


@dataclass(frozen=True)
class Case:
    op: str
    provider: str
    mode: str
    dtype: str
    B: int
    L: int
    D: int = 128
    H: int = 8

    @property
    def Dh(self) -> int:
        return self.D // self.H

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def backward(self) -> bool:
        """Whether the mode includes the backward (``fwd+bwd``, ``fwd+bwd causal``)."""
        return self.mode.split()[0] == "fwd+bwd"

    @property
    def causal(self) -> bool:
        return "causal" in self.mode.split()

    @property
    def group(self) -> tuple:
        """What the providers of one comparison share: every field but the provider."""
        return self.op, self.mode, self.dtype, self.B, self.L, self.D, self.H

    @property
    def id(self) -> str:
        shape = "" if (self.D, self.H) == (128, 8) else f"-D{self.D}-H{self.H}"
        return f"{self.op}-{self.provider}-{self.mode.replace(' ', '_')}-{self.dtype}-B{self.B}-L{self.L}{shape}"

    def as_dict(self) -> dict:
        return {**asdict(self), "Dh": self.Dh}


@dataclass
class Prepared:
    """One prepared case: ``fn`` runs one measured call (on the next of a few rotated input
    copies). ``counters``, if given, is called once after the timing and returns more fields
    for the row (e.g. host syncs per step). ``max_calls`` caps the calls ``fn`` allows (warm-up
    included). ``measured``: an entry that measures itself (e.g. in a subprocess) puts the
    row's timing fields here and leaves ``fn`` None."""
    fn: Callable[[], object] | None
    bytes_moved: int | None = None  # compulsory memory traffic of one call (a fused kernel's)
    flops: int | None = None  # arithmetic of one call
    note: str = ""
    counters: Callable[[], dict] | None = None
    max_calls: int | None = None
    measured: dict | None = None
    extra: dict = field(default_factory=dict)  # more row fields known before timing


def size_kind(device: torch.device, quick: bool, smoke: bool) -> str:
    """Which size list of an entry a run uses: ``smoke``, ``cuda``, ``cpu-quick`` or ``cpu``."""
    if smoke:
        return "smoke"
    if device.type == "cuda":
        return "cuda"
    return "cpu-quick" if quick else "cpu"


class Entry:
    """One benchmarked op (or model, or system path). Subclasses declare what to measure;
    ``bench.run`` only iterates. Attributes: ``op`` (the rows' op), ``baseline`` (the provider
    every speed-up divides), ``modes``, ``sizes`` (``{kind: (Size, ...)}``, kinds as
    :func:`size_kind`; ``cpu-quick`` falls back to ``cpu``), ``dtypes`` (``{device type: names}``)."""
    op: str
    baseline: str = "reference"
    modes: tuple = ()
    sizes: dict  # each entry declares its own
    dtypes: dict
    roofline: bool = False  # its rows carry bytes moved and FLOPs: the ceilings are measured next to them
    on_request: bool = False  # measured only when named (--ops): slow, e.g. launches whole training runs
    min_rounds: int = 0  # interleaved CPU rounds at least (beyond the level's), for slow calls on a noisy machine

    def providers(self) -> list[str]:
        raise NotImplementedError

    def runs_on(self, provider: str, device_type: str) -> bool:
        """Whether ``provider`` can ever run on ``device_type`` (else it gets no row there at all;
        one that cannot run in this process only is a skipped row with the reason)."""
        return True

    def describe(self) -> dict[str, str]:
        """``{provider: what it is}`` for the report's legend."""
        return {}

    def is_ours(self, provider: str) -> bool:
        """This package's own code (vs a peer it is compared with)."""
        return True

    def is_compiled(self, provider: str) -> bool:
        """Whether the provider compiles (``torch.compile``): slow to warm up, run last on a GPU."""
        return False

    def size_list(self, kind: str) -> tuple:
        return self.sizes.get(kind) or self.sizes.get("cpu" if kind == "cpu-quick" else kind, ())

    def dtype_list(self, device_type: str) -> tuple:
        return self.dtypes.get(device_type, self.dtypes.get("cpu", ("float32",)))

    def prepare(self, cases: list[Case], device: torch.device, copies: int = 3, seed: int = 0) -> dict:
        """``{case: Prepared or the exception that stopped it}`` for cases of one group
        (same op, mode, dtype and size; one per provider), sharing their inputs."""
        raise NotImplementedError

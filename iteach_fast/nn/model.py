"""ITEACH-Net: the teacher / student models and the Inverted Teacher-Student framework
(paper §3.2, §3.4, §3.5; docs/maths.md).

    net = ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)          # "its": 3xTF teacher, 4xNAS student
    teacher_out, student_out = net((t, a, v), (t_miss, a_miss, v_miss), lengths, present)
    losses = net.loss(teacher_out, student_out, labels, lengths, present)  # eq. 12-15
    optim = torch.optim.AdamW(net.parameter_groups())                      # 5e-4, router 5e-3

The inputs are validated once, at the model's boundary (shapes and dtypes on the host; the
lengths without a host-device synchronisation: :func:`iteach_fast.ops.check_lengths`, ``sync=False``);
every module below trusts them, and neither forward, loss nor backward reads a value back to
the host, so a training step can be compiled whole or captured as a CUDA graph. ``backend``
is passed down to every module. ``causal=True`` builds the real-time variant, which
:meth:`ITEACHModel.stream` runs one utterance at a time (:mod:`iteach_fast.nn.streaming`).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from ..choices import MIXERS, MODALITIES, check_choice, early_fusion_mode
from .config import ModelConfig
from .modules import ECCE, EncoderLayer, Padded, Recurrence, padded, set_backend
from .streaming import StreamingSession

__all__ = ["ModelOutput", "ITEACHModel", "ITEACHNet", "REC_WEIGHTS", "IGNORE_INDEX", "roles"]

#: eq. 14: weights of ||H'_l - H_l||^2 for l = 1, 2, 3 (H_1 is the last layer's feature)
REC_WEIGHTS = (0.5, 0.1, 0.05)
#: a class label that marks a valid utterance as unlabelled: left out of L_emo's sum and count
IGNORE_INDEX = -100
#: layers of a model by mixer where the framework does not fix them (the paper's 3 x TF, 4 x NAS)
MIXER_LAYERS = {"tf": 3, "nas": 4}


def roles(config: ModelConfig) -> tuple[tuple[int, str], tuple[int, str]]:
    """``((teacher layers, mixer), (student layers, mixer))`` of ``config``, defaults filled in:
    its: 3 x TF teacher, 4 x NAS student; ts: the two swapped; pre: one model, TF (the paper's
    "PRE | TF") unless a mixer is given, 3 x TF or 4 x NAS. Explicit layers / mixers override."""
    if config.framework == "pre":
        mixer = config.student_mixer or "tf"
        single = (config.student_layers or MIXER_LAYERS[mixer], mixer)
        return single, single
    (t_layers, t_mixer), (s_layers, s_mixer) = {"its": ((3, "tf"), (4, "nas")),
                                                "ts": ((4, "nas"), (3, "tf"))}[config.framework]
    return ((config.teacher_layers or t_layers, config.teacher_mixer or t_mixer),
            (config.student_layers or s_layers, config.student_mixer or s_mixer))


class ModelOutput(NamedTuple):
    """``logits``: ``(B, L, C)`` (``(B, L)`` for a regressor), 0 at invalid rows.
    ``hidden``: ``[H_1, H_2, ...]``, each ``(B, L, D)``, numbered from the classifier
    backwards (``H_1`` = the last layer's fused text feature), as in eq. 3-4."""
    logits: torch.Tensor
    hidden: list


class ITEACHModel(nn.Module):
    """One teacher or student model (eq. 1-4): per-modality input projection
    ``X_m = Linear(d_m, D)``, per-modality ECCE (its band-mean table computed once from
    ``X_m`` and shared by every layer of that modality), ``num_layers`` Encoder Layers, and a
    classifier ``Linear(D, C)`` on the last hidden feature ``H_1``. ``num_classes=1`` makes it
    a regressor (CMU-MOSI / MOSEI) with output ``(B, L)``. ``causal=True``: every output ``i``
    depends on utterances ``<= i`` only (:meth:`stream` runs it utterance by utterance).

    Missing modalities arrive as zeros (GCNet's convention); ``present (B, L, 3)`` bool is
    validated, and read only with the ``presence`` option (its flags join each projection's input).
    """

    def __init__(self, input_dims, num_classes: int, num_layers: int, mixer: str = "tf", dim: int = 128,
                 heads: int = 8, ffn_ratio: float = 4.0, max_len: int = 110, dist: int = 30, conv_kernel: int = 7,
                 pool_size: int = 3, ecce: str = "local+global", dropout: float = 0.0, backend: str = "auto",
                 mlp_ratio: float = 1.0, causal: bool = False, cross_ecce: bool = False,
                 early_fusion: str = "off", recurrent: bool = False, presence: bool = False):
        super().__init__()
        input_dims = tuple(int(d) for d in input_dims)
        if len(input_dims) != 3 or min(input_dims) < 1:
            raise ValueError(f"input_dims must be three positive ints (text, audio, visual), got {input_dims}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = regression), got {num_classes}")
        check_int("num_layers", num_layers, 1)
        check_int("max_len", max_len, 1)
        check_choice("mixer", mixer, MIXERS)
        self.input_dims, self.num_classes, self.num_layers = input_dims, num_classes, num_layers
        self.mixer, self.dim, self.max_len, self.causal = mixer, dim, max_len, bool(causal)
        # early_fusion (an option, not the paper's): the text stream's projection ("text") or every
        # stream's ("all") reads the three modalities side by side, so the utterance's modalities
        # meet at the input instead of only through the cross-attentions
        self.early_fusion = early_fusion_mode(early_fusion)
        self.fused_streams = {"off": 0, "text": 1, "all": 3}[self.early_fusion]
        # presence (an option, not the paper's): every projection also reads the utterance's three
        # presence flags, so a zero feature that is missing can be told from one that is small
        self.presence = bool(presence)
        in_dims = tuple((sum(input_dims) if i < self.fused_streams else d) + 3 * self.presence
                        for i, d in enumerate(input_dims))
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in in_dims)
        # recurrent (an option, not the paper's): a residual GRU over each stream's utterances, so
        # order reaches ECCE and the encoder (nothing in the paper's scores says where an utterance is)
        self.recurrence = (nn.ModuleList(Recurrence(dim, causal) for _ in input_dims) if recurrent else None)
        self.ecce = nn.ModuleList(ECCE(dim, heads, conv_kernel, dist, ecce, backend, causal) for _ in input_dims)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, mixer, ffn_ratio, max_len, dist, pool_size, mlp_ratio, dropout, backend, causal,
                         cross_ecce)
            for _ in range(num_layers))
        self.classifier = nn.Linear(dim, num_classes)

    @property
    def regression(self) -> bool:
        return self.num_classes == 1

    def set_backend(self, backend: str) -> ITEACHModel:
        """Switch every fused operator to ``backend`` ("auto", "reference", "triton", "cpp")."""
        return set_backend(self, backend)

    def check_inputs(self, inputs, lengths, present) -> Padded:
        """Validate ``(text, audio, visual)``, ``lengths`` and ``present`` once; returns the
        :class:`~iteach_fast.nn.modules.Padded` every module then trusts. Shapes and dtypes are
        read on the host; the lengths' values without a synchronisation (a CPU tensor on the
        host, a device tensor by a device-side assert)."""
        for name, x in zip(MODALITIES, inputs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor (B, L, d), got {type(x).__name__}")
            if not x.is_floating_point():
                raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
            if x.dim() != 3:
                raise ValueError(f"{name} must have shape (B, L, d), got {tuple(x.shape)}")
        B, L = inputs[0].shape[:2]
        for name, x, d in zip(MODALITIES, inputs, self.input_dims):
            if x.shape[:2] != (B, L):
                raise ValueError(f"{name} has (B, L) = {tuple(x.shape[:2])} but text has {(B, L)}")
            if x.shape[2] != d:
                raise ValueError(f"{name} has feature dim {x.shape[2]}, but the model was built with "
                                 f"input_dims {self.input_dims} (expected {d})")
            if x.device != inputs[0].device:
                raise ValueError(f"{name} is on {x.device} but text is on {inputs[0].device}")
        if self.mixer == "nas" and L > self.max_len:
            raise ValueError(f"conversations of padded length L={L} exceed max_len={self.max_len} "
                             f"(the NAS MLP mixer's token dimension); build the model with max_len >= {L}")
        if present is not None:
            if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
                raise TypeError("present must be a bool tensor (B, L, 3), got "
                                f"{getattr(present, 'dtype', type(present).__name__)}")
            if tuple(present.shape) != (B, L, 3):
                raise ValueError(f"present must have shape ({B}, {L}, 3), got {tuple(present.shape)}")
        if isinstance(lengths, Padded) and tuple(lengths.valid.shape) != (B, L, 1):
            raise ValueError(f"lengths was validated for (B, L) = {tuple(lengths.valid.shape[:2])}, "
                             f"the inputs have {(B, L)}")
        return padded(lengths, B, L, inputs[0].device)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor, lengths=None,
                present: torch.Tensor | None = None) -> ModelOutput:
        """``text (B, L, d_t)``, ``audio (B, L, d_a)``, ``visual (B, L, d_v)``, ``lengths (B,)``
        -> :class:`ModelOutput`. Every output is exactly 0 at invalid positions."""
        inputs = (text, audio, visual)
        pad = self.check_inputs(inputs, lengths, present)
        valid = pad.valid
        zero = torch.zeros((), dtype=text.dtype, device=text.device)
        xs = self.stream_inputs(inputs, pad, present)
        prefixes = tuple(ecce(x, pad) for ecce, x in zip(self.ecce, xs))  # ECCE once per modality
        t, a, v = xs
        hidden = []
        for layer in self.layers:  # eq. 3-4
            t, a, v = layer(t, a, v, prefixes, pad)
            hidden.append(t)
        hidden.reverse()  # H_1 is the feature closest to the classifier
        logits = torch.where(valid, self.classifier(hidden[0]), zero)
        if self.regression:
            logits = logits.squeeze(-1)
        return ModelOutput(logits, hidden)

    def stream_inputs(self, inputs: tuple, lengths, present: torch.Tensor | None = None) -> list:
        """``X_t, X_a, X_v (B, L, D)``, what each stream's ECCE and first layer read (eq. 1-2): the
        input projections, dropout, and with ``recurrent`` the residual GRU; 0 at padding (the
        projection's bias would not be)."""
        pad = padded(lengths, *inputs[0].shape[:2], inputs[0].device)
        zero = torch.zeros((), dtype=inputs[0].dtype, device=inputs[0].device)
        xs = [torch.where(pad.valid, self.dropout(proj(torch.where(pad.valid, x, zero))), zero)
              for proj, x in zip(self.proj, self.projection_inputs(inputs, present))]
        if self.recurrence is not None:
            xs = [rnn(x, pad) for rnn, x in zip(self.recurrence, xs)]
        return xs

    def projection_inputs(self, inputs: tuple, present: torch.Tensor | None = None) -> tuple:
        """What each stream's input projection reads: ``(text, audio, visual)``, or with
        ``early_fusion`` the three concatenated for the text stream (``text``) or for every
        stream (``all``); a missing modality is already zero there. With ``presence`` each is
        followed by the utterance's three presence flags (``present`` None: all present)."""
        if self.fused_streams:
            fused = torch.cat(inputs, -1)
            inputs = (fused,) * self.fused_streams + tuple(inputs[self.fused_streams:])
        if self.presence:  # None: every modality present (the teacher's complete data)
            like = inputs[0]
            flags = like.new_ones(*like.shape[:-1], 3) if present is None else present.to(like.dtype)
            inputs = tuple(torch.cat([x, flags], -1) for x in inputs)
        return tuple(inputs)

    def stream(self, batch_size: int = 1) -> StreamingSession:
        """A :class:`~iteach_fast.nn.streaming.StreamingSession` on this (causal) model: push one
        utterance per conversation at a time, get its prediction at once."""
        return StreamingSession(self, batch_size)


class ITEACHNet(nn.Module):
    """The (Inverted) Teacher-Student framework (§3.2) with its joint loss (§3.5).

    ``framework``:
      - ``"its"`` (the paper's): teacher ``teacher_layers`` (3) x TF on complete data,
        student ``student_layers`` (4) x NAS on incomplete data — the student is the bigger one.
      - ``"ts"`` (conventional distillation): the roles' architectures swapped — teacher 4 x NAS,
        student 3 x TF.
      - ``"pre"``: a single model that is both teacher and student (``self.teacher is
        self.student``): 3 x TF, the paper's "PRE | TF", or 4 x NAS with ``student_mixer="nas"``.
    ``teacher_layers`` / ``student_layers`` / ``teacher_mixer`` / ``student_mixer`` left as
    None take the framework's defaults above; given, they override them (e.g. the ablation
    ``student_mixer="tf"``). Every keyword is a :class:`~iteach_fast.nn.config.ModelConfig` field
    (the net is built from one: :meth:`from_config`), and the rest go to both models
    (``causal=True``: both are causal).
    """

    def __init__(self, input_dims, num_classes: int, framework: str = "its", teacher_layers: int | None = None,
                 student_layers: int | None = None, teacher_mixer: str | None = None,
                 student_mixer: str | None = None, **model_kwargs):
        super().__init__()
        unknown = set(model_kwargs) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise TypeError(f"ITEACHNet got unknown keyword arguments {sorted(unknown)}")
        #: the hyper-parameters this net was built from (checkpoints store them)
        self.config = ModelConfig(framework=framework, teacher_layers=teacher_layers, student_layers=student_layers,
                                  teacher_mixer=teacher_mixer, student_mixer=student_mixer,
                                  **model_kwargs).validate()
        (t_layers, t_mixer), (s_layers, s_mixer) = roles(self.config)
        shared = self.config.model_kwargs()
        self.framework = framework
        self.student = ITEACHModel(input_dims, num_classes, s_layers, s_mixer, **shared)
        if framework != "pre":
            self.teacher = ITEACHModel(input_dims, num_classes, t_layers, t_mixer, **shared)

    @classmethod
    def from_config(cls, config: ModelConfig, input_dims, num_classes: int) -> ITEACHNet:
        """The net ``config`` describes, for inputs of ``input_dims`` (text, audio, visual) and
        ``num_classes`` classes (1: a regressor)."""
        return cls(input_dims, num_classes, **dataclasses.asdict(config))

    @property
    def teacher(self) -> ITEACHModel:
        # "pre" registers one model only (so state_dict holds it once); it is also the teacher
        return self._modules["teacher"] if "teacher" in self._modules else self._modules["student"]

    @property
    def regression(self) -> bool:
        return self.student.regression

    @property
    def causal(self) -> bool:
        return self.student.causal

    def set_backend(self, backend: str) -> ITEACHNet:
        return set_backend(self, backend)

    def forward(self, complete, incomplete, lengths=None, present: torch.Tensor | None = None):
        """``complete`` / ``incomplete``: ``(text, audio, visual)`` tuples; the teacher sees the
        complete data, the student the incomplete one (missing modalities zeroed).
        Returns ``(teacher_out, student_out)``, two :class:`ModelOutput`s. The lengths are
        checked once for both."""
        for name, inp in (("complete", complete), ("incomplete", incomplete)):
            if not isinstance(inp, (tuple, list)) or len(inp) != 3:
                raise TypeError(f"{name} must be a (text, audio, visual) tuple of tensors")
        pad = self.teacher.check_inputs(complete, lengths, None)
        return self.teacher(*complete, pad, None), self.student(*incomplete, pad, present)

    @torch.no_grad()
    def predict(self, incomplete, lengths=None, present: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation: the student's logits ``(B, L, C)`` (``(B, L)`` scores for a regressor)
        on incomplete input, without gradients; 0 at invalid rows. Call ``eval()`` first."""
        return self.student(*incomplete, lengths, present).logits

    def stream(self, batch_size: int = 1, model: str = "student") -> StreamingSession:
        """A :class:`~iteach_fast.nn.streaming.StreamingSession` on the student (``model="teacher"``:
        the teacher, which expects complete inputs) of a causal net."""
        check_choice("model", model, ("student", "teacher"))
        return StreamingSession(getattr(self, model), batch_size)

    # ------------------------------------------------------------------ losses (eq. 12-15)

    def _targets(self, labels, lengths, present, shape=None):
        """``(labels, counted, lost)`` after checking: ``counted (B, L)`` the utterances L_emo
        averages over (valid and, for classification, not ``IGNORE_INDEX``), ``lost (B, L)`` the
        valid utterances whose student input lost a modality (L_rec's targets)."""
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or (shape is not None and labels.shape != shape):
            want = f"({shape[0]}, {shape[1]})" if shape is not None else "(B, L)"
            raise ValueError(f"labels must be a tensor of shape {want}, got "
                             f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if not self.regression and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
            raise TypeError(f"labels must be integer class ids for a classifier (or {IGNORE_INDEX}: unlabelled), "
                            f"got dtype {labels.dtype}; a float label such as 2.7 is not truncated")
        B, L = labels.shape
        if not isinstance(present, torch.Tensor) or present.dtype != torch.bool or tuple(present.shape) != (B, L, 3):
            raise ValueError(f"present must be a bool tensor of shape ({B}, {L}, 3): it says which utterances "
                             f"lost a modality (the distillation targets of L_rec)")
        valid = padded(lengths, B, L, labels.device).valid[..., 0]
        counted = valid if self.regression else valid & (labels != IGNORE_INDEX)
        return labels, counted, valid & ~present.all(dim=-1)

    def loss_counts(self, labels: torch.Tensor, lengths, present: torch.Tensor) -> dict:
        """What :meth:`loss` averages over, as int64 tensors: ``"valid"``, the labelled valid
        utterances (L_emo's denominator), and ``"lost"``, the valid utterances whose student
        input lost a modality (L_rec's, times D). For data-parallel training, sum these over
        the ranks (one all-reduce) and pass them as ``counts=``."""
        _, counted, lost = self._targets(labels, lengths, present)
        return {"valid": counted.sum(), "lost": lost.sum()}

    def _emotion_loss(self, logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, n) -> torch.Tensor:
        """Cross-entropy (eq. 12) or squared error (eq. 13) summed over the ``counted`` utterances,
        divided by ``n``; masked reductions only (no boolean indexing: nothing reads back to the host)."""
        zero = torch.zeros((), dtype=torch.float32, device=logits.device)
        if self.regression:
            # the padding's labels may be anything (even NaN): replaced before the difference,
            # so that no NaN reaches a gradient through 0 * NaN
            target = torch.where(counted, labels.float(), zero)
            err = (logits.float() - target) ** 2
        else:
            C = logits.shape[-1]
            target = torch.where(counted, labels.long(), 0)
            # on the device, no synchronisation: a CPU run raises here, a CUDA run at its next sync
            torch._assert_async(((target >= 0) & (target < C)).all(),
                                f"labels must be class ids in [0, {C}) at valid positions (or {IGNORE_INDEX}: "
                                f"unlabelled)")
            err = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
            err = err.view(counted.shape)
        return torch.where(counted, err, zero).sum() / n

    def loss(self, teacher_out: ModelOutput, student_out: ModelOutput, labels: torch.Tensor, lengths,
             present: torch.Tensor, counts: dict | None = None, rec_weight: float = 1.0) -> dict:
        """The joint objective (eq. 12-15), as a dict ``total, emo, rec, emo_teacher, emo_student``.

        ``L_emo = CE(teacher) + CE(student)`` (MSE for a regressor), each the mean over the
        valid utterances. A classifier's ``labels`` are integer class ids (a float tensor is a
        ``TypeError``: 2.7 is not silently truncated); ``IGNORE_INDEX`` (-100) marks a valid
        utterance as unlabelled, left out of both the sum and the count; any other id outside
        ``[0, C)`` at a valid position fails (a device-side assert). The padding's labels are
        never read.
        ``L_rec = Σ_l w_l · mse(H'_l, H_l)`` with ``w = (0.5, 0.1, 0.05)`` over the last three
        hidden features, on the valid utterances whose student input lost at least one
        modality (``present`` not all true), averaged over those utterances and ``D``; the
        teacher's features are detached (eq. 14: no gradient to the teacher). 0 when no
        utterance lost anything. ``total = emo + rec`` (eq. 15); ``rec_weight`` (not the paper's)
        scales the second term: ``total = emo + rec_weight * rec`` (``rec`` is reported unscaled).

        ``counts``: the denominators ``{"valid": N, "lost": M}`` (see :meth:`loss_counts`)
        when they are not this batch's own — under data parallelism, the global batch's, so
        that each rank's loss is its share of the global mean (DDP then averages the gradients
        over ranks: scale by the world size, or sum, to get the single-process gradient).
        Everything is computed with masked reductions: no host synchronisation.
        """
        B, L = student_out.hidden[0].shape[:2]
        labels, counted, lost = self._targets(labels, lengths, present, (B, L))
        if counts is None:
            counts = {"valid": counted.sum(), "lost": lost.sum()}
        elif not isinstance(counts, dict) or not {"valid", "lost"} <= set(counts):
            raise ValueError('counts must be a dict {"valid": N, "lost": M} (see ITEACHNet.loss_counts)')
        n_valid, n_lost = (c.clamp_min(1) if isinstance(c, torch.Tensor) else max(int(c), 1)
                           for c in (counts["valid"], counts["lost"]))
        emo_t = self._emotion_loss(teacher_out.logits, labels, counted, n_valid)
        emo_s = self._emotion_loss(student_out.logits, labels, counted, n_valid)

        lost = lost[..., None]  # (B, L, 1)
        D = student_out.hidden[0].shape[-1]
        zero = torch.zeros((), dtype=torch.float32, device=lost.device)
        rec = zero
        for w, h_s, h_t in zip(REC_WEIGHTS, student_out.hidden, teacher_out.hidden):
            sq = (h_s.float() - h_t.detach().float()) ** 2
            rec = rec + w * torch.where(lost, sq, zero).sum()
        rec = rec / (n_lost * D)
        emo = emo_t + emo_s
        return {"total": emo + rec_weight * rec, "emo": emo, "rec": rec, "emo_teacher": emo_t, "emo_student": emo_s}

    # ------------------------------------------------------------------ optimiser

    def parameter_groups(self, lr: float = 5e-4, router_lr: float = 5e-3, weight_decay: float = 0.01) -> list:
        """AdamW parameter groups (§4.2): router parameters (names containing ``"router"``) at
        ``router_lr``, every other parameter at ``lr``. Empty groups are left out."""
        router, rest = [], []
        for name, p in self.named_parameters():  # deduplicated: "pre" shares one model
            if p.requires_grad:
                (router if "router" in name else rest).append(p)
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
                  {"params": router, "lr": router_lr, "weight_decay": weight_decay, "name": "router"}]
        return [g for g in groups if g["params"]]

"""Every closed set of choices in the package, once, as ``Literal`` types, and the missing
rates every tier shares.

The configuration validator, the command line (``choices=``) and the model's constructors
all read these, so a new framework, mixer or backend name is added here and nowhere else.
A leaf module without torch: the command line's help reads it.
"""
from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["text", "audio", "visual"]
Framework = Literal["its", "ts", "pre"]  # Inverted Teacher-Student, conventional TS, one model
Mixer = Literal["tf", "nas"]  # attention only, or the router-weighted mixture of four mixers
EcceMode = Literal["local+global", "global", "off"]
# not the paper's: which streams' input projections read all three modalities side by side
EarlyFusion = Literal["off", "text", "all"]
Strategy = Literal["fixed", "random", "progressive"]  # the training missing-rate schedules
DatasetName = Literal["synthetic", "iemocap4", "iemocap6", "cmumosi", "cmumosei"]
SelectOn = Literal["valid", "test"]  # the split that model selection reads
Precision = Literal["fp32", "bf16", "fp16"]  # fp16 / bf16: autocast on a GPU
Backend = Literal["auto", "reference", "triton", "cpp"]
EvalModel = Literal["student", "teacher"]  # which model an evaluation reads (teacher: complete data)
Layout = Literal["gcnet"]  # export-synthetic's file layouts
Experiment = Literal["table1", "table2", "table3", "table4", "table5", "fig6", "fig78", "fig9",  # reproduce
                     "baselines"]

MODALITIES: tuple[str, ...] = get_args(Modality)
FRAMEWORKS: tuple[str, ...] = get_args(Framework)
MIXERS: tuple[str, ...] = get_args(Mixer)
ECCE_MODES: tuple[str, ...] = get_args(EcceMode)
EARLY_FUSION: tuple[str, ...] = get_args(EarlyFusion)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DATASETS: tuple[str, ...] = get_args(DatasetName)
SELECT_ON: tuple[str, ...] = get_args(SelectOn)
PRECISIONS: tuple[str, ...] = get_args(Precision)
BACKENDS: tuple[str, ...] = get_args(Backend)
EVAL_MODELS: tuple[str, ...] = get_args(EvalModel)
EXPERIMENTS: tuple[str, ...] = get_args(Experiment)
LAYOUTS: tuple[str, ...] = get_args(Layout)

#: UME's test rates (§4.3): 0.0, 0.1, ..., 0.7
EVAL_RATES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(8))
#: rates are fractions of (utterance, modality) cells; above 2/3 every utterance keeps one modality
MAX_RATE = 1.0


def check_choice(name: str, value, allowed: tuple) -> str:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming ``name``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def early_fusion_mode(value) -> str:
    """``early_fusion`` as one of :data:`EARLY_FUSION`; a bool (the option of the release before
    ``all``, when it fused into the text stream only) reads as ``text`` / ``off``, so its
    configs and checkpoints load as what they hold."""
    if isinstance(value, bool):
        return "text" if value else "off"
    return check_choice("early_fusion", value, EARLY_FUSION)


#: IEMOCAP's leave-one-session-out folds: fold k tests on Session k
IEMOCAP_FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5)

#: the formats ``predict`` writes
FORMATS: tuple[str, ...] = ("csv", "json")

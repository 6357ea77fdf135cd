"""What the paper's tables and figures need trained: the variants (their rows), the runs
(a variant at one fold and one seed) and the key that caches each run.

A run's key is a hash of its config (not of where or how fast it runs: :data:`NOT_HASHED`),
so runs shared by several experiments are planned, and trained, once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from ..choices import EXPERIMENTS, IEMOCAP_FOLDS
from ..data.masking import EVAL_RATES
from ..evaluation.protocols import ime_config
from ..presets import DEFAULT_SEEDS, QUICK, QUICK_SEEDS
from ..training.config import TrainConfig

__all__ = ["Variant", "VARIANTS", "OPTIONS", "Run", "run_key", "expand", "has_folds", "resolve_folds", "plan",
           "RESULT_VERSION", "NOT_HASHED", "DEFAULT_SEEDS", "QUICK_SEEDS", "IEMOCAP_FOLDS", "QUICK", "VARIED",
           "BASE_CHANGES"]

#: bump when what a run measures changes: every cached result is then recomputed
RESULT_VERSION = 2  # 2: each run also holds its data's baselines
#: config fields that say where or how fast a run computes, not what: left out of its key
NOT_HASHED = ("out_dir", "progress", "threads", "device", "compile", "cuda_graphs")
#: the fields an experiment sets per run (a base config's values for them are replaced)
VARIED = ("framework", "teacher_mixer", "student_mixer", "ecce", "cross_ecce", "early_fusion", "recurrent", "strategy",
          "rate", "seed", "fold")
#: every variant starts from the paper's ITEACH-Net: ITS, 3 x TF teacher, 4 x NAS student, full ECCE, random
#: rates, cross-attention without a bias, each modality projected alone, no recurrence (the options,
#: cross_ecce, early_fusion and recurrent, in their own rows)
BASE_CHANGES = dict(framework="its", teacher_mixer=None, student_mixer=None, ecce="local+global", cross_ecce=False,
                    early_fusion="off", recurrent=False, strategy="random")
#: the options' rows: not the paper's model, so not among the paper's claims
OPTIONS = ("cross_ecce", "early_fusion", "recurrent")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a paper table: ``cells`` its heading cells, ``changes`` to the base config
    (``ime_rate``: the IME run at that rate, :func:`iteach_fast.evaluation.protocols.ime_config`)."""
    label: str
    cells: tuple
    changes: tuple = ()
    ime_rate: float | None = None

    def build(self, base: TrainConfig) -> TrainConfig:
        cfg = base.replace(**{**BASE_CHANGES, **dict(self.changes)})
        return ime_config(cfg, self.ime_rate) if self.ime_rate is not None else cfg


def _v(label: str, cells: tuple, **changes) -> Variant:
    return Variant(label, cells, tuple(sorted(changes.items())))


_ITS = _v("ITS TF NAS", ("ITS", "TF", "NAS"))  # the paper's ITEACH-Net: random missing rates
_CROSS = _v("ITS TF NAS + cross-ECCE", ("ITS", "TF", "NAS, cross-ECCE"), cross_ecce=True)  # the option
_EARLY = _v("ITS TF NAS + early fusion", ("ITS", "TF", "NAS, early fusion"), early_fusion="text")  # the option
_RECURRENT = _v("ITS TF NAS + recurrent", ("ITS", "TF", "NAS, recurrent"), recurrent=True)  # the option
_TABLE4 = (dataclasses.replace(_ITS, label="ITEACH-Net", cells=("ITEACH-Net (random)",)),
           dataclasses.replace(_CROSS, label="ITEACH-Net + cross-ECCE", cells=("ITEACH-Net + cross-ECCE (random)",)),
           dataclasses.replace(_EARLY, label="ITEACH-Net + early fusion",
                               cells=("ITEACH-Net + early fusion (random)",)),
           dataclasses.replace(_RECURRENT, label="ITEACH-Net + recurrent", cells=("ITEACH-Net + recurrent (random)",)))
VARIANTS = {
    "table1": (_v("off", ("✗", "✗"), ecce="off"), _v("global", ("✗", "✓"), ecce="global"),
               dataclasses.replace(_ITS, label="local+global", cells=("✓", "✓"))),
    "table2": (_v("PRE TF", ("PRE", "TF", "–"), framework="pre", student_mixer="tf"),
               _v("ITS TF TF", ("ITS", "TF", "TF"), student_mixer="tf"), _ITS,
               _v("TS NAS TF", ("TS", "NAS", "TF"), framework="ts"), _CROSS, _EARLY, _RECURRENT),
    "table3": (),
    "table4": _TABLE4,
    "table5": (_v("ITEACH-Net", ("ITEACH-Net (progressive)",), strategy="progressive"),),
    "fig6": (dataclasses.replace(_ITS, label="NAS student", cells=("NAS (4 layers)",)),
             _v("TF student", ("TF (4 layers)",), student_mixer="tf")),
    "fig78": tuple(Variant(f"fixed {r:.1f}", (f"{r:.1f}",), ime_rate=r) for r in EVAL_RATES),
    "fig9": (dataclasses.replace(_ITS, label="ITEACH-Net", cells=("ITEACH-Net",)),),
    # the baselines' own table: read from the runs of Table 4 (every run holds its data's baselines)
    "baselines": _TABLE4,
}


@dataclasses.dataclass
class Run:
    key: str
    config: TrainConfig  # out_dir: the run's folder
    fold: int | None
    seed: int

    @property
    def folder(self) -> str:
        return self.config.out_dir

    @property
    def result_path(self) -> str:
        return os.path.join(self.folder, "result.json")


def run_key(cfg: TrainConfig) -> str:
    """A hash of what ``cfg`` computes (every field but :data:`NOT_HASHED`) and :data:`RESULT_VERSION`."""
    what = {k: v for k, v in cfg.to_dict().items() if k not in NOT_HASHED}
    text = json.dumps({"result_version": RESULT_VERSION, "config": what}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(what) -> tuple[str, ...]:
    """``what`` (names from :data:`EXPERIMENTS`, or ``all``) in the canonical order, each once."""
    names = [what] if isinstance(what, str) else list(what)
    unknown = [n for n in names if n != "all" and n not in EXPERIMENTS]
    if unknown or not names:
        raise ValueError(f"reproduce: unknown experiment(s) {unknown}; expected one or more of "
                         f"{', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS if "all" in names else tuple(e for e in EXPERIMENTS if e in names)


def has_folds(dataset: str) -> bool:
    return dataset.startswith("iemocap")


def resolve_folds(dataset: str, folds) -> tuple:
    """IEMOCAP: the given folds (default all five sessions); elsewhere ``(None,)``: one split."""
    if folds is not None and not len(folds):
        raise ValueError("--folds: expected one or more IEMOCAP sessions among 1..5, got none")
    if not has_folds(dataset):
        if folds:
            raise ValueError(f"--folds: {dataset} has one train/test split (folds are IEMOCAP's "
                             "leave-one-session-out); repeat runs with --seeds instead")
        return (None,)
    folds = tuple(folds or IEMOCAP_FOLDS)
    bad = [f for f in folds if f not in IEMOCAP_FOLDS]
    if bad or len(set(folds)) != len(folds):
        raise ValueError(f"--folds must be distinct IEMOCAP sessions among 1..5, got {list(folds)}")
    return folds


def plan(experiments, base: TrainConfig, seeds, folds, out_dir: str) -> tuple[dict, dict]:
    """``(runs, groups)``: ``{key: Run}`` (each distinct config once) and
    ``{experiment: {variant label: [keys]}}``; Fig. 9 reads the first fold and seed only."""
    runs, groups = {}, {}
    for exp in experiments:
        groups[exp] = {}
        for variant in VARIANTS[exp]:
            cells = [(f, s) for f in folds for s in seeds]
            keys = []
            for fold, seed in cells[:1] if exp == "fig9" else cells:
                cfg = variant.build(base).replace(seed=seed, **({"fold": fold} if fold is not None else {}))
                key = run_key(cfg)
                runs.setdefault(key, Run(key, cfg.replace(out_dir=os.path.join(out_dir, "runs", key)), fold, seed))
                keys.append(key)
            groups[exp][variant.label] = keys
    return runs, groups

"""Which conversations a run reads: the synthetic set or a GCNet release, by name or by config."""
from __future__ import annotations

from ..choices import MODALITIES
from .dataset import DataSplits
from .gcnet import load_gcnet
from .synthetic import SyntheticSpec, make_synthetic

__all__ = ["load_dataset", "splits_for", "synthetic_spec"]


def load_dataset(name: str = "synthetic", data_root: str | None = None, fold: int = 1, seed: int = 0,
                 select_on: str = "valid", synthetic: SyntheticSpec | None = None, **gcnet_kwargs) -> DataSplits:
    """``synthetic`` (from ``synthetic`` spec, default seed ``seed``) or a GCNet dataset under ``data_root``."""
    if name == "synthetic":
        splits = make_synthetic(synthetic or SyntheticSpec(seed=seed))
        if select_on == "test":
            splits.valid = splits.test
            splits.notes.append("model selection on the test split (--select-on test)")
        return splits
    return load_gcnet(name, data_root, fold=fold, seed=seed, select_on=select_on, **gcnet_kwargs)


def synthetic_spec(cfg) -> SyntheticSpec:
    """The synthetic set a :class:`~iteach_fast.training.config.TrainConfig` names (its ``syn_*`` fields and seed)."""
    return SyntheticSpec(num_conversations=cfg.syn_conversations, min_len=cfg.syn_min_len,
                         max_len=cfg.syn_max_len, num_classes=cfg.syn_classes, dims=tuple(cfg.syn_dims),
                         seed=cfg.seed)


def splits_for(cfg) -> DataSplits:
    """The splits a :class:`~iteach_fast.training.config.TrainConfig` names (synthetic or GCNet)."""
    spec = synthetic_spec(cfg)
    roots = {m: getattr(cfg, f"{m}_root") for m in MODALITIES if getattr(cfg, f"{m}_root")}
    kwargs = {} if cfg.dataset == "synthetic" else {"label_file": cfg.label_file, "feature_roots": roots}
    return load_dataset(cfg.dataset, data_root=cfg.data_root, fold=cfg.fold, seed=cfg.seed,
                        select_on=cfg.select_on, synthetic=spec, **kwargs)

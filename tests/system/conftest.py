"""What the system tests share: the tiny run — 8 synthetic conversations of 3-8 utterances, a
one-layer model of width 8, one epoch, one thread — as config keys, as a validated config
and as command-line flags."""
import pytest

from iteach_fast.training.config import TrainConfig

TINY = dict(syn_conversations=8, syn_min_len=3, syn_max_len=8, syn_dims=(6, 4, 5), dim=8, heads=2, max_len=8,
            dist=4, conv_kernel=3, teacher_layers=1, student_layers=1, epochs=1, batch_size=4,
            select_rates=(0.0, 0.5), progress=False, threads=1)


@pytest.fixture(scope="session")
def tiny_keys() -> dict:
    """The tiny run's config keys (``{**tiny_keys, ...}`` to change some)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny():
    """``tiny(folder, **changes)``: the tiny run's validated config, writing under ``folder/run``."""
    def make(folder, **changes) -> TrainConfig:
        return TrainConfig.from_dict({**TINY, "out_dir": str(folder / "run"), **changes}).validate()
    return make


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """The tiny run as ``iteach-fast train`` flags."""
    flags = []
    for key, value in TINY.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags

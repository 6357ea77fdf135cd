"""The model tier: ITEACH-Net's modules (``nn.Module``), the model, its streaming session and its config.

Owns: the drop-in modules (:mod:`.modules`: ECCE, the token mixers, the encoder block, the
encoder layer), the teacher / student and the joint loss (:mod:`.model`), the causal model
pushed one utterance at a time (:mod:`.streaming`) and :class:`~.config.ModelConfig`.
May import: :mod:`iteach_fast.ops` (the fused operators, called through the registry) and
:mod:`iteach_fast.choices`; nothing of the application tier (data, training, evaluation).

    >>> from iteach_fast.nn import ITEACHNet
    >>> net = ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)
"""
import importlib

from .config import ModelConfig

#: where each public name lives, loaded on first use: importing the config (the command line's
#: help reads it) does not import torch
_WHERE = {**dict.fromkeys(("ITEACHNet", "ITEACHModel", "ModelOutput", "IGNORE_INDEX"), "model"),
          "StreamingSession": "streaming",
          **dict.fromkeys(("ECCE", "ECCEAttention", "MLPTokenMixer", "AvgPoolTokenMixer", "MaxPoolTokenMixer",
                           "RoutedTokenMixer", "ITEACHEncoder", "CrossAttention", "EncoderLayer", "Padded", "padded",
                           "set_backend"), "modules")}

__all__ = ["ModelConfig", *_WHERE]


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

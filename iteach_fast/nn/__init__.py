"""The model tier: ITEACH-Net's modules (``nn.Module``), the model, its streaming session and its config.

Owns: the drop-in modules (:mod:`.modules`: ECCE, the token mixers, the encoder block, the
encoder layer), the teacher / student and the joint loss (:mod:`.model`), the causal model
pushed one utterance at a time (:mod:`.streaming`) and :class:`~.config.ModelConfig`.
May import: :mod:`iteach_fast.ops` (the fused operators, called through the registry) and
:mod:`iteach_fast.choices`; nothing of the application tier (data, training, evaluation).

    >>> from iteach_fast.nn import ITEACHNet
    >>> net = ITEACHNet(input_dims=(1024, 512, 1024), num_classes=4)
"""
from .config import ModelConfig
from .model import IGNORE_INDEX, ITEACHModel, ITEACHNet, ModelOutput
from .modules import (
    ECCE,
    AvgPoolTokenMixer,
    CrossAttention,
    ECCEAttention,
    EncoderLayer,
    ITEACHEncoder,
    MaxPoolTokenMixer,
    MLPTokenMixer,
    Padded,
    RoutedTokenMixer,
    padded,
    set_backend,
)
from .streaming import StreamingSession

__all__ = ["ITEACHNet", "ITEACHModel", "ModelOutput", "IGNORE_INDEX", "ModelConfig", "StreamingSession", "ECCE",
           "ECCEAttention", "MLPTokenMixer", "AvgPoolTokenMixer", "MaxPoolTokenMixer", "RoutedTokenMixer",
           "ITEACHEncoder", "CrossAttention", "EncoderLayer", "Padded", "padded", "set_backend"]

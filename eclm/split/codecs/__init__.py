"""Codecs for split-learning smashed activations (MS, top-k, randomised top-k, quantisation)."""

from eclm.split.codecs.base import EncodedActivation, SmashedCodec, straight_through
from eclm.split.codecs.identity import IdentityCodec
from eclm.split.codecs.mask_encoded import MaskEncodedSparsification
from eclm.split.codecs.randomized_topk import RandomizedTopKCodec
from eclm.split.codecs.topk import TopKCodec
from eclm.split.codecs.uniform_quantization import UniformQuantizationCodec

__all__ = [
    "EncodedActivation",
    "IdentityCodec",
    "MaskEncodedSparsification",
    "RandomizedTopKCodec",
    "SmashedCodec",
    "TopKCodec",
    "UniformQuantizationCodec",
    "straight_through",
]

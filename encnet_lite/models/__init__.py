"""Segmentation models: EncNet, the FCN baseline, their backbones, heads and builders.

- :mod:`.backbones`: dilated torchvision ResNet-50/101 (output stride 8; plain 7x7 stem or
  the deep 3x3 stems of the published models) and a tiny CPU backbone, both returning
  ``{"c2", "c3", "c4"}``;
- :mod:`.heads`: :class:`FCNHead`, :class:`EncHead`;
- :mod:`.segmentation`: :class:`EncNet`, :class:`FCN` and the builders
  (``encnet_resnet50``, ``encnet_resnet50s``, ``fcn_tiny``, ...; ``weights="NAME"`` gives a
  published model of :mod:`encnet_lite.weights`);
- :mod:`.analysis`: receptive fields, shape traces, parameter counts.
"""

from .analysis import conv_macs, count_parameters, input_support, receptive_field, trace_shapes
from .backbones import STEMS, ResNetBackbone, TinyBackbone, deep_stem, load_resnet_state_dict
from .heads import EncHead, FCNHead, LateralFusion
from .segmentation import (
    FCN,
    EncNet,
    SegmentationModel,
    align_corners_disagreement,
    encnet_resnet50,
    encnet_resnet50s,
    encnet_resnet101,
    encnet_resnet101s,
    encnet_tiny,
    fcn_resnet50,
    fcn_resnet50s,
    fcn_resnet101,
    fcn_resnet101s,
    fcn_tiny,
    upsample,
)

__all__ = [
    "FCN", "EncHead", "EncNet", "FCNHead", "LateralFusion", "ResNetBackbone", "STEMS",
    "align_corners_disagreement", "deep_stem",
    "SegmentationModel", "TinyBackbone", "conv_macs", "count_parameters", "encnet_resnet50",
    "encnet_resnet50s", "encnet_resnet101", "encnet_resnet101s", "encnet_tiny", "fcn_resnet50",
    "fcn_resnet50s", "fcn_resnet101", "fcn_resnet101s", "fcn_tiny",
    "input_support", "load_resnet_state_dict", "receptive_field", "trace_shapes", "upsample",
]

"""Segmentation models: EncNet, the FCN baseline, their backbones, heads and builders.

- :mod:`.backbones`: dilated torchvision ResNet-50/101 (output stride 8) and a tiny CPU
  backbone, both returning ``{"c2", "c3", "c4"}``;
- :mod:`.heads`: :class:`FCNHead`, :class:`EncHead`;
- :mod:`.segmentation`: :class:`EncNet`, :class:`FCN` and the builders
  (``encnet_resnet50``, ``fcn_tiny``, ...);
- :mod:`.analysis`: receptive fields, shape traces, parameter counts.
"""

from .analysis import conv_macs, count_parameters, input_support, receptive_field, trace_shapes
from .backbones import ResNetBackbone, TinyBackbone, load_resnet_state_dict
from .heads import EncHead, FCNHead, LateralFusion
from .segmentation import (
    FCN,
    EncNet,
    SegmentationModel,
    align_corners_disagreement,
    encnet_resnet50,
    encnet_resnet101,
    encnet_tiny,
    fcn_resnet50,
    fcn_resnet101,
    fcn_tiny,
    upsample,
)

__all__ = [
    "FCN", "EncHead", "EncNet", "FCNHead", "LateralFusion", "ResNetBackbone",
    "align_corners_disagreement",
    "SegmentationModel", "TinyBackbone", "conv_macs", "count_parameters", "encnet_resnet50",
    "encnet_resnet101", "encnet_tiny", "fcn_resnet50", "fcn_resnet101", "fcn_tiny",
    "input_support", "load_resnet_state_dict", "receptive_field", "trace_shapes", "upsample",
]

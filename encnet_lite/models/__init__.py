"""Segmentation models: EncNet, the FCN baseline, their backbones, heads and builders.

- :mod:`.backbones`: dilated torchvision ResNet-50/101 (output stride 8; plain 7x7 stem or
  the deep 3x3 stems of the published models) and a tiny CPU backbone, both returning
  ``{"c2", "c3", "c4"}``;
- :mod:`.heads`: :class:`FCNHead`, :class:`EncHead`;
- :mod:`.segmentation`: :class:`EncNet`, :class:`FCN` and the builders
  (``encnet_resnet50``, ``encnet_resnet50s``, ``fcn_tiny``, ...: one keyword-only signature,
  ``weights="NAME"`` gives a published model of :mod:`encnet_lite.weights`,
  ``weights_backbone`` the backbone's ImageNet weights), :func:`param_groups`, and
  :func:`load_weights` / :func:`build_published`, a published model by its catalogue name (the
  catalogue hands over state dicts; the models are made and loaded here);
- :mod:`.analysis`: receptive fields, shape traces and their table rows, dilation rates per
  output stride, parameter counts.
"""

from .analysis import (
    conv_macs,
    count_parameters,
    dilations,
    input_support,
    output_stride_rows,
    receptive_field,
    shape_rows,
    trace_shapes,
)
from .backbones import STEMS, ResNetBackbone, TinyBackbone, deep_stem, load_resnet_state_dict
from .heads import EncHead, FCNHead, LateralFusion
from .segmentation import (
    ARCHITECTURES,
    FCN,
    EncNet,
    SegmentationModel,
    align_corners_disagreement,
    build_published,
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
    load_weights,
    param_groups,
    upsample,
)

__all__ = [
    "ARCHITECTURES", "FCN", "EncHead", "EncNet", "FCNHead", "LateralFusion", "ResNetBackbone",
    "STEMS", "align_corners_disagreement", "build_published", "deep_stem",
    "SegmentationModel", "TinyBackbone", "conv_macs", "count_parameters", "dilations",
    "encnet_resnet50",
    "encnet_resnet50s", "encnet_resnet101", "encnet_resnet101s", "encnet_tiny", "fcn_resnet50",
    "fcn_resnet50s", "fcn_resnet101", "fcn_resnet101s", "fcn_tiny",
    "input_support", "load_resnet_state_dict", "load_weights", "output_stride_rows",
    "param_groups", "receptive_field", "shape_rows", "trace_shapes", "upsample",
]

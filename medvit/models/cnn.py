"""CNN backbones through timm, one input channel by default.

timm builds the network (`in_chans` sets the stem) and, with pretrained=True, fetches ImageNet
weights and sums the RGB stem filters for one channel. `gradcam_layer` is read from timm's
`feature_info`: its last entry is the last convolutional stage ("layer4" for ResNets,
"stages.3" for ConvNeXt, "blocks.6" for EfficientNet-B0), so no name is hard-coded here.
CNNs are size-agnostic (global pooling); `img_size` is accepted for a uniform signature.
"""
from __future__ import annotations

from torch import nn

from medvit._compat import import_timm
from medvit.models.registry import register_backbone
from medvit.models.vit import create_pretrained


def build_timm_cnn(timm_name: str, *, num_classes: int, in_chans: int, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0, pretrained: bool = False) -> nn.Module:
    """timm.create_model(timm_name) with `gradcam_layer` set from its feature_info."""
    args = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate:
        args["drop_path_rate"] = drop_path_rate
    if pretrained:
        model = create_pretrained(timm_name, **args)
    else:
        model = import_timm().create_model(timm_name, pretrained=False, **args)
    model.gradcam_layer = model.feature_info[-1]["module"]
    return model


def _entry(timm_name: str, doc: str) -> None:
    """Register `timm_name` as a medvit backbone (one builder, one line per model below)."""

    def entry(num_classes: int, in_chans: int, img_size: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.0, pretrained: bool = False) -> nn.Module:
        return build_timm_cnn(timm_name, num_classes=num_classes, in_chans=in_chans,
                              drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                              pretrained=pretrained)

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__doc__ = doc
    register_backbone(entry, kind="cnn")


_entry("resnet10t", "ResNet-10-T (timm: tiered 3-conv stem), 5 M parameters; quick on a CPU.")
_entry("resnet18", "ResNet-18 (He et al. 2015), 11 M parameters.")
_entry("resnet34", "ResNet-34, 21 M parameters.")
_entry("resnet50", "ResNet-50, bottleneck blocks, 24 M parameters.")
_entry("efficientnet_b0", "EfficientNet-B0 (Tan & Le 2019), 4 M parameters.")
_entry("efficientnet_b3", "EfficientNet-B3, 11 M parameters.")
_entry("convnext_nano", "ConvNeXt-Nano (timm), 15 M parameters.")
_entry("convnext_tiny", "ConvNeXt-T (Liu et al. 2022), 28 M parameters.")


@register_backbone(kind="cnn")
def cnn_test(num_classes: int, in_chans: int, img_size: int, width: int = 8) -> nn.Module:
    """Tiny CNN for fast tests only: three conv-BN-ReLU stages, global average pool, linear."""
    model = nn.Sequential()
    chans = [in_chans, width, 2 * width, 4 * width]
    for i in range(3):
        model.add_module(f"stage{i + 1}", nn.Sequential(
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]), nn.ReLU()))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(chans[-1], num_classes))
    model.gradcam_layer = "stage3"
    return model

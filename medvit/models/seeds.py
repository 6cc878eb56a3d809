"""The models of the seed studies, written to their documents (cited below by number):

- 000: "Comparative analysis of structure and performance of Convolutional Neural Networks and
  Vision Transformers" (basic_cnn, basic_vit);
- 002: "Exploration of Vision Transformers and CNNs: In-Depth Structural and Cost Analysis, Model
  Performance, and Applications in Biomedical Images" (baseline_cnn);
- 003: "Vision Transformers", slides comparing a ViT with a VGG-like CNN on CIFAR-10 (vit_cifar,
  vgg_cifar).

The documents train at 32×32. The CNNs' flattening heads were sized for that: here an
`AdaptiveAvgPool2d(4)` sits before the flatten. At 32×32 it is the identity (the last feature
map is already 4×4), so the networks and their parameter counts are exactly the documents';
at other sizes the head keeps its shape instead of growing with the image (VGG at 512 would
otherwise need a 1 G-parameter first linear layer).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from medvit.models.registry import register_backbone
from medvit.models.vit import build_vit

_HEAD_GRID = 4  # the documents' last feature map at 32×32: 32 / 2³


class ConvNet(nn.Module):
    """Three [conv k5 s1 p2 → ReLU → pool 2×2 s2] stages, flatten, MLP head."""

    def __init__(self, in_chans: int, channels: Sequence[int], hidden: Sequence[int],
                 num_classes: int, pool: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_chans, *channels), channels):
            layers += [nn.Conv2d(c_in, c_out, 5, stride=1, padding=2), nn.ReLU(), pool(2, 2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(_HEAD_GRID)
        dims = (channels[-1] * _HEAD_GRID**2, *hidden)
        head: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims, dims[1:]):
            head += [nn.Linear(d_in, d_out), nn.ReLU()]
        head.append(nn.Linear(dims[-1], num_classes))
        self.head = nn.Sequential(*head)
        self.gradcam_layer = f"features.{len(layers) - 2}"  # the last conv's ReLU, before pooling

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = self.features(x)  # (B, C3, H/8, W/8)
        x = self.pool(x)  # (B, C3, 4, 4)
        return self.head(x)  # (B, num_classes)


class VGGCifar(nn.Module):
    """003's CNN, layer for layer: the module printout under "CNN - Training" (`network`,
    indices 0-23, so a state dict saved from the slides' code loads as is).

    The printout is unambiguous: stages (conv 32, conv 64), (conv 128, conv 128),
    (conv 256, conv 256), each conv 3×3 p1 + ReLU, then MaxPool 2 and BatchNorm; Linear
    4096→1024→512→10. At 3×32×32 and 10 classes that is 5,852,234 parameters: the slides'
    "5.9 M" and "23.409 MB" (×4 bytes) exactly.
    """

    _FLATTEN = 18  # index of Flatten in the printout; the adaptive pool runs just before it

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for c_mid, c_out in ((32, 64), (128, 128), (256, 256)):
            layers += [nn.Conv2d(c_in, c_mid, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(c_mid, c_out, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2, 2), nn.BatchNorm2d(c_out)]
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(256 * _HEAD_GRID**2, 1024), nn.ReLU(),
                   nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, num_classes)]
        self.network = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(_HEAD_GRID)
        self.gradcam_layer = "network.15"  # the last conv's ReLU, before the last pooling

    def get_classifier(self) -> nn.Module:
        return self.network[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        for i, layer in enumerate(self.network):
            if i == self._FLATTEN:
                x = self.pool(x)  # (B, 256, 4, 4)
            x = layer(x)
        return x  # (B, num_classes)


@register_backbone(kind="cnn")
def basic_cnn(num_classes: int, in_chans: int, img_size: int, width: int = 10) -> nn.Module:
    """000, Section 3.1 "Architectures": "three convolution layers (kernel=5, stride=1,
    padding=2), each followed by a ReLU activation function and an average pooling layer
    (kernel=2, stride=2). The free parameter is ... C_1 with C_2 = 2C_1 and C_3 = 2C_2 ...
    a two-layers fully connected MLP head with fixed hidden dimension (h_dim = C_3)".
    `width` is C_1 (Figure 12 uses 10). The head's activation is not named; ReLU as in the convs."""
    return ConvNet(in_chans, (width, 2 * width, 4 * width), (4 * width,), num_classes,
                   nn.AvgPool2d)


@register_backbone(kind="vit")
def basic_vit(num_classes: int, in_chans: int, img_size: int, width: int = 128, heads: int = 1,
              depth: int = 1, patch_size: int = 4) -> nn.Module:
    """000, Section 3.1: "patches of size 4×4 ... one class token ... positional encoding", an
    encoder "with layer normalization (LayerNorm) and residual connections", "hidden dimension
    of the linear layer of the encoder block is h_dim = 2h_embed and it's activation function
    is GELU", "MLP head passing from input h_embed to output 10 after LayerNorm". The basic
    block is one head, one layer; `width` is h_embed (Figure 12: 128)."""
    return build_vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                     patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
                     mlp_dim=2 * width)


@register_backbone(kind="vit")
def vit_cifar(num_classes: int, in_chans: int, img_size: int, patch_size: int = 4,
              drop_rate: float = 0.2, drop_path_rate: float = 0.0) -> nn.Module:
    """003, "Hyperparameters for the Vision Transformer": embed_dim 256, hidden_dim 512,
    num_heads 8, num_layers 6, patch_size 4, dropout 0.2 (Lippe's UvA tutorial ViT: pre-LN,
    CLS token, learned positions, LN + linear head). At 3×32×32 and 10 classes: 3,195,146
    parameters, the slides' "3.2 M" and "12.781 MB" (×4 bytes)."""
    return build_vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                     patch_size=patch_size, embed_dim=256, depth=6, num_heads=8, mlp_dim=512,
                     drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                     attn_drop_rate=drop_rate)  # the tutorial's nn.MultiheadAttention(dropout=...); 64 tokens


@register_backbone(kind="cnn")
def vgg_cifar(num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """003's VGG-like CNN with BatchNorm (see VGGCifar)."""
    return VGGCifar(in_chans, num_classes)


@register_backbone(kind="cnn")
def baseline_cnn(num_classes: int, in_chans: int, img_size: int,
                 hidden: Sequence[int] = (120, 84)) -> nn.Module:
    """002, Section V, the baseline CNN "from Assignment 4": conv 6 filters 5×5 stride 1 + ReLU
    + max pool 2×2 s2; conv 12 filters; conv 24 filters (same pattern); "Fully connected
    network with 2 hidden layers".

    The document leaves two things open. Padding: without it a 32×32 input shrinks to 0×0
    by the third pooling (32→28→14→10→5→1→0), so the convs must pad 2 ("same").
    Hidden widths: LeNet-5's 120 and 84, the classic head behind a 6-filter 5×5 first
    layer."""
    return ConvNet(in_chans, (6, 12, 24), tuple(hidden), num_classes, nn.MaxPool2d)

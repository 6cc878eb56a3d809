"""Vision Transformers: timm's `VisionTransformer`, one channel, 512×512 or H×W, patch 8/16/32.

Every ViT here is a plain timm `VisionTransformer` (pre-LN blocks, CLS token, learned positions,
final LN + linear head on the CLS token), so `medvit.explain` can read `.patch_embed.grid_size`
and recompute softmax(q kᵀ · scale) from each `blocks[i].attn.qkv`. Fused attention
(`F.scaled_dot_product_attention`) is switched on in every block: patch 8 at 512 is 4096 tokens,
and the unfused path would materialise a 4096×4096 matrix per head.
"""
from __future__ import annotations

from torch import nn

from medvit._compat import import_timm
from medvit.canvas import parse_size
from medvit.errors import ConfigError
from medvit.models.registry import register_backbone

# timm's standard widths (embed_dim, depth, num_heads) for the ImageNet ViTs
_TIMM_WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def build_vit(*, num_classes: int, in_chans: int, img_size: int, patch_size: int,
              embed_dim: int, depth: int, num_heads: int, mlp_dim: int,
              drop_rate: float = 0.0, drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0,
              timm_name: str | None = None, pretrained: bool = False) -> nn.Module:
    """A timm VisionTransformer with fused attention on.

    `drop_rate` is the seed studies' "dropout": applied after adding the positions and after
    each MLP / projection layer (timm's pos/proj drop); the head is not dropped. Dropout on the
    attention weights (`attn_drop_rate`) is 0 in the mammography ViTs (only vit_cifar, 64 tokens,
    uses it, as its document does): on a CPU, SDPA with dropout
    falls back to the unfused kernel (measured at patch 8 / 512 px, batch 2: 160 s and 21.5 GB
    per step against 13 s and 1.7 GB). `timm_name` names the timm model whose ImageNet weights match
    (only used with pretrained=True).
    """
    h, w = parse_size(img_size, "img_size")
    if h % patch_size or w % patch_size:
        raise ConfigError(f"image size {h}x{w} is not a multiple of patch_size {patch_size} on both sides: "
                          "pick --image-size (data.image_size) as a multiple of the patch")
    img_size = h if h == w else (h, w)  # timm takes a side or (H, W)
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    import_timm()  # the guard must run before any `from timm ...` import
    args = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=mlp_dim / embed_dim, class_token=True, global_pool="token",
                pos_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, proj_drop_rate=drop_rate,
                drop_path_rate=drop_path_rate)
    if pretrained:
        model = create_pretrained(timm_name, **args)
    else:
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(**args)
        if timm_name is not None and import_timm().is_model(timm_name):  # for weights=FILE: its normalisation
            model.pretrained_cfg = import_timm().models.get_pretrained_cfg(timm_name).to_dict()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    return model


def create_pretrained(timm_name: str | None, **args) -> nn.Module:
    """timm.create_model(pretrained=True): timm adapts the RGB stem to `in_chans` and resamples
    positions to the new grid. A hub that cannot be reached becomes a ConfigError."""
    timm = import_timm()
    if timm_name is None or not timm.is_model(timm_name):
        what = timm_name or "a custom width"
        raise ConfigError(f"no ImageNet weights in timm for this configuration ({what}); "
                          "train from scratch or pass weights=FILE")
    try:
        return timm.create_model(timm_name, pretrained=True, **args)
    except Exception as err:  # offline, proxy, missing file on the hub: one answer for the user
        raise ConfigError(f"could not fetch ImageNet weights for {timm_name!r} from timm's hub "
                          f"({type(err).__name__}: {err}); download them where the hub is "
                          "reachable and pass weights=FILE") from err


def _timm_vit(size: str, patch_size: int, **kw) -> nn.Module:
    embed_dim, depth, num_heads = _TIMM_WIDTHS[size]
    return build_vit(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                     num_heads=num_heads, mlp_dim=4 * embed_dim,
                     timm_name=f"vit_{size}_patch{patch_size}_224", **kw)


@register_backbone(kind="vit")
def vit(num_classes: int, in_chans: int, img_size: int, patch_size: int = 16,
        drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """The RSNA mammography ViT of 002_2e95bb47a63f36d8.txt, Section IV "Hyperparameters" and
    Section VI: "embedding dimension of 256 ... hidden dimension of 512 ... the number of heads
    ... is 8, and the number of layers ... is 6"; pre-LN ("layer normalization was performed
    prior to each of these layers"), CLS token, "(512, 512) pixels with one channel", patch
    32/16/8."""
    return build_vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                     patch_size=patch_size, embed_dim=256, depth=6, num_heads=8, mlp_dim=512,
                     drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def _timm_entry(size: str, doc: str) -> None:
    """Register `vit_<size>` (one builder, one line per model below, as cnn.py's `_entry`)."""

    def entry(num_classes: int, in_chans: int, img_size: int, patch_size: int = 16,
              drop_rate: float = 0.0, drop_path_rate: float = 0.0, pretrained: bool = False) -> nn.Module:
        return _timm_vit(size, patch_size, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate, pretrained=pretrained)

    entry.__name__ = entry.__qualname__ = f"vit_{size}"
    entry.__doc__ = doc
    register_backbone(entry, kind="vit")


_timm_entry("tiny", "timm's ViT-Ti: embed 192, 12 layers, 3 heads, MLP 768.")
_timm_entry("small", "timm's ViT-S: embed 384, 12 layers, 6 heads, MLP 1536.")
_timm_entry("base", "timm's ViT-B: embed 768, 12 layers, 12 heads, MLP 3072.")


@register_backbone(kind="vit")
def vit_test(num_classes: int, in_chans: int, img_size: int, patch_size: int = 16,
             drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> nn.Module:
    """Tiny ViT for fast tests only: embed 32, 2 layers, 2 heads, MLP 64."""
    return build_vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                     patch_size=patch_size, embed_dim=32, depth=2, num_heads=2, mlp_dim=64,
                     drop_rate=drop_rate, drop_path_rate=drop_path_rate)

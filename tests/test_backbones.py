"""Backbones: timm models as NCHW pyramids at strides 4..32, for every family, at square and non-square sizes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from twostream.models import backbones
from twostream.models.backbones import BACKBONE_FAMILIES, SwinBackbone, ViTBackbone, backbone_family, build_backbone

# Tiny variants through timm kwargs: the real architectures at toy widths, so a CPU test takes milliseconds.
# zero_init_last=False: timm zeroes each ResNet block's last BN scale, which would zero the gradient of the convs
# before it at initialisation and hide a broken gradient path from the test below; drop_path_rate=0: stochastic depth
# (timm's Swin default 0.1) could drop a block for the whole batch and leave it without gradient.
TINY = {
    "resnet10t": dict(channels=(16, 32, 64, 128), stem_width=16, zero_init_last=False),
    "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.0),
    "vit_tiny_patch16_224": dict(depth=2, embed_dim=64, num_heads=2),
}
SIZES = [(128, 128), (96, 160)]


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request):
    torch.manual_seed(0)
    return request.param, build_backbone(request.param, **TINY[request.param])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pyramid_shapes_and_gradients(tiny, size):
    name, backbone = tiny
    backbone.zero_grad(set_to_none=True)
    h, w = size
    feats = backbone(torch.rand(2, 3, h, w))
    assert backbone.strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [
        (2, c, h // s, w // s) for c, s in zip(backbone.out_channels, backbone.strides)
    ]
    assert all(torch.isfinite(f).all() for f in feats)
    sum((f * torch.randn_like(f)).sum() for f in feats).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"


def test_family_table_and_errors():
    assert backbone_family("resnet50") == "resnet"
    assert backbone_family("swin_tiny_patch4_window7_224") == "swin_"
    assert backbone_family("vit_small_patch16_224") == "vit_"
    assert set(BACKBONE_FAMILIES) == {"resnet", "swin_", "vit_"}
    with pytest.raises(ValueError, match=r"'efficientnet_b0' is not in a supported family; known: resnet\*, swin_\*"):
        build_backbone("efficientnet_b0")
    with pytest.raises(ValueError, match="'resnet05' is not a timm model; similar: resnet50"):
        build_backbone("resnet05")
    with pytest.raises(ValueError, match="patch size 16"):
        build_backbone("vit_base_patch8_224", depth=1, embed_dim=16, num_heads=1)


def test_normalisation_uses_the_weights_mean_and_std():
    vit = build_backbone("vit_tiny_patch16_224", **TINY["vit_tiny_patch16_224"])
    cfg = timm.get_pretrained_cfg("vit_tiny_patch16_224")  # augreg ViTs are trained with mean = std = 0.5
    assert vit.mean == tuple(cfg.mean) and vit.std == tuple(cfg.std)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(vit.normalize(x), (x - 0.5) / 0.5)
    resnet = build_backbone("resnet10t", **TINY["resnet10t"])
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406))
    assert "pixel_mean" not in resnet.state_dict()  # derived from the name, not stored in checkpoints


def test_vit_simple_pyramid_matches_timm():
    torch.manual_seed(0)
    kw = TINY["vit_tiny_patch16_224"]
    vit = build_backbone("vit_tiny_patch16_224", img_size=128, **kw)
    assert isinstance(vit, ViTBackbone) and vit.out_channels == [16, 32, 64, 64]
    reference = timm.create_model("vit_tiny_patch16_224", img_size=128, dynamic_img_size=True, **kw)
    missing, _ = reference.load_state_dict(vit.body.model.state_dict(), strict=False)
    assert all(k.startswith(("norm.", "head", "fc_norm")) for k in missing)  # only the pruned final norm / head
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        feats = vit(x)
        (expected,) = reference.forward_intermediates(vit.normalize(x), indices=1, intermediates_only=True)
    torch.testing.assert_close(feats[2], expected)  # stride 16: the last block's tokens as a (B, C, 6, 10) map
    torch.testing.assert_close(feats[3], F.max_pool2d(expected, 2))  # stride 32: max-pooled


def test_swin_outputs_are_nchw_layer_normed():
    torch.manual_seed(0)
    swin = build_backbone("swin_tiny_patch4_window7_224", **TINY["swin_tiny_patch4_window7_224"])
    assert isinstance(swin, SwinBackbone)
    with torch.no_grad():
        feats = swin(torch.rand(1, 3, 64, 96))
    # LayerNorm (weight 1, bias 0 at init) over the channel axis: zero mean, unit variance along dim 1
    torch.testing.assert_close(feats[0].mean(dim=1), torch.zeros_like(feats[0][:, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[0].var(dim=1, unbiased=False), torch.ones_like(feats[0][:, 0]), atol=1e-3, rtol=0)


def test_pretrained_path_round_trip_and_errors(tmp_path):
    kw = TINY["resnet10t"]
    source = timm.create_model("resnet10t", **kw)  # a whole classifier, as a user would save it
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("resnet10t", pretrained_path=str(path), **kw)
    for name, tensor in loaded.body.state_dict().items():
        torch.testing.assert_close(tensor, source.state_dict()[name], msg=name)

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"do not fit timm model 'resnet10t' \(.+\); save them from timm.create_model"):
        build_backbone("resnet10t", pretrained_path=str(tmp_path / "resnet18.pth"), **kw)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth not found"):
        build_backbone("resnet10t", pretrained_path=str(tmp_path / "missing.pth"))


def test_pretrained_true_goes_through_timm(monkeypatch):
    seen = {}
    original = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        seen.update(name=name, pretrained=pretrained, **kwargs)
        return original(name, pretrained=False, **kwargs)  # no download in tests

    monkeypatch.setattr(backbones.timm, "create_model", spy)
    build_backbone("resnet10t", pretrained=True, **TINY["resnet10t"])
    assert seen["name"] == "resnet10t" and seen["pretrained"] is True and seen["features_only"] is True
    assert seen["pretrained_cfg_overlay"] is None

"""ImageEncoder (timm ViT / Swin / ResNet as feature extractors) and FeatureMapEncoder (shared backbone C5)."""

from __future__ import annotations

import pytest
import timm
import torch

from twostream.config import ImageEncoderConfig
from twostream.models.image_encoder import FeatureMapEncoder, ImageEncoder, build_image_encoder

# (timm name, image size, expected layout, expected tokens): small stand-ins of each family, and the real Swin-T
# (the smallest registered Swin) at 64 px, where its last stage is a 2x2 map.
CASES = [
    ("test_vit", (64, 96), "NLC", 1 + (64 // 16) * (96 // 16)),  # class token + patches
    ("test_resnet", (64, 96), "NCHW", (64 // 32) * (96 // 32)),
    ("swin_tiny_patch4_window7_224", (64, 64), "NHWC", (64 // 32) * (64 // 32)),
]


@pytest.mark.parametrize(("name", "size", "layout", "tokens"), CASES)
def test_tokens_and_pooled_match_timm(name, size, layout, tokens):
    torch.manual_seed(0)
    enc = ImageEncoder(name, img_size=size).eval()
    images = torch.rand(2, 3, *size)
    feats = enc.forward_features(images)
    assert enc.layout == layout
    assert feats.shape == (2, tokens, enc.token_dim)
    pooled = enc.forward_head(feats)
    assert pooled.shape == (2, enc.num_features)
    # independent computation: timm's own headless forward on images normalised with timm's own cfg
    cfg = enc.model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = enc.model((images - mean) / std)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(images), expected, atol=1e-5, rtol=1e-5)
    assert "pixel_mean" not in enc.state_dict()  # follows from the name; not saved


def test_grid_tokens_keep_the_spatial_order():
    """ResNet tokens are the NCHW map read row by row: token i*w + j is position (i, j)."""
    enc = ImageEncoder("test_resnet").eval()
    images = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        fmap = enc.model.forward_features(enc.normalize(images))  # (1, C, 3, 2)
        tokens = enc.forward_features(images)
    assert torch.equal(tokens[0, 1 * 2 + 1], fmap[0, :, 1, 1])


def test_swin_at_the_quick_start_size_and_gradients():
    enc = ImageEncoder("swin_tiny_patch4_window7_224", img_size=(128, 128), drop_path_rate=0.1).train()
    out = enc(torch.rand(1, 3, 128, 128))
    assert out.shape == (1, 768)
    out.sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing


def test_pretrained_path_loads_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_vit", num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    enc = build_image_encoder(ImageEncoderConfig(name="test_vit", pretrained_path=str(path), drop_path_rate=0.0))
    for (key, a), b in zip(source.state_dict().items(), enc.model.state_dict().values()):
        assert torch.equal(a, b), key
    with pytest.raises(FileNotFoundError, match=r"missing\.pth not found \(model\.image_encoder\.pretrained_path\)"):
        ImageEncoder("test_vit", pretrained_path=str(tmp_path / "missing.pth"))
    torch.save({"nope": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="do not fit timm model 'test_vit'"):
        ImageEncoder("test_vit", pretrained_path=str(tmp_path / "foreign.pth"))


def test_errors():
    with pytest.raises(ValueError, match="'swin_tiniest' is not a timm model; similar: swin_base"):
        ImageEncoder("swin_tiniest")
    enc = ImageEncoder("test_resnet")
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        enc(torch.rand(3, 64, 64))


def test_feature_map_encoder():
    enc = FeatureMapEncoder(24, dim=16)
    c5 = torch.randn(2, 24, 3, 4)
    tokens = enc.forward_features(c5)
    assert tokens.shape == (2, 12, 16) and enc.num_features == 16 and enc.token_dim == 16
    expected = enc.proj(torch.nn.functional.layer_norm(c5[0, :, 2, 1], (24,), enc.norm.weight, enc.norm.bias))
    torch.testing.assert_close(tokens[0, 2 * 4 + 1], expected)  # token (i, j) = position i*w + j
    torch.testing.assert_close(enc.forward_head(tokens), tokens.mean(1))
    assert FeatureMapEncoder(24).num_features == 24

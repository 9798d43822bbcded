"""UPSNet's semantic path: every backbone family at square and non-square sizes, losses, gradients, the builder, the
deformable head, and a short training run that has to beat the majority-class baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import DeformConv2d

from twostream.config import SegmenterConfig
from twostream.data.classes import IGNORE_INDEX, ClassTable, ade20k150
from twostream.models.backbones import build_backbone
from twostream.models.segmenter import build_segmenter, predict_labels
from twostream.models.upsnet import UPSNet, build_upsnet, semantic_loss
from twostream.models.upsnet_heads import ConvNormAct

# Tiny timm variants (see test_backbones.py); drop_path_rate=0: stochastic depth could drop a block for the whole
# batch and leave its parameters without gradient in the check below.
TINY = {
    "resnet10t": dict(channels=(16, 32, 64, 128), stem_width=16, zero_init_last=False),
    "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.0),
    "vit_tiny_patch16_224": dict(depth=2, embed_dim=64, num_heads=2),
}
K = len(ade20k150())
# A four-class table for the sweeps and the learning test: 151 full-resolution logit maps dominate the CPU time of a
# toy model, and the learning test is about learning, not about pushing down 151 class priors.
TOY = ClassTable(name="toy", names=("wall", "sky", "person", "car"), palette=np.zeros((4, 3), np.uint8),
                 stuff=(True, True, False, False), background=None)
STEPS = 60  # training steps of the learning test (~0.12 s each on one core)


def tiny_upsnet(name: str = "resnet10t", class_table: ClassTable = TOY, **kw) -> UPSNet:
    torch.manual_seed(0)
    args = dict(fpn_channels=32, head_channels=16, head_layers=2, **kw)
    return UPSNet(backbone=build_backbone(name, **TINY[name]), class_table=class_table, **args)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("size", [(128, 128), (96, 160)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_backward_every_family(name, size):
    model = tiny_upsnet(name)
    h, w = size
    images = torch.rand(2, 3, h, w)
    target = torch.randint(0, 4, (2, h, w))
    out = model(images, {"sem_seg": target})
    assert out["sem_logits"].shape == (2, 4, h, w)
    assert out["features"].shape == (2, model.feature_dim, h // 4, w // 4) and model.feature_dim == 64
    assert set(out["losses"]) == {"loss_sem"} and torch.isfinite(out["losses"]["loss_sem"])
    out["losses"]["loss_sem"].backward()
    # every parameter of the semantic path (backbone, FPN, deformable head, classifier) learns
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing[:5]
    model.eval()
    labels = predict_labels(model, images)
    assert labels.shape == (2, h, w) and labels.dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(labels, model(images)["sem_logits"].argmax(dim=1))
        assert "losses" not in model(images) and "panoptic" not in model(images)


def test_semantic_loss_ignores_255_and_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6)
    target = torch.randint(0, 5, (2, 4, 6))
    target[0, :2] = IGNORE_INDEX
    valid = target != IGNORE_INDEX
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    torch.testing.assert_close(semantic_loss(logits, target), expected)
    nothing = semantic_loss(logits.requires_grad_(True), torch.full_like(target, IGNORE_INDEX))
    assert nothing.item() == 0.0  # not NaN: an all-padding crop contributes nothing
    nothing.backward()


def test_shared_backbone_halves_equal_forward_and_shape_errors():
    model = tiny_upsnet(class_table=ade20k150()).eval()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(images)
        assert [f.shape[1] for f in feats] == model.backbone.out_channels
        split = model.forward_from_features(feats, images.shape[-2:])
        whole = model(images)
    assert whole["sem_logits"].shape == (1, K, 64, 96)
    torch.testing.assert_close(split["sem_logits"], whole["sem_logits"])
    torch.testing.assert_close(split["features"], whole["features"])
    with pytest.raises(ValueError, match=r"image size \(100, 96\) must be divisible by 32"):
        model(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match=r"targets\['sem_seg'\] has shape \(1, 32, 96\)"):
        model(images, {"sem_seg": torch.zeros(1, 32, 96, dtype=torch.long)})


def test_inference_logits_equal_the_training_path():
    """Under no_grad the logits are upsampled channels-last (faster); values and labels must not change."""
    model = tiny_upsnet(class_table=ade20k150()).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        fast = model(images)["sem_logits"]
        labels = model.predict(images)
    slow = model(images)["sem_logits"]  # grad enabled: the NCHW path training uses
    assert fast.is_contiguous(memory_format=torch.channels_last) and slow.is_contiguous()
    torch.testing.assert_close(fast, slow.detach())
    assert torch.equal(labels, slow.argmax(dim=1))


def test_deformable_block_starts_as_a_plain_convolution():
    torch.manual_seed(0)
    deform = ConvNormAct(8, 16, deformable=True)
    plain = ConvNormAct(8, 16, deformable=False)
    plain.conv.weight.data.copy_(deform.conv.weight.data)
    x = torch.randn(2, 8, 12, 10)
    # zero offsets sample the regular grid; sigmoid(0) = 0.5 modulation halves the output, which GroupNorm undoes
    torch.testing.assert_close(deform(x), plain(x), atol=1e-4, rtol=1e-4)
    model = tiny_upsnet(deformable=False)
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())
    assert sum(isinstance(m, DeformConv2d) for m in tiny_upsnet().modules()) == 2  # head_layers, shared by levels


def test_builder_maps_the_config():
    cfg = SegmenterConfig(kind="upsnet", backbone="resnet18", fpn_channels=32, head_channels=8, deformable=False)
    model = build_segmenter(cfg, ade20k150())
    assert isinstance(model, UPSNet) and model.class_table == ade20k150()
    assert model.backbone.out_channels == [64, 128, 256, 512] and model.feature_dim == 32
    assert model.instance_head is None and model.panoptic_head is None
    assert not any(isinstance(m, DeformConv2d) for m in model.modules())
    # the instance head's widths and RoI sample size come from the config too
    cfg = SegmenterConfig(kind="upsnet", backbone="resnet18", fpn_channels=32, head_channels=8, deformable=False,
                          instance_head=True, box_head_dim=64, mask_head_dim=16, roi_batch_size=32)
    roi_heads = build_segmenter(cfg, ade20k150()).instance_head.roi_heads
    assert roi_heads.box_head.fc7.out_features == 64 and roi_heads.box_predictor.cls_score.in_features == 64
    assert roi_heads.mask_head[0][0].out_channels == 16
    assert roi_heads.fg_bg_sampler.batch_size_per_image == 32
    with pytest.raises(ValueError, match="the panoptic head needs the instance head"):
        build_upsnet(SegmenterConfig(backbone="resnet18", panoptic_head=True), ade20k150())
    with pytest.raises(ValueError, match="not in a supported family"):
        build_upsnet(SegmenterConfig(backbone="convnext_tiny"), ade20k150())


# --------------------------------------------------------------------------------------------------------------------
# Learning: coloured rectangles on a coloured wall; each class has its own colour, so a working segmenter learns
# them in a few dozen steps, while the majority-class baseline gets only the wall right.
# --------------------------------------------------------------------------------------------------------------------

COLOURS = torch.tensor([(0.8, 0.8, 0.7), (0.4, 0.7, 1.0), (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)])


def rectangles(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, size, size)`` in [0, 1] with labels ``(n, size, size)``: wall + three rectangles."""
    labels = torch.zeros((n, size, size), dtype=torch.long)
    for i in range(n):
        for label in (1, 2, 3):
            y0, x0 = torch.randint(0, size - size // 4, (2,), generator=generator).tolist()
            hh, ww = torch.randint(size // 5, size // 2, (2,), generator=generator).tolist()
            labels[i, y0:y0 + hh, x0:x0 + ww] = label
    images = COLOURS[labels].permute(0, 3, 1, 2)  # (n, size, size, 3) -> (n, 3, size, size)
    images = (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    return images, labels


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        inter = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        ious.append(inter / union if union else 0.0)
    return sum(ious) / len(ious)


def test_training_learns_coloured_rectangles():
    g = torch.Generator().manual_seed(0)
    val_x, val_y = rectangles(8, 64, g)
    torch.manual_seed(0)
    backbone = build_backbone("resnet10t", **TINY["resnet10t"])
    # Plain convolutions: torchvision's CPU deformable convolution is ~3x slower; its gradients are checked above.
    model = UPSNet(backbone=backbone, class_table=TOY, fpn_channels=32, head_channels=16, head_layers=2,
                   deformable=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        images, labels = rectangles(4, 64, g)  # fresh scenes every step: learning colours, not memorising layouts
        loss = sum(model(images, {"sem_seg": labels})["losses"].values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses

    pred = predict_labels(model, val_x)  # eval mode: BatchNorm running statistics
    majority = torch.full_like(val_y, val_y.flatten().mode().values.item())
    base_acc = (majority == val_y).float().mean().item()
    acc = (pred == val_y).float().mean().item()
    assert acc > base_acc + 0.1, (acc, base_acc)  # 0.89 vs 0.73 when written
    assert miou(pred, val_y, 4) > miou(majority, val_y, 4) + 0.25  # 0.59 vs 0.18

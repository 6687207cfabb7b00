"""What tests/ddp/step.py and its test share: one tiny model, its loss and one fixed batch."""
import torch

from czii_kit.losses import build_loss
from czii_kit.models import build_model


def model_and_loss():
    """A tiny resunet whose batch-norm layers use their running statistics (per-rank batch statistics would make a
    two-rank step differ from a one-process step by design), and a plain per-voxel mean loss."""
    torch.manual_seed(0)
    model = build_model("resunet", num_classes=7, filters=[4, 6, 8], output_stride=2)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.eval()
    return model, build_loss("weighted_ce", class_weights=[1.0] * 6, pos_weight=1.0)


def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 1, 16, 32, 32, generator=g)
    targets = torch.rand(4, 6, 8, 16, 16, generator=g) * 0.6
    return images, targets

"""Run by torchrun (2 gloo processes) from tests/test_distributed.py: one training step of a tiny model through the
kit's own DDP wiring (``czii_kit.train.distributed`` + ``czii_kit.train.loop.train_step``) on this rank's half of a
fixed batch; each rank saves its weights and EMA weights for the test to compare with one process on the whole."""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from czii_kit.train import distributed
from czii_kit.train.loop import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import batch, model_and_loss  # noqa: E402


def main(out: str) -> None:
    info = distributed.join("cpu", timeout_s=60)
    model, loss_fn = model_and_loss()
    images, targets = batch()
    half = len(images) // info.world_size
    mine = slice(info.rank * half, (info.rank + 1) * half)
    run = SimpleNamespace(model=model, loss_fn=loss_fn, device=torch.device("cpu"), use_amp=False,
                          cfg={"train": {"grad_clip": 1.0}}, dist=info, ddp=distributed.wrap(model, info,
                                                                                           torch.device("cpu")),
                          optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scaler=torch.amp.GradScaler(
                              "cuda", enabled=False))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda s: 1.0)
    from czii_kit.train.ema import ModelEMA

    run.ema = ModelEMA(model, 0.5)
    train_step(run, images[mine], targets[mine])
    torch.save({"weights": model.state_dict(), "ema": run.ema.state_dict()}, Path(out) / f"rank{info.rank}.pt")
    distributed.leave(info)


if __name__ == "__main__":
    main(sys.argv[1])

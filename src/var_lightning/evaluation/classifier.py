"""A small dataset classifier: a domain feature space for FID and the class accuracy of samples.

ImageNet-trained Inception features say little about, e.g., 32x32 synthetic shapes; a classifier trained
on the dataset itself gives a domain FID (penultimate-layer features) and measures whether a conditional
sample shows the class it was asked for (``class_accuracy``). Plain torch; inputs are (B, 3, H, W) in
[-1, 1] at any size (resized to ``config.input_size`` inside), datasets yield ``(img_3HW, label)``.

Shapes: B batch, C channels, F features, K classes, H,W image side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from var_lightning.checkpoints.safe_io import torch_load
from var_lightning.distributed import rank

_log = logging.getLogger(__name__)
_FORMAT = "var_lightning.classifier/1"


@dataclass
class ClassifierConfig:
    """num_classes: K. input_size: side images are resized to. width: channels of the first stage,
    doubled per stage. stages: conv stages (two 3x3 convs each), a 2x max-pool between stages."""

    num_classes: int
    input_size: int = 32
    width: int = 32
    stages: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.stages < 1 or self.input_size < 2 ** (self.stages - 1):
            raise ValueError(f"input_size {self.input_size} too small for {self.stages} stages")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallClassifier(nn.Module):
    """Resize -> [2 x (conv-BN-ReLU)] x stages (max-pool between) -> global average pool -> linear."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(config.stages):
            c_out = config.width * 2**i
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [_conv_bn_relu(c_in, c_out), _conv_bn_relu(c_out, c_out)]
            c_in = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c_in
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c_in, config.num_classes))

    def forward_features(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (penultimate features (B, F), logits (B, K))."""
        size = self.config.input_size
        if x_B3HW.shape[-2:] != (size, size):
            x_B3HW = F.interpolate(
                x_B3HW, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        f_BF = self.body(x_B3HW)
        return f_BF, self.head(f_BF)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x_B3HW)[1]


def class_accuracy(logits_BK: torch.Tensor, labels_B: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class equals the label (for samples: the requested class)."""
    if logits_BK.shape[0] != labels_B.shape[0]:
        raise ValueError(f"{logits_BK.shape[0]} logits vs {labels_B.shape[0]} labels")
    if logits_BK.shape[0] == 0:
        return float("nan")
    return (logits_BK.argmax(dim=1).cpu() == labels_B.cpu().long()).float().mean().item()


@torch.no_grad()
def evaluate_classifier(
    model: SmallClassifier, dataset: Dataset, batch_size: int = 256, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    was_training = model.training
    model.eval().to(device)
    correct, total = 0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits_BK = model(x.to(device))
        correct += (logits_BK.argmax(dim=1).cpu() == torch.as_tensor(y).long()).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


def train_classifier(
    train_dataset: Dataset,
    val_dataset: Dataset,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    config: ClassifierConfig | None = None,
    weight_decay: float = 0.05,
    hflip: bool = True,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[SmallClassifier, float]:
    """Train a ``SmallClassifier`` with AdamW and a one-cycle schedule; return it (eval mode, on
    ``device``) and its validation accuracy. ``hflip`` adds random horizontal flips (turn it off for
    classes that flips change). Seeded: same seed, same data -> same model (on the same device)."""
    config = config or ClassifierConfig(num_classes=num_classes)
    if config.num_classes != num_classes:
        raise ValueError(f"config.num_classes={config.num_classes} but num_classes={num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(config).to(device)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers
    )
    steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15
    )
    val_acc = math.nan
    with _progress(progress and rank() == 0) as bar:
        task = bar.add_task("classifier", total=steps, status="")
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                x_B3HW, y_B = x.to(device), torch.as_tensor(y).long().to(device)
                if hflip:
                    flip_B = torch.rand(x_B3HW.shape[0], generator=gen) < 0.5
                    x_B3HW = torch.where(flip_B.to(device)[:, None, None, None], x_B3HW.flip(-1), x_B3HW)
                loss = F.cross_entropy(model(x_B3HW), y_B)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
            val_acc = evaluate_classifier(model, val_dataset, batch_size=max(batch_size, 256), device=device)
            bar.update(task, status=f"epoch {epoch + 1}/{epochs} val acc {val_acc:.3f}")
            if rank() == 0:
                _log.info(
                    "classifier epoch %d/%d: loss %.4f, val acc %.4f", epoch + 1, epochs, loss.item(), val_acc
                )
    return model.eval(), val_acc


def save_classifier(path: str | Path, model: SmallClassifier, meta: dict[str, Any] | None = None) -> None:
    """Save config + weights (+ JSON-able ``meta``, e.g. val accuracy, dataset) for ``load_classifier``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"format": _FORMAT, "config": asdict(model.config), "state_dict": state, "meta": meta or {}}, path
    )


def load_classifier(path: str | Path, map_location: torch.device | str = "cpu") -> SmallClassifier:
    """Rebuild a classifier saved by ``save_classifier``, in eval mode; ``model.meta`` holds the meta."""
    ckpt = torch_load(path, key="extractor.path", map_location=map_location)  # weights_only=True
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a classifier checkpoint written by save_classifier")
    model = SmallClassifier(ClassifierConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.meta = ckpt["meta"]
    return model.eval()

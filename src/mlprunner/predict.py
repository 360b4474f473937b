"""`mlprun-predict <run dir | checkpoint> <image files or folders> [--csv out.csv]`.

Each image is prepared exactly as the run's training data was: decoded to grayscale or RGB
(the run's channel count), resized to the run's image size (MNIST: 28x28), scaled to [0, 1],
flattened and normalised with the mean/std saved in the checkpoint. MNIST digits are white on
black; `--invert` turns a dark-on-light scan into that form first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import IMAGE_EXTENSIONS, _normalize, _stack_images
from .errors import ConfigError


def find_images(items: list[str]) -> list[Path]:
    """Image files named directly, plus those in named folders (recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ConfigError(
                    "images", item, message=(f"{item}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError("images", item, message=f"{item}: no such image file or folder")
    return out


def prepare(paths: list[Path], image_shape, mean, std, invert: bool = False) -> torch.Tensor:
    """(N, C*H*W) float tensor, prepared as the run's training images were."""
    c, h, w = (int(v) for v in image_shape)
    x = _stack_images(paths, (h, w), grayscale=c == 1)
    if invert:
        x = 1.0 - x
    return _normalize(x, mean, std)


@torch.no_grad()
def predict(loaded, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities (N, K) of the loaded model for prepared inputs."""
    model = loaded.model.eval()
    out = [
        loaded.loss.probs(model(x[i : i + batch_size].to(loaded.device))).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, len(loaded.info.get("class_names") or []))


if __name__ == "__main__":  # python -m mlprunner.predict: the same as mlprun-predict
    from .cli import predict_main

    predict_main()

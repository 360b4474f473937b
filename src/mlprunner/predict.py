"""`mlprun-predict <run dir | checkpoint> <image files or folders> [--csv out.csv]`.

Each image is prepared exactly as the run's training data was: decoded to grayscale or RGB
(the run's channel count), resized to the run's image size (MNIST: 28x28), scaled to [0, 1],
flattened and normalised with the mean/std saved in the checkpoint. MNIST digits are white on
black; `--invert` turns a dark-on-light scan into that form first, and images whose brightness
is the opposite of the training images' get a note saying so.
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


def prepare(paths: list[Path], image_shape, mean, std, invert: bool = False) -> tuple[torch.Tensor, str | None]:
    """(N, C*H*W) float tensor, prepared as the run's training images were, and a note when the
    images' brightness is the opposite of the training images' (a dark-on-light scan given to an
    MNIST model without --invert: its answers would be noise, with high confidence)."""
    c, h, w = (int(v) for v in image_shape)
    x = _stack_images(paths, (h, w), grayscale=c == 1)
    if invert:
        x = 1.0 - x
    note = None
    if mean is not None:
        trained, given = sum(mean) / len(mean), x.mean(dim=1)  # in [0, 1]
        opposite = (given > 0.5) if trained < 0.5 else (given < 0.5)
        if int(opposite.sum()):
            flag = "leave out --invert" if invert else "pass --invert"
            note = (
                f"{int(opposite.sum())} of {len(paths)} image(s) are {'light' if trained < 0.5 else 'dark'} "
                f"on the whole (mean brightness {float(given[opposite].mean()):.2f}, the training images' "
                f"{trained:.2f}): if they are {'dark on light' if trained < 0.5 else 'light on dark'}, {flag}"
            )
    return _normalize(x, mean, std), note


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

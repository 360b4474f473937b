"""`mlprun-predict <run dir | checkpoint> <image files or folders> [--csv out.csv]`.

Each image is prepared exactly as the run's training data was: decoded to grayscale or RGB
(the run's channel count), resized to the run's image size (MNIST: 28x28), scaled to [0, 1],
flattened and normalised with the mean/std saved in the checkpoint. MNIST digits are white on
black; `--invert` turns a dark-on-light scan into that form first.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from .data import IMAGE_EXTENSIONS, _normalize, _stack_images
from .errors import ConfigError, one_line_errors
from .evaluate import CHECKPOINTS, load_run


def find_images(items: list[str]) -> list[Path]:
    """Image files named directly, plus those in named folders (recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ConfigError("images", item, message=(
                    f"{item}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
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
    out = [loaded.loss.probs(model(x[i:i + batch_size].to(loaded.device))).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(loaded.info.get("class_names") or []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mlprun-predict",
        description="Classify image files with a trained mlprun run: predicted class and top-k probabilities.")
    parser.add_argument("target", help="a run directory or a checkpoint file (.pt)")
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default=None,
                        help="which checkpoint of a run directory (default: swa if present, else best, else last)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the predictions to this CSV file")
    parser.add_argument("--top", type=int, default=3, help="how many classes to list (default 3)")
    parser.add_argument("--invert", action="store_true",
                        help="invert intensities first (dark strokes on a light background -> MNIST style)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N, mps")
    args = parser.parse_args(argv)
    with one_line_errors("mlprun-predict"):  # one line, the contract's exit codes
        loaded = load_run(args.target, args.checkpoint, device=args.device)
        info = loaded.info
        if not info.get("image_shape"):
            raise ConfigError("target", args.target, message=(
                f"{loaded.path}: the run's dataset ({loaded.cfg.dataset.name}) is not made of images; "
                f"mlprun-predict needs a run trained on images"))
        paths = find_images(args.images)
        x = prepare(paths, info["image_shape"], info.get("mean"), info.get("std"), args.invert)
        probs = predict(loaded, x)
        names = list(info.get("class_names") or [str(i) for i in range(probs.shape[1])])
        k = max(1, min(args.top, probs.shape[1]))
        top_p, top_i = probs.topk(k, dim=1)
        rows = []
        width = max(len(str(p)) for p in paths)
        for path, ps, idx in zip(paths, top_p.tolist(), top_i.tolist()):
            label = names[idx[0]]
            rows.append([str(path), label] + [v for i, p in zip(idx, ps) for v in (names[i], f"{p:.4f}")])
            tops = ", ".join(f"{names[i]} {p:.3f}" for i, p in zip(idx, ps))
            print(f"{str(path):<{width}}  {label:<12} top-{k}: {tops}")
        if args.csv is not None:
            header = ["path", "predicted"] + [h for j in range(1, k + 1) for h in (f"top{j}", f"p{j}")]
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            with open(args.csv, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(rows)
            print(f"wrote {args.csv} ({len(rows)} images)")
    sys.exit(0)


if __name__ == "__main__":
    main()

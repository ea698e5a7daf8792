"""Train the shipped default nuclei model on mnfinder's training-data, choosing the checkpoint
on its validation-data. Rebuild with: ``.venv/bin/python scripts/train_default.py``.

Recipe options: ``--architecture unet|unetpp`` (``--deep-supervision``), ``--weight-map``
(``--w0``, ``--sigma``), ``--copy-paste P``, ``--artefacts P``; ``--init CKPT`` starts from a
checkpoint's weights (for UNet++ from a U-Net: the encoder only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet.engine.network import UNet, UNetConfig, build_network  # noqa: E402
from napari_unet.engine.normalize import Normalization  # noqa: E402
from napari_unet.engine.postprocess import PostprocessConfig, median_object_area  # noqa: E402
from napari_unet.io.checkpoint import ModelInfo, read_checkpoint, save_checkpoint  # noqa: E402
from napari_unet.training.loop import Sample, TrainConfig, train  # noqa: E402


def samples(split: str, norm: Normalization) -> list[Sample]:
    return [Sample(norm.apply(img[None]), lab, None, name) for name, img, lab in load_split(split)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="sample_data/nuclei_default.safetensors")
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--steps-per-epoch", type=int, default=60)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--architecture", choices=("unet", "unetpp"), default="unet")
    ap.add_argument("--deep-supervision", action="store_true")
    ap.add_argument("--weight-map", action="store_true", help="U-Net paper separation weights")
    ap.add_argument("--w0", type=float, default=10.0)
    ap.add_argument("--sigma", type=float, default=5.0)
    ap.add_argument("--copy-paste", type=float, default=0.0, help="probability per crop")
    ap.add_argument("--artefacts", type=float, default=0.0, help="probability per crop")
    ap.add_argument("--low-resolution", type=float, default=0.0, help="probability per crop")
    ap.add_argument("--init", help="start from this checkpoint's weights (matching tensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latest", help="also save the weights after every epoch here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    norm = Normalization()
    train_s, val_s = samples("training-data", norm), samples("validation-data", norm)
    print(f"{len(train_s)} training images, {len(val_s)} validation images", flush=True)
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_limit=args.minutes * 60,
        batch_size=args.batch_size, crop_size=args.crop, lr=args.lr, seed=args.seed,
        weight_map=args.weight_map, w0=args.w0, sigma=args.sigma, copy_paste=args.copy_paste,
        artefacts=args.artefacts, low_resolution=args.low_resolution,
    )
    net = build_network(UNetConfig(
        in_channels=1, out_classes=3, depth=args.depth, base_width=args.width,
        architecture=args.architecture, deep_supervision=args.deep_supervision,
    ))
    if args.init:
        init = read_checkpoint(args.init)
        own = net.state_dict()
        shared = {k: v.float() if v.is_floating_point() else v for k, v in init.state_dict.items()
                  if k in own and own[k].shape == v.shape}
        net.load_state_dict(shared, strict=False)
        config.postprocess = PostprocessConfig.from_dict(init.info.postprocess)
        print(f"initialised {len(shared)}/{len(own)} tensors from {args.init}", flush=True)
    object_area = median_object_area([s.labels for s in train_s])
    out = Path(args.out)

    def info(metrics: dict) -> ModelInfo:
        return ModelInfo(
            name="nuclei_default",
            normalization=norm.to_dict(),
            object_area=round(object_area, 1),
            postprocess=config.postprocess.to_dict(),
            provenance={
                "data": "mnfinder 1.2.3 training-data (30 images, DAPI/H2B nuclei; MIT licence)",
                "validation_data": "mnfinder 1.2.3 validation-data (3 images)",
                "epochs": metrics["epoch"], "steps": metrics["step"],
                "validation_f1": round(metrics["val_f1"], 4),
                "validation_loss": round(metrics["val_loss"], 4),
                "train_config": config.to_dict(),
                "init": args.init,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )

    def on_best(model: UNet, metrics: dict) -> None:
        save_checkpoint(out, model, info(metrics), dtype=torch.float16)
        print(f"  saved best: epoch {metrics['epoch']} val F1 {metrics['val_f1']:.4f}", flush=True)

    def on_event(event: dict) -> None:
        print(json.dumps(event), flush=True)
        if args.latest and event["event"] == "progress":
            save_checkpoint(args.latest, net, info(event), dtype=torch.float16)

    result = train(net, train_s, val_s, config, on_event=on_event,
                   on_best=on_best, save_initial=bool(args.init))
    print(f"best val F1 {result.best_f1:.4f} at epoch {result.best_epoch}, {result.seconds:.0f} s")


if __name__ == "__main__":
    main()

"""Benchmark the tiled inference engine (``napari_unet.predict``) against its references.

Everything runs in ONE process, on the same checkpoint, the same image and the same
tile / overlap / batch settings. Timed methods are run round-robin (engine, MONAI, untiled,
engine, MONAI, untiled, ...) after one warm-up run each, and the median of each is reported,
so background load hits all of them alike. On CUDA every timing is bracketed by
``torch.cuda.synchronize()``.

What is measured
----------------
(a) Engine vs MONAI. ``napari_unet.predict(model, image, tile=, overlap=, batch_size=, device=)``
    against ``monai.inferers.sliding_window_inference`` (``mode="gaussian"``,
    ``roi_size=(tile, tile)``, ``sw_batch_size=batch``, ``overlap=overlap / tile``) given
    ``model.net`` as loaded (not prepared, eval mode, float32) under ``torch.inference_mode``,
    with softmax applied to each window's logits (so both blend probabilities). MONAI gets the
    already-normalised tensor ``model.normalization.apply(image[None])`` (normalisation and the
    host-to-device copy are excluded from its time); the engine is timed end to end, its own
    normalisation and copies included, which favours MONAI. Both return CPU arrays.
    Reported: throughput ratio engine / MONAI (target >= 1.5).
(b) Engine vs one untiled forward pass of the same PREPARED network
    (``model.prepared(device)``: BatchNorm folded, channels_last) over the whole image:
    normalise, mirror-pad (``napari_unet.engine.tiling.mirror_pad``) by a 64-px border and up to a
    multiple of ``model.net.size_multiple``, channels_last input, softmax, crop back.
    Reported: time ratio engine / untiled (target <= 1.15).
(c) Seam error: max |p_tiled - p_untiled| over all classes, excluding a 128-px border around the
    image (where the context legitimately differs); also the 99.9th percentile and the mean.
    Target <= 0.02. (When the engine runs in bf16 on CUDA, the fp32 figure is the one judged.)
(d) Useful GFLOP/s: FLOPs of one untiled forward on the padded input of (b)
    (``torch.utils.flop_counter.FlopCounterMode``, counted on the meta device) divided by the
    engine's median time, and as a fraction of a same-run float32 ``torch.mm`` rate
    (2048x2048 on CPU, 8192x8192 on CUDA; median of several runs). Target >= 0.5.

Also reported: device, thread count, torch version, image size, parameter count, the engine's
time and throughput, and the speed-up of the prepared network over the unprepared one
(one untiled forward on a ``--prep-size``-square input, float32, alternating).

On CUDA the engine uses bf16 autocast by default (as ``predict`` does); the untiled reference
uses the same precision, MONAI runs in float32 as loaded.

The benchmark image is the real sample ``sample_data/nuclei_u2os.tif`` (768x869 uint16)
extended to ``size x size`` by mirror reflection.

Run::

    .venv/bin/python benchmarks/bench_inference.py [--size 2048] [--tile 512] [--overlap 128] \\
        [--batch-size 4] [--repeats 3] [--device auto] [--model PATH] [--json OUT]

The ``bench`` extra (``pip install -e .[bench]``) installs MONAI; without it (a) is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch.utils.flop_counter import FlopCounterMode

import napari_unet
from napari_unet import SegmentationModel, load_model, predict
from napari_unet.engine.device import resolve_device
from napari_unet.engine.predict import DEFAULT_OVERLAP, DEFAULT_TILE
from napari_unet.engine.tiling import count_tiles, mirror_pad

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "nuclei_u2os.tif"
UNTILED_BORDER = 64  # mirror border of the untiled reference, in pixels
SEAM_BORDER = 128  # excluded from the seam error, in pixels
MATMUL_RUNS = 5

# name: (description, comparison, target)
TARGETS: dict[str, tuple[str, str, float]] = {
    "speedup_vs_monai": ("(a) throughput engine / MONAI", ">=", 1.5),
    "time_ratio_vs_untiled": ("(b) time engine / untiled prepared", "<=", 1.15),
    "seam_max": ("(c) seam error max |p_tiled - p_untiled|", "<=", 0.02),
    "matmul_fraction": ("(d) useful FLOP/s / fp32 matmul FLOP/s", ">=", 0.5),
}


# --------------------------------------------------------------------------- timing helpers


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, result), synchronising the device on both sides."""
    sync(dev)
    t0 = time.perf_counter()
    result = fn()
    sync(dev)
    return time.perf_counter() - t0, result


def alternate(
    fns: dict[str, Callable[[], Any]], repeats: int, dev: torch.device
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Warm each method up once (keeping its result), then time them round-robin ``repeats`` times."""
    results: dict[str, Any] = {}
    for name, fn in fns.items():
        print(f"  warm-up {name} ...", flush=True)
        results[name] = timed(fn, dev)[1]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            seconds, _ = timed(fn, dev)
            times[name].append(seconds)
        line = ", ".join(f"{name} {t[-1]:.3f}s" for name, t in times.items())
        print(f"  round {r + 1}/{repeats}: {line}", flush=True)
    return times, results


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------- environment


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return str(dev)


def make_image(size: int) -> np.ndarray:
    """The real sample, cropped or mirror-extended to ``size x size``."""
    sample = tifffile.imread(SAMPLE)
    if sample.ndim != 2:
        raise SystemExit(f"{SAMPLE} should be a 2D image, not shape {sample.shape}")
    sample = sample[:size, :size]
    pad = ((0, size - sample.shape[0]), (0, size - sample.shape[1]))
    return np.ascontiguousarray(np.pad(sample, pad, mode="reflect"))


# --------------------------------------------------------------------------- the methods


def untiled_input(model: SegmentationModel, image: np.ndarray) -> tuple[np.ndarray, int]:
    """Normalised ``(C, H', W')`` plane mirror-padded by the border and up to the size multiple."""
    x = model.normalization.apply(image[None])
    m = model.net.size_multiple
    b = UNTILED_BORDER
    h, w = image.shape
    hp, wp = math.ceil((h + 2 * b) / m) * m, math.ceil((w + 2 * b) / m) * m
    return mirror_pad(x, (b, hp - h - b, b, wp - w - b)), b


def untiled_runner(
    model: SegmentationModel, image: np.ndarray, dev: torch.device, amp: bool
) -> Callable[[], np.ndarray]:
    net = model.prepared(dev)
    h, w = image.shape

    def run() -> np.ndarray:
        padded, b = untiled_input(model, image)
        x = torch.from_numpy(padded)[None].to(dev).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            p = torch.softmax(logits.float(), dim=1)[0, :, b : b + h, b : b + w]
            return p.cpu().numpy()

    return run


def engine_runner(
    model: SegmentationModel, image: np.ndarray, args: argparse.Namespace, dev: torch.device, amp: bool | None
) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        return predict(
            model, image, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=dev, amp=amp
        )

    return run


class MonaiRunner:
    """MONAI's sliding-window inference of the loaded network; counts the windows it evaluates."""

    def __init__(self, net: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> None:
        from monai.inferers import sliding_window_inference

        self._infer = sliding_window_inference
        self.net, self.x, self.args = net, x, args
        self.windows = 0  # in the latest call

    def _predictor(self, batch: torch.Tensor) -> torch.Tensor:
        self.windows += batch.shape[0]
        return torch.softmax(self.net(batch), dim=1)

    def __call__(self) -> np.ndarray:
        self.windows = 0
        with torch.inference_mode():
            p = self._infer(
                self.x,
                roi_size=(self.args.tile, self.args.tile),
                sw_batch_size=self.args.batch_size,
                predictor=self._predictor,
                overlap=self.args.overlap / self.args.tile,
                mode="gaussian",
            )
            return torch.as_tensor(p)[0].cpu().numpy()


def make_monai_runner(net: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> MonaiRunner | None:
    try:
        return MonaiRunner(net, x, args)
    except ImportError as exc:
        print(f"MONAI is not importable ({exc}); skipping (a). Install it with: pip install -e .[bench]")
        return None


def engine_tiles(model: SegmentationModel, shape: tuple[int, int], tile: int, overlap: int) -> tuple[int, int]:
    """(number of tiles, input tile side) the engine uses for one plane, as ``predict`` lays them out."""
    net = model.net
    if net.config.padding == "same":
        in_tile = out_tile = math.ceil(tile / net.size_multiple) * net.size_multiple
    else:
        in_tile = net.valid_input_size(tile)
        out_tile = net.output_size(in_tile)
    return count_tiles(shape, in_tile, out_tile, overlap), in_tile


# --------------------------------------------------------------------------- other figures


def count_flops(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``net`` on an input of ``shape``, counted on the meta device."""
    meta = copy.deepcopy(net).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(shape, device="meta"))
    return int(counter.get_total_flops())


def matmul_rate(dev: torch.device) -> tuple[float, int]:
    """Median float32 ``torch.mm`` rate in FLOP/s (and the matrix side used)."""
    n = 8192 if dev.type == "cuda" else 2048
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    timed(lambda: torch.mm(a, b), dev)
    times = [timed(lambda: torch.mm(a, b), dev)[0] for _ in range(MATMUL_RUNS)]
    return 2 * n**3 / median(times), n


def prepared_speedup(
    model: SegmentationModel, loaded: torch.nn.Module, dev: torch.device, size: int, repeats: int
) -> dict[str, float]:
    """Time one float32 forward of the loaded network vs the prepared one on a ``size``-square input."""
    x = torch.randn(1, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    prepared = model.prepared(dev)

    def run(net: torch.nn.Module, inp: torch.Tensor) -> Callable[[], None]:
        def forward() -> None:
            with torch.inference_mode():
                net(inp)

        return forward

    print(f"prepared vs unprepared network, one forward on {size}x{size}:", flush=True)
    times, _ = alternate({"unprepared": run(loaded, x), "prepared": run(prepared, x_cl)}, repeats, dev)
    with torch.inference_mode():
        diff = float((loaded(x) - prepared(x_cl)).abs().max())
    return {
        "input_size": size,
        "unprepared_s": median(times["unprepared"]),
        "prepared_s": median(times["prepared"]),
        "speedup": median(times["unprepared"]) / median(times["prepared"]),
        "max_abs_logit_diff": diff,
    }


def seam_error(tiled: np.ndarray, untiled: np.ndarray, border: int) -> dict[str, float]:
    """Statistics of |tiled - untiled| over all classes, ``border`` pixels excluded on each side."""
    inner = (slice(None), slice(border, -border or None), slice(border, -border or None))
    diff = np.abs(tiled[inner] - untiled[inner])
    if diff.size == 0:
        return {"max": float("nan"), "p99_9": float("nan"), "mean": float("nan")}
    return {"max": float(diff.max()), "p99_9": float(np.percentile(diff, 99.9)), "mean": float(diff.mean())}


def summarise(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each headline figure with its target and PASS / FAIL (SKIP when it was not measured)."""
    figures = {
        "speedup_vs_monai": r["monai"]["speedup"] if "monai" in r else None,
        "time_ratio_vs_untiled": r["untiled"]["time_ratio"],
        "seam_max": r.get("seam_fp32", r["seam"])["max"],  # fp32 isolates tiling from bf16 noise
        "matmul_fraction": r["flops"]["fraction"],
    }
    summary = {}
    for name, value in figures.items():
        description, op, target = TARGETS[name]
        if value is None or not math.isfinite(value):
            verdict = "SKIP"
        else:
            verdict = "PASS" if (value >= target if op == ">=" else value <= target) else "FAIL"
        summary[name] = {"description": description, "value": value, "op": op, "target": target, "verdict": verdict}
    return summary


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="benchmark image side in pixels (default 2048)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped nuclei model)")
    p.add_argument("--prep-size", type=int, default=1024, help="input side for prepared-vs-unprepared timing")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    args = p.parse_args(argv)
    if args.size < 16 or args.repeats < 1:
        p.error("--size must be at least 16 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    model = load_model(args.model)
    image = make_image(args.size)
    engine_amp = dev.type == "cuda"  # predict's default: bf16 autocast on CUDA only
    loaded = copy.deepcopy(model.net).to(dev).eval()  # the network as loaded (not prepared), fp32
    n_params = sum(p.numel() for p in model.net.parameters())

    env = {
        "device": str(dev),
        "device_name": device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "napari_unet_version": napari_unet.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    settings = {
        "model": str(model.path),
        "parameters": n_params,
        "image_size": list(image.shape),
        "tile": args.tile,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "engine_precision": "bf16 autocast" if engine_amp else "float32",
    }
    print("== napari-unet inference benchmark ==")
    print(
        f"device        : {env['device']} ({env['device_name']}), torch {env['torch_version']}, "
        f"{env['torch_threads']} threads, load average {env['load_average']}"
    )
    print(f"model         : {model.path} ({n_params:,} parameters, {model.config})")
    print(f"image         : {args.size}x{args.size} {image.dtype} mirrored from {SAMPLE.name}")
    print(
        f"settings      : tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}, "
        f"{args.repeats} alternating round(s) after one warm-up each"
    )
    print(
        f"precision     : engine {settings['engine_precision']} (predict's default), "
        "untiled reference the same, MONAI float32 as loaded"
    )
    print(
        "timing        : engine end to end incl. its own normalisation; MONAI and the untiled "
        "reference as described in the module docstring"
    )

    methods: dict[str, Callable[[], Any]] = {"engine": engine_runner(model, image, args, dev, None)}
    x_norm = torch.from_numpy(model.normalization.apply(image[None]))[None].to(dev)
    monai = make_monai_runner(loaded, x_norm, args)
    if monai is not None:
        methods["monai"] = monai
    methods["untiled"] = untiled_runner(model, image, dev, engine_amp)

    print("timing engine / MONAI / untiled (alternating):", flush=True)
    times, outputs = alternate(methods, args.repeats, dev)
    medians = {name: median(t) for name, t in times.items()}
    t_engine = medians["engine"]
    megapixels = image.size / 1e6

    results: dict[str, Any] = {"env": env, "settings": settings, "times_s": times, "median_s": medians}
    n_tiles, in_tile = engine_tiles(model, image.shape, args.tile, args.overlap)
    padded, _ = untiled_input(model, image)
    results["engine"] = {
        "median_s": t_engine,
        "megapixels_per_s": megapixels / t_engine,
        "tiles": n_tiles,
        "input_tile": in_tile,
        "pixels_run_per_image_pixel": n_tiles * in_tile**2 / image.size,
    }

    # (a)
    if monai is not None:
        interior = seam_error(outputs["engine"], outputs["monai"], SEAM_BORDER)
        results["monai"] = {
            "median_s": medians["monai"],
            "speedup": medians["monai"] / t_engine,
            "windows": monai.windows,
            "pixels_run_per_image_pixel": monai.windows * args.tile**2 / image.size,
            "max_abs_diff_vs_engine_interior": interior["max"],
            "seam_vs_untiled": seam_error(outputs["monai"], outputs["untiled"], SEAM_BORDER),
        }
    # (b)
    results["untiled"] = {
        "median_s": medians["untiled"],
        "time_ratio": t_engine / medians["untiled"],
        "padded_input": list(padded.shape[-2:]),
        "pixels_run_per_image_pixel": padded[0].size / image.size,
    }
    # (c)
    seam = seam_error(outputs["engine"], outputs["untiled"], SEAM_BORDER)
    results["seam"] = {"border_px": SEAM_BORDER, "precision": settings["engine_precision"], **seam}
    if engine_amp:
        print("seam error in float32 (extra untimed engine + untiled runs) ...", flush=True)
        fp32_tiled = engine_runner(model, image, args, dev, False)()
        fp32_untiled = untiled_runner(model, image, dev, False)()
        results["seam_fp32"] = seam_error(fp32_tiled, fp32_untiled, SEAM_BORDER)
    del outputs
    # (d)
    flops = count_flops(model.net, (1, *padded.shape))
    mm_rate, mm_n = matmul_rate(dev)
    useful = flops / t_engine
    results["flops"] = {
        "untiled_forward_flops": flops,
        "padded_input": list(padded.shape[-2:]),
        "useful_gflops_per_s": useful / 1e9,
        "matmul_n": mm_n,
        "matmul_gflops_per_s": mm_rate / 1e9,
        "fraction": useful / mm_rate,
    }
    # prepared vs unprepared
    results["prepared"] = prepared_speedup(model, loaded, dev, args.prep_size, args.repeats)

    results["summary"] = summarise(results)
    print_report(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return results


def print_report(r: dict[str, Any]) -> None:
    s, e, u, f, prep = r["settings"], r["engine"], r["untiled"], r["flops"], r["prepared"]
    print()
    print("== results (medians) ==")
    print(
        f"engine        : {e['median_s']:.3f} s for {s['image_size'][0]}x{s['image_size'][1]} "
        f"({e['megapixels_per_s']:.2f} MP/s; {s['engine_precision']}; incl. normalisation); "
        f"{e['tiles']} tiles of {e['input_tile']}^2 = {e['pixels_run_per_image_pixel']:.2f} px run per image px"
    )
    if "monai" in r:
        m = r["monai"]
        print(
            f"(a) MONAI     : {m['median_s']:.3f} s (float32, normalisation excluded) -> engine is "
            f"{m['speedup']:.2f}x MONAI's throughput"
        )
        ms = m["seam_vs_untiled"]
        print(
            f"    MONAI ran {m['windows']} windows = {m['pixels_run_per_image_pixel']:.2f} px per image px; "
            f"max |engine - MONAI| {m['max_abs_diff_vs_engine_interior']:.4f}, MONAI's own seam error max "
            f"{ms['max']:.4f} / p99.9 {ms['p99_9']:.4f} (interior)"
        )
    else:
        print("(a) MONAI     : skipped (monai not importable)")
    print(
        f"(b) untiled   : {u['median_s']:.3f} s (prepared, one forward on {u['padded_input'][0]}x"
        f"{u['padded_input'][1]} = {u['pixels_run_per_image_pixel']:.2f} px per image px) -> "
        f"engine / untiled = {u['time_ratio']:.3f}"
    )
    sm = r["seam"]
    print(
        f"(c) seam      : max {sm['max']:.4g}, p99.9 {sm['p99_9']:.4g}, mean {sm['mean']:.3g} "
        f"({sm['precision']}, {sm['border_px']}-px border excluded; overlap {s['overlap']} = "
        f"{100 * s['overlap'] / s['tile']:.1f}% of the tile)"
    )
    if "seam_fp32" in r:
        s32 = r["seam_fp32"]
        print(f"    seam fp32 : max {s32['max']:.4g}, p99.9 {s32['p99_9']:.4g}, mean {s32['mean']:.3g}")
    print(
        f"(d) FLOPs     : {f['untiled_forward_flops'] / 1e9:.1f} GFLOP per untiled forward -> "
        f"{f['useful_gflops_per_s']:.1f} useful GFLOP/s; fp32 mm {f['matmul_n']}^2: "
        f"{f['matmul_gflops_per_s']:.1f} GFLOP/s -> fraction {f['fraction']:.3f}"
    )
    print(
        f"prepared net  : {prep['unprepared_s']:.3f} s unprepared vs {prep['prepared_s']:.3f} s prepared on "
        f"{prep['input_size']}^2 -> {prep['speedup']:.2f}x (BN folding + channels_last; "
        f"max |logit diff| {prep['max_abs_logit_diff']:.2g})"
    )

    print()
    print("== summary ==")
    for item in r["summary"].values():
        value = "n/a" if item["value"] is None else f"{item['value']:.4g}"
        print(f"{item['description']:<44} {value:>10}  (target {item['op']} {item['target']})  {item['verdict']}")


if __name__ == "__main__":
    main()

"""Training speed: cubes per second and achieved TFLOP/s of ``cryosamu train``'s own step.

For each preset a fresh network takes ``--steps`` timed optimisation steps through
``cryosamu_cli.training.loop.train_step`` (the loss, the backward pass, AdamW, clipping, the cosine
scheduler; on CUDA channels-last with cuDNN's autotuner, the batch augmentation on the device,
the precision ``--precision`` resolves to), after ``--warmup`` untimed ones, on batches of
smooth random cubes already on the device (as ``DeviceCubes`` holds them). Printed per preset:
cubes/s, ms per step, TFLOP/s achieved (torch's FLOP count of one step, forward and backward,
× steps / seconds), that as a share of the device's matrix rate in the training's precision
measured in the same run (bf16 on CUDA, 8192²; fp32 on a CPU, 2048²), peak memory, and with
``--compile`` the seconds the first compiled steps took.

    python benchmarks/train_speed.py                              # CPU: light and paper, small
    python benchmarks/train_speed.py --device cuda --batch-size 16 --steps 30
    python benchmarks/train_speed.py --device cuda --compile --json speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import matrix_tflops  # noqa: E402


def _synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(count: int, batch_size: int, edge: int, device):
    """``count`` batches ``(input, target)`` of smooth random cubes on ``device``."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        noise = torch.randn(batch_size, 1, edge, edge, edge, generator=generator)
        target = F.avg_pool3d(noise, 5, stride=1, padding=2).clamp_min(0).to(device)
        inputs = F.avg_pool3d(target, 5, stride=1, padding=2)
        batches.append((inputs, target))
    return batches


def step_flops(model, batch, config, precision, device) -> float:
    """FLOPs of one training step (forward and backward; torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cryosamu_cli.training import loop as train

    optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
    counter = FlopCounterMode(display=False)
    with counter:
        train.train_step(model, batch, optimiser, scheduler, config, precision, device)
    return float(counter.get_total_flops())


def measure(preset: str, args, device) -> dict:
    """One preset's figures."""
    import torch

    from cryosamu_cli.training import loop as train
    from cryosamu_cli.training.augment import input_augmenter
    from cryosamu_cli.training.distributed import training_network
    from cryosamu_cli.benchmark.timing import peak_rss_MiB, reset_peak_memory
    from cryosamu_cli.device import precision_name, resolve_precision, use_precision
    from cryosamu_cli.model.config import preset_config
    from cryosamu_cli.model.unet import UNet3D

    torch.manual_seed(0)
    config = train.TrainConfig(preset=preset, batch_size=args.batch_size, no_struct=True,
                               augment=args.augment, precision=args.precision,
                               compile=args.compile)
    precision = resolve_precision(args.precision, device)
    use_precision(precision, device)
    model = train.network_on_device(UNet3D.from_config(preset_config(preset)), device)
    runner = training_network(model, 1, device, compile_it=config.compile)
    batches = random_batches(args.warmup + args.steps, args.batch_size, args.edge, device)
    flops = step_flops(model, batches[0], config, precision, device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=len(batches))
    augmenter = input_augmenter(args.augment, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    reset_peak_memory(device)
    started = time.perf_counter()
    for batch in batches[:args.warmup]:
        train.train_step(runner, batch, optimiser, scheduler, config, precision, device,
                         augmenter, scaler)
    _synchronise(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for batch in batches[args.warmup:]:
        loss = train.train_step(runner, batch, optimiser, scheduler, config, precision, device,
                                augmenter, scaler)
    float(loss)
    _synchronise(device)
    seconds = time.perf_counter() - started
    peak_MiB = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
                else peak_rss_MiB())
    return {"preset": preset, "precision": precision_name(precision), "edge": args.edge,
            "batch_size": args.batch_size, "steps": args.steps, "compile": args.compile,
            "augment": args.augment, "cubes_per_s": args.steps * args.batch_size / seconds,
            "ms_per_step": 1000 * seconds / args.steps, "tflop_per_step": flops / 1e12,
            "achieved_tflops": flops * args.steps / seconds / 1e12,
            "warmup_seconds": warmup_seconds, "peak_memory_MiB": peak_MiB,
            "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["light", "paper"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="cubes per step (default: 16 on CUDA, 2 on a CPU)")
    parser.add_argument("--edge", type=int, default=None,
                        help="cube edge (default: 64 on CUDA, 32 on a CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default: 30 on CUDA, 3 on a CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 5 on CUDA, 1 on a CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from cryosamu_cli.device import resolve_device, resolve_precision

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (16 if cuda else 2)
    args.edge = args.edge or (64 if cuda else 32)
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    dtype = resolve_precision(args.precision, device) or torch.float32
    rate = matrix_tflops(device, dtype, 8192 if cuda else 2048)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device: {name}; matrix rate in {dtype}: {rate:.2f} TFLOP/s (measured now)")
    rows = []
    for preset in args.presets:
        row = measure(preset, args, device)
        row["share_of_matrix_rate"] = row["achieved_tflops"] / rate
        rows.append(row)
        print(f"{preset:>6} {row['precision']} {row['edge']}³ x{row['batch_size']}: "
              f"{row['cubes_per_s']:8.2f} cubes/s, {row['ms_per_step']:8.1f} ms/step, "
              f"{row['achieved_tflops']:7.3f} TFLOP/s ({100 * row['share_of_matrix_rate']:.1f} % "
              f"of the matrix rate), peak {row['peak_memory_MiB'] / 1024:.2f} GiB, "
              f"{row['parameters_M']:.2f} M parameters, warm-up {row['warmup_seconds']:.1f} s",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "matrix_tflops": rate,
                                         "matrix_dtype": str(dtype), "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Finetune training throughput (images/s) of EfficientNet-Lite0 with and without
channels_last, measured in one run.

One training step is what the finetune regime does per batch: the backbone forward in
train mode, DSH's loss on the pooled feature, backward, an SGD step for the backbone
(the harness's recipe) and the method's optimiser. Images are random tensors already in
memory (decoding is not timed). The two memory formats alternate round by round and each
reports its median round, so a change in machine load hits both alike.

    python benchmarks/finetune_throughput.py                  # 224 px, batch 16
    python benchmarks/finetune_throughput.py --size 64 --steps 1 --rounds 1   # seconds
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmark.features.backbones import build_backbone
from benchmark.run.device import Amp, resolve_device
from benchmark.run.inputs import BACKBONE_SGD
from benchmark.run.loop import build_optimizer
from plugins.dsh import DSH


def make_step(channels_last: bool, device: torch.device, precision: str, batch: int, size: int):
    """A closure running one training step; the model is built once per memory format."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0").to(device)
    method = DSH(bits=32, num_classes=10, input_shapes={"pooled": (backbone.feature_dim,)}).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    optimizers = [build_optimizer(method, DSH.train_config["optimizer"]),
                  torch.optim.SGD(backbone.parameters(), **BACKBONE_SGD)]
    amp = Amp(device, precision)
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(batch, device=device) % 10
    backbone.train()
    method.train()

    def step():
        with amp.autocast():
            pooled = backbone(images)["pooled"]
            loss = sum(method.loss({"inputs": {"pooled": pooled}, "labels": labels,
                                    "indices": torch.arange(batch, device=device)}).values())
        amp.backward_and_step(loss, optimizers)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    steps = {fmt: make_step(fmt == "channels_last", device, args.precision, args.batch, args.size)
             for fmt in ("contiguous", "channels_last")}
    for step in steps.values():
        step()  # warm-up (allocations, kernel selection)
    rates = {fmt: [] for fmt in steps}
    for _ in range(args.rounds):
        for fmt, step in steps.items():
            tick = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[fmt].append(args.steps * args.batch / (time.perf_counter() - tick))
    print(f"EfficientNet-Lite0 finetune step at {args.size} px, batch {args.batch}, {args.precision}, "
          f"{device}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    median = {fmt: statistics.median(r) for fmt, r in rates.items()}
    for fmt, value in median.items():
        print(f"  {fmt:<14} {value:8.2f} img/s  (rounds: {', '.join(f'{r:.2f}' for r in rates[fmt])})")
    print(f"  channels_last / contiguous: {median['channels_last'] / median['contiguous']:.2f}x")


if __name__ == "__main__":
    main()

"""Removes one head from the neural memory of the layers named, where the head reads nothing into
the model: its output columns (out_proj) are all zero, so the model computes the same without it
(up to the order a matrix product adds the remaining terms in) and every session's state is one
head smaller.

    python3 -m titans_torch.drop_memory_head --model_dir models/default --out narrower \
        --layers 0 --head 4

Why (docs/evaluation.md, "A head count per layer"): `add_memory_head` without `--layers` gives
every layer a copy, but the default model's fact head is trained in layer 1 only; layer 0's copy
keeps zero output columns and costs each session 0.063 MiB of state and every decode step its
memory update. Dropping it keeps the trained model exactly as it was measured, rather than
retraining with one head fewer (the training is chaotic in the last bits: a rerun with a
different layer 0 ends elsewhere).

Every memory tensor of those layers loses the head's share (rows of the projections,
convolutions, output gate and norm; an entry of each gate; a slice of the initial memory
weights) and out_proj its columns; the heads after it move down by one. memory.num_heads in
config.json becomes a list, one count per layer, unless every layer ends with the same count.
Refused (exit 2) where the head's output columns are not all zero, unless `--allow_change`; for
MAC and SWA; and for a layer's last head.
"""
from __future__ import annotations

import argparse
import sys

import torch

from titans_torch.add_memory_head import parse_layers, run_head_tool, with_head_counts
from titans_torch.model import TitansModel, memory_head_share, memory_heads


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.drop_memory_head",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--head", type=int, required=True, help="the memory head to remove (0-based)")
    p.add_argument("--layers", required=True,
                   help="comma-separated memory layers (0-based) that lose the head")
    p.add_argument("--allow_change", action="store_true",
                   help="remove the head even where its output columns are not zero (the model "
                        "then computes something else)")
    return p.parse_args(argv)


def drop_memory_head(model: TitansModel, head: int, layers, allow_change: bool = False):
    """A new model without memory head `head` in each of `layers`, and the largest |entry| of the
    output columns removed (0.0: the same function). ValueError for MAC, SWA, a layer or head out
    of range, a layer's only head, or nonzero output columns without `allow_change`."""
    config = model.config
    if config["variant"] in ("mac", "swa"):
        raise ValueError(f"variant {config['variant']} cannot lose a memory head")
    num_layers, dh = config["num_layers"], config["head_dim"]
    layers = set(layers)
    if not layers:
        raise ValueError("no layer to remove a head from")
    largest = 0.0
    for layer in sorted(layers):
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} out of range [0, {num_layers})")
        heads = memory_heads(config, layer)
        if not 0 <= head < heads:
            raise ValueError(f"--head {head} out of range [0, {heads}) in layer {layer}")
        if heads == 1:
            raise ValueError(f"layer {layer} has one memory head; it cannot lose it")
        name = f"layers.{layer}.memory.out_proj.weight"
        axis, width = memory_head_share(name, dh)
        columns = model.p(name).narrow(axis, head * width, width)
        largest = max(largest, columns.abs().max().item())
    if largest > 0 and not allow_change:
        raise ValueError(f"head {head}'s output columns are not zero (largest |entry| {largest:g}):"
                         f" removing it changes the model (--allow_change to do it anyway)")

    def remove_share(name, before, axis, width):
        rest = before.shape[axis] - (head + 1) * width
        return torch.cat([before.narrow(axis, 0, head * width),
                          before.narrow(axis, (head + 1) * width, rest)], axis)

    counts = [memory_heads(config, i) - (i in layers) for i in range(num_layers)]
    return with_head_counts(model, counts, remove_share), largest


def main(argv=None) -> int:
    args = parse_args(argv)

    def build(model):
        narrower, largest = drop_memory_head(model, args.head, parse_layers(args.layers) or [],
                                             args.allow_change)
        return narrower, f"the removed output columns' largest |entry| {largest:g}"

    return run_head_tool("drop_memory_head", args, argv, build)


if __name__ == "__main__":
    sys.exit(main())

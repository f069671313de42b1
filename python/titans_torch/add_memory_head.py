"""Adds one head to each layer's neural memory (or to the layers named), a copy of an existing
head, without changing what the model computes: the copy's output columns start at zero (or the
copy and its original each take half of the original's).

    python3 -m titans_torch.add_memory_head --model_dir models/default --out wider --clone 0 \
        --layers 1

Why (docs/evaluation.md, "A memory head of its own for facts"): the recall head reads both
passkeys and fact lists, and refitting its queries to tell the facts' names apart costs passkey
reads; another head repurposed for the facts costs the text that head modelled (0.1 bits per
byte). A new head that starts as the recall head's copy already writes and keeps what a session is
told; `fit_keys --head <new>` can then teach its keys the names and `train_recall --head <new>
--only_head` its read, while every old head keeps its weights.

The new head is the last: in each layer that takes it, the memory's head count becomes one more
than before (memory.num_heads in config.json; the attention's num_heads when absent). With
`--layers` naming only some layers, memory.num_heads becomes a list, one count per layer, and the
other layers keep their heads and their state per session (a copy that no training uses still costs
every session its state: `drop_memory_head` removes one). Every memory tensor of a layer that takes
the head gets the clone's share appended (rows of the projections, convolutions, output gate and
norm; an entry of each gate; a slice of the initial memory weights) and out_proj gets the clone's
columns: zero with `--new_output zero` (the default: the original head keeps its output exactly,
and the new head's read reaches the model only as training grows them), or with `--new_output half`
the original's halved in both places (exact in binary floating point). Either way each output is
the same sum of the same terms, up to the order a matrix product adds them in. With `half`, the
original's passkey reads came out at half strength beside a copy whose queries were then refitted,
and 64 KiB passkeys in held-out English fell from 28 to 2 of 40 (docs/evaluation.md). The memory
state per session grows by one head's share (docs/model.md). MAC is refused (its retrieval reads
the memory with the attention's heads).
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

from titans_torch.model import TitansModel, memory_head_share, memory_heads
from titans_torch.write_gate import save_with_command


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.add_memory_head",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--clone", type=int, required=True,
                   help="the memory head (0-based, the same in every layer) the new one copies")
    p.add_argument("--layers", default="",
                   help="comma-separated memory layers (0-based) that take the new head; "
                        "default every layer")
    p.add_argument("--new_output", choices=("zero", "half"), default="zero",
                   help="the new head's output columns: zero, or half of the original's (which "
                        "keeps the other half)")
    return p.parse_args(argv)


def parse_layers(text: str):
    """--layers of the head tools: comma-separated 0-based layer numbers, None when empty.
    ValueError naming the flag when it is not that."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated layer numbers, got {text!r}") from None


def head_counts(config: dict):
    """The memory's head count in each layer, in layer order."""
    return [memory_heads(config, i) for i in range(config["num_layers"])]


def with_head_counts(model: TitansModel, counts, reshape) -> TitansModel:
    """A new model like `model` with `counts` memory heads per layer (written as one count where
    every layer has the same, the form of every model before per-layer counts, else as a list):
    every tensor whose shape is unchanged copied, every other one `reshape(name, tensor, axis,
    width)`, given head h's share of it as `tensor.narrow(axis, h * width, width)`."""
    config = copy.deepcopy(model.config)
    config["memory"]["num_heads"] = counts[0] if len(set(counts)) == 1 else list(counts)
    new = TitansModel(config)
    with torch.no_grad():
        for name, _, _, _ in new.slots:
            tensor, before = new.p(name), model.p(name)
            if tensor.shape == before.shape:
                tensor.copy_(before)
            else:
                tensor.copy_(reshape(name, before,
                                     *memory_head_share(name, config["head_dim"])))
    return new


def run_head_tool(module: str, args, argv, build) -> int:
    """The command line of the head tools: loads --model_dir, calls build(model) -> (new model,
    what to report), writes --out with the command as its description and prints the report;
    exit 2 with the message on ValueError, nothing written."""
    model = TitansModel.load(args.model_dir)
    try:
        new, report = build(model)
    except ValueError as e:
        print(f"{module}: {e}", file=sys.stderr)
        return 2
    save_with_command(new, args.out, module, argv)
    print(f"wrote {args.out}: memory heads per layer {head_counts(new.config)}; {report}")
    return 0


def add_memory_head(model: TitansModel, clone: int, new_output: str = "zero",
                    layers=None) -> TitansModel:
    """A new model with one more memory head in each of `layers` (None: every layer), a copy of
    head `clone` (see above). ValueError for MAC, SWA (no memory), a head out of range in one of
    those layers, or a layer out of range."""
    config = model.config
    if config["variant"] in ("mac", "swa"):
        raise ValueError(f"variant {config['variant']} cannot take another memory head")
    num_layers = config["num_layers"]
    layers = set(range(num_layers)) if layers is None else set(layers)
    if not layers:
        raise ValueError("no layer to add a head to")
    for layer in sorted(layers):
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} out of range [0, {num_layers})")
        if not 0 <= clone < memory_heads(config, layer):
            raise ValueError(f"--clone {clone} out of range [0, {memory_heads(config, layer)}) "
                             f"in layer {layer}")

    def append_copy(name, before, axis, width):
        copy_of = before.narrow(axis, clone * width, width)
        if name.endswith("memory.out_proj.weight") and new_output == "zero":
            copy_of = torch.zeros_like(copy_of)
        elif name.endswith("memory.out_proj.weight"):  # half: both copies take half
            copy_of = copy_of * 0.5
            before = before.clone()
            before.narrow(axis, clone * width, width).copy_(copy_of)
        return torch.cat([before, copy_of], axis)

    counts = [memory_heads(config, i) + (i in layers) for i in range(num_layers)]
    return with_head_counts(model, counts, append_copy)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_head_tool(
        "add_memory_head", args, argv,
        lambda model: (add_memory_head(model, args.clone, args.new_output,
                                       parse_layers(args.layers)),
                       f"the last of each layer that took one a copy of head {args.clone}"))


if __name__ == "__main__":
    sys.exit(main())

"""Lowers how hard one memory head writes, everywhere, by shifting its theta gate's bias.

    python3 -m titans_torch.write_gate --model_dir models/default --out calibrated \
        --layer 1 --head 0 --theta_bias_shift -2

theta_t = theta_max * sigmoid(w . x_t + b) per head (docs/model.md): a shift of b by -s divides a
small theta by about e^s and a saturated one by less, so the head keeps writing hard where its
gate is open (a passkey's digits: theta 0.077 in the stage-7 model's recall head) and writes far
less everywhere else (ordinary text: 0.0099; `scripts/memory-probe.py gates`). Every write of text erases a little of what the
head holds (the delta rule's error term reaches every stored association whose key is not
orthogonal), so fewer small writes keep a key longer; docs/evaluation.md has the diagnosis and
the measurements behind the default model's calibration. The output is the same model with that
one bias changed (initialization "trained", the command in its description), which titans-server
serves.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import List, Tuple

import torch

from titans_torch import passkey
from titans_torch.model import TitansModel


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.write_gate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--layer", type=int, required=True, help="memory layer (0-based)")
    p.add_argument("--head", required=True,
                   help="head within the layer (0-based), or 'auto': the head whose gate opens "
                        "most on a passkey's digits against the text around them (recall_head)")
    p.add_argument("--theta_bias_shift", type=float, required=True,
                   help="added to the head's theta gate bias (negative: writes less)")
    return p.parse_args(argv)


def _check(model: TitansModel, layer: int, head=None) -> None:
    """ValueError unless the model has a memory layer `layer` (and a head `head`)."""
    if model.config["variant"] == "swa":
        raise ValueError("an attention-only model has no memory gates")
    if not 0 <= layer < model.config["num_layers"]:
        raise ValueError(f"layer {layer} out of range [0, {model.config['num_layers']})")
    if head is not None and not 0 <= head < model.config["num_heads"]:
        raise ValueError(f"head {head} out of range [0, {model.config['num_heads']})")


def shift_theta_bias(model: TitansModel, layer: int, head: int, shift: float) -> None:
    """Adds `shift` to layer `layer`'s theta gate bias of head `head`, in place.
    ValueError if the model has no memory there or the head does not exist."""
    _check(model, layer, head)
    with torch.no_grad():
        model.p(f"layers.{layer}.memory.theta_proj.bias")[head] += shift


# The probe for --head auto: passkeys in RULER's noise haystack (what every model of the recipe
# trains on, so no evaluation text is looked at).
_KEYS = ("71432", "58209", "30967", "92815")


def recall_head(model: TitansModel, layer: int) -> Tuple[int, List[float]]:
    """The head of memory layer `layer` whose theta gate is most open on passkey digits relative
    to the haystack around them, and every head's ratio (mean theta on the digits / elsewhere).
    ValueError if the model has no memory layer `layer`."""
    _check(model, layer)
    inputs = []  # layer `layer`'s memory input, one piece per read (MAC: per segment)
    ratios = torch.zeros(model.config["num_heads"], dtype=torch.float64)
    model.memory_observer = lambda i, x, q, k, out: inputs.append(x) if i == layer else None
    try:
        for key in _KEYS:
            text = passkey.NOISE * 4 + passkey.needle(key) + passkey.NOISE * 4
            inputs.clear()
            with torch.no_grad():
                model.score(list(text.encode()))
                _, _, theta = model.gates(layer, torch.cat(inputs, 1)[:, 1:])  # without <|bos|>
            theta = theta[0].double()  # [T, H]
            digits = torch.zeros(len(text), dtype=torch.bool)
            for at in (text.index(key), text.rindex(key)):
                digits[at:at + len(key)] = True
            ratios += theta[digits].mean(0) / theta[~digits].mean(0)
    finally:
        model.memory_observer = None
    ratios /= len(_KEYS)
    return int(ratios.argmax().item()), ratios.tolist()


def main(argv=None) -> int:
    args = parse_args(argv)
    model = TitansModel.load(args.model_dir)
    try:
        if args.head == "auto":
            head, ratios = recall_head(model, args.layer)
            print(f"recall head of layer {args.layer}: {head} (theta on digits / elsewhere: "
                  + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        else:
            try:
                head = int(args.head)
            except ValueError:
                raise ValueError(f"--head must be an index or 'auto', not {args.head!r}")
        shift_theta_bias(model, args.layer, head, args.theta_bias_shift)
    except ValueError as e:
        print(f"write_gate: {e}", file=sys.stderr)
        return 2
    command = "python3 -m titans_torch.write_gate " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    previous = model.config.get("description", "")
    model.save(args.out, description=f"{command}. Started from a model described as: {previous}")
    print(f"wrote {args.out}: layers.{args.layer}.memory.theta_proj.bias[{head}] "
          f"{args.theta_bias_shift:+g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Calibrates one memory head's write gate: lowers how hard it writes everywhere (a shift of its
theta gate's bias), and/or fits the gate to write the digits a session is told but not the digits
of the text it reads.

    python3 -m titans_torch.write_gate --model_dir models/default --out calibrated \
        --layer 1 --head 0 --theta_bias_shift -2
    python3 -m titans_torch.write_gate --model_dir calibrated --out fitted \
        --layer 1 --head auto --fit_on data/kjv.txt,data/english.txt

theta_t = theta_max * sigmoid(w . x_t + b) per head (docs/model.md): a shift of b by -s divides a
small theta by about e^s and a saturated one by less, so the head keeps writing hard where its
gate is open (a passkey's digits: theta 0.077 in the stage-7 model's recall head) and writes far
less everywhere else (ordinary text: 0.0099; `scripts/memory-probe.py gates`). Every write of text erases a little of what the
head holds (the delta rule's error term reaches every stored association whose key is not
orthogonal), so fewer small writes keep a key longer; docs/evaluation.md has the diagnosis and
the measurements behind the default model's calibration. The output is the same model with that
one bias changed (initialization "trained", the command in its description), which titans-server
serves.

The fit (--fit_on): in long licence text, the recall head loses many of its keys to the text's
own digits (0.4% of its bytes: with them deleted, 9 of 10 keys are recalled after 64 KiB instead
of 4), which the calibrated gate writes about 6 times harder than other text (theta 0.0147
against 0.0024), because they look like a key's digits. In MAL, MAG and LMM the gate's input is
the layer's input, which does not depend on the gate, so its new weights can be fitted offline,
exactly (MAC's memory reads attention over its own retrievals, so the fit refuses MAC): streams of the training text (the part titans-train
trains on: all but the last 5% of each file) with a passkey and four facts planted in the formats
the model was trained on are read once, the layer's input recorded, and the head's gate row
(weights and bias: d + 1 numbers) refitted to minimise
    mean theta on the text's digits / its value before             (write the text's digits less)
  + mean over the text's other bytes of (logit' - logit)^2        (write the rest as before: those
                                                                    writes help predict text)
  + 10 * mean over the told digits of max(0, logit - logit')^2    (write what it is told as hard)
  + l2 * |weight change|^2
with L-BFGS in float64, one thread (so the result does not depend on the machine's cores).
Writing less of all text as well recalls more still in held-out English but costs 0.007-0.02
bits per byte (docs/evaluation.md), which is why the rest of the text keeps its writes.
"""
from __future__ import annotations

import argparse
import random
import shlex
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from titans_torch import passkey
from titans_torch.model import TitansModel, memory_heads


def add_head_arguments(p: argparse.ArgumentParser) -> None:
    """--model_dir, --out, --layer and --head: which model's head a gate tool changes, and where
    the new model goes (shared by write_gate and train_gate)."""
    p.add_argument("--model_dir", required=True, help="model to start from")
    p.add_argument("--out", required=True, help="directory of the new model")
    p.add_argument("--layer", type=int, required=True, help="memory layer (0-based)")
    p.add_argument("--head", required=True,
                   help="head within the layer (0-based), or 'auto': the head whose gate opens "
                        "most on a passkey's digits against the text around them (recall_head)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m titans_torch.write_gate",
                                description=__doc__.split("\n\n")[0])
    add_head_arguments(p)
    p.add_argument("--theta_bias_shift", type=float, default=0.0,
                   help="added to the head's theta gate bias (negative: writes less)")
    p.add_argument("--fit_on", default="",
                   help="training text files (comma-separated): fit the head's gate to write a "
                        "task's digits and not the text's own (after the shift, if any)")
    p.add_argument("--fit_streams", type=int, default=60, help="streams the fit reads")
    p.add_argument("--fit_seed", type=int, default=1)
    p.add_argument("--fit_l2", type=float, default=1e-2,
                   help="weight of the squared change of the gate's weights")
    args = p.parse_args(argv)
    if args.theta_bias_shift == 0 and not args.fit_on:
        p.error("nothing to do: give --theta_bias_shift and/or --fit_on")
    if args.fit_streams < 1:
        p.error("--fit_streams must be at least 1")
    return args


def _check(model: TitansModel, layer: int, head=None) -> None:
    """ValueError unless the model has a memory layer `layer` (and a head `head`)."""
    if model.config["variant"] == "swa":
        raise ValueError("an attention-only model has no memory gates")
    if not 0 <= layer < model.config["num_layers"]:
        raise ValueError(f"layer {layer} out of range [0, {model.config['num_layers']})")
    if head is not None and not 0 <= head < memory_heads(model.config, layer):
        raise ValueError(f"head {head} out of range [0, {memory_heads(model.config, layer)})")


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
    ratios = torch.zeros(memory_heads(model.config, layer), dtype=torch.float64)
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


# The fit (--fit_on). Byte classes of a fit stream.
_TOLD, _TEXT_DIGIT, _TEXT, _OTHER = 0, 1, 2, 3


def resolve_head(model: TitansModel, layer: int, spec: str,
                 say: Callable[[str], None] = print) -> int:
    """The head --head names: an index (checked), or 'auto' (recall_head, whose ratios go to
    `say`). ValueError for anything else, or a layer or head the model does not have."""
    if spec == "auto":
        head, ratios = recall_head(model, layer)
        say(f"recall head of layer {layer}: {head} (theta on digits / elsewhere: "
            + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        return head
    try:
        head = int(spec)
    except ValueError:
        raise ValueError(f"--head must be an index or 'auto', not {spec!r}")
    _check(model, layer, head)
    return head


def split_training_text(data: bytes, test_fraction: float = 0.05) -> Tuple[str, str]:
    """(training part, held-out part) of one file, split as titans-train splits it."""
    test = int(len(data) * test_fraction)
    train, held_out = data[:len(data) - test], data[len(data) - test:]
    return train.decode("utf-8", "replace"), held_out.decode("utf-8", "replace")


def read_training_texts(paths: str) -> Tuple[List[str], List[str]]:
    """The training parts and the held-out parts of comma-separated files. OSError if one
    cannot be read."""
    training, held_out = [], []
    for path in paths.split(","):
        with open(path, "rb") as f:
            train_part, held_part = split_training_text(f.read())
        training.append(train_part)
        held_out.append(held_part)
    return training, held_out


def save_with_command(model: TitansModel, out: str, module: str, argv) -> None:
    """Writes `model` to `out` with the command that made it (and the model it started from) as
    its description."""
    command = f"python3 -m titans_torch.{module} " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    previous = model.config.get("description", "")
    model.save(out, description=f"{command}. Started from a model described as: {previous}")


def fit_stream(rng: random.Random, text: str, length: int = 3000) -> Tuple[List[int], List[int]]:
    """A window of `text` with a passkey needle and four facts planted at random places (in the
    trained formats), as bytes, and each byte's class: a told digit (the key's and the facts'
    values), a digit of the text, other text, or the needle's and facts' other bytes."""
    key = passkey.random_key(rng)
    names: List[str] = []
    while len(names) < 4:
        name = "".join(chr(ord("a") + rng.randrange(26)) for _ in range(3))
        if name not in names:
            names.append(name)
    facts = "".join(passkey.fact(n, f"{rng.randrange(10)}{rng.randrange(10)}") for n in names)
    start = rng.randrange(0, max(1, len(text) - length))
    window = text[start:start + length]
    a = rng.randrange(0, max(1, len(window) // 2))
    b = rng.randrange(a, max(a + 1, len(window)))
    tokens: List[int] = []
    classes: List[int] = []
    for told, piece in ((False, window[:a]), (True, passkey.needle(key)), (False, window[a:b]),
                        (True, facts), (False, window[b:])):
        for byte in piece.encode("utf-8", "replace"):
            digit = ord("0") <= byte <= ord("9")
            classes.append((_TOLD if digit else _OTHER) if told else
                           (_TEXT_DIGIT if digit else _TEXT))
            tokens.append(byte)
    return tokens, classes


def _record(model: TitansModel, layer: int, texts: Sequence[str], streams: int,
            seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Layer `layer`'s memory input over `streams` fit streams ([N, d]) and each row's class."""
    rng = random.Random(seed)
    inputs: List[torch.Tensor] = []
    xs, classes = [], []
    model.memory_observer = lambda i, x, q, k, out: inputs.append(x) if i == layer else None
    try:
        for s in range(streams):
            tokens, c = fit_stream(rng, texts[s % len(texts)])
            inputs.clear()
            with torch.no_grad():
                model.score(tokens)
            xs.append(torch.cat(inputs, 1)[0, 1:].double())  # without <|bos|>
            classes += c
    finally:
        model.memory_observer = None
    return torch.cat(xs), torch.tensor(classes)


@dataclass
class FitReport:
    """Mean theta per byte class (told digits, text digits, other text), before and after, on
    the fit's streams and on streams of the held-out text."""
    train_before: Dict[str, float]
    train_after: Dict[str, float]
    held_out_before: Dict[str, float]
    held_out_after: Dict[str, float]


def _theta_by_class(theta: torch.Tensor, classes: torch.Tensor) -> Dict[str, float]:
    return {name: theta[classes == c].mean().item() if (classes == c).any() else float("nan")
            for name, c in (("told digits", _TOLD), ("text digits", _TEXT_DIGIT),
                            ("other text", _TEXT))}


def fit_digit_gate(model: TitansModel, layer: int, head: int, training: Sequence[str],
                   held_out: Sequence[str], streams: int = 60, seed: int = 1,
                   l2: float = 1e-2) -> FitReport:
    """Refits head `head`'s theta gate row of memory layer `layer` in place (module docstring):
    reads `streams` fit streams of the `training` texts, fits, and reports theta per byte class
    before and after on them and on 10 streams of the `held_out` texts. ValueError if the model
    has no memory there (or is MAC), the head does not exist, or the streams hold no text
    digits."""
    _check(model, layer, head)
    if model.config["variant"] == "mac":
        raise ValueError("the fit needs a memory whose input does not depend on its gates "
                         "(MAL, MAG, LMM); MAC's reads its own retrievals")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, classes = _record(model, layer, training, streams, seed)
        x_held, classes_held = _record(model, layer, held_out, 10, seed + 1)
        if not (classes == _TEXT_DIGIT).any():
            raise ValueError("the fit streams hold no digits of text to write less")
        m = f"layers.{layer}.memory.theta_proj."
        w = model.p(m + "weight")[head].detach().double()
        b = model.p(m + "bias")[head].detach().double()
        theta_max = model.config["memory"]["theta_max"]
        logit, logit_held = x @ w + b, x_held @ w + b
        told, text_digit, text = (classes == _TOLD), (classes == _TEXT_DIGIT), (classes == _TEXT)
        digits_before = torch.sigmoid(logit[text_digit]).mean()
        dw = torch.zeros_like(w, requires_grad=True)
        db = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([dw, db], max_iter=500, line_search_fn="strong_wolfe")

        def objective():
            optimizer.zero_grad()
            new = logit + x @ dw + db
            loss = (torch.sigmoid(new[text_digit]).mean() / digits_before
                    + ((new - logit)[text] ** 2).mean()
                    + 10 * (torch.clamp(logit - new, min=0)[told] ** 2).mean()
                    + l2 * (dw ** 2).sum())
            loss.backward()
            return loss

        for _ in range(5):
            optimizer.step(objective)
        with torch.no_grad():
            report = FitReport(
                _theta_by_class(theta_max * torch.sigmoid(logit), classes),
                _theta_by_class(theta_max * torch.sigmoid(logit + x @ dw + db), classes),
                _theta_by_class(theta_max * torch.sigmoid(logit_held), classes_held),
                _theta_by_class(theta_max * torch.sigmoid(logit_held + x_held @ dw + db),
                                classes_held))
            model.p(m + "weight")[head] += dw.to(model.p(m + "weight").dtype)
            model.p(m + "bias")[head] += db.to(model.p(m + "bias").dtype)
    finally:
        torch.set_num_threads(threads)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    model = TitansModel.load(args.model_dir)
    try:
        head = resolve_head(model, args.layer, args.head)
        if args.theta_bias_shift != 0:
            shift_theta_bias(model, args.layer, head, args.theta_bias_shift)
        report = None
        if args.fit_on:
            training, held_out = read_training_texts(args.fit_on)
            report = fit_digit_gate(model, args.layer, head, training, held_out,
                                    args.fit_streams, args.fit_seed, args.fit_l2)
    except (ValueError, OSError) as e:
        print(f"write_gate: {e}", file=sys.stderr)
        return 2
    save_with_command(model, args.out, "write_gate", argv)
    if args.theta_bias_shift != 0:
        print(f"wrote {args.out}: layers.{args.layer}.memory.theta_proj.bias[{head}] "
              f"{args.theta_bias_shift:+g}")
    if report is not None:
        print(f"wrote {args.out}: layers.{args.layer}.memory.theta_proj row {head} fitted; "
              "mean theta before -> after:")
        for where, before, after in (("fit streams", report.train_before, report.train_after),
                                     ("held-out streams", report.held_out_before,
                                      report.held_out_after)):
            print(f"  {where}: " + ", ".join(f"{k} {before[k]:.4f} -> {after[k]:.4f}"
                                             for k in before))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Probe (docs/evaluation.md, "Training the keys apart"): can one memory head's queries and keys
tell the facts of a multi-fact task apart at all, and does the read follow when they do?

Records the layer's memory input (after its RMSNorm) on --tasks recall tasks (2-8 facts, 256 or
1,024 bytes of filler, 30% RULER noise, 70% training text; a passkey needle and question after
them), then refits only the head's rows of q_proj, k_proj, q_conv and k_conv offline (Adam) to
minimise, at each question, the cross-entropy of softmax(q . k / tau) over the stated facts' keys
(the query at '=' against the keys at each fact's first value digit, and one byte later for the
second digit), plus --keep times the squared change of the head's unit keys and queries at 64
random filler bytes and at the needle and question of each task. Prints the held-out tasks'
(another 60, seed 99) contrastive loss and how often the own fact's key scores highest, and
with --out writes the model with the refitted rows for titans-eval. An experiment, not a stage.

    scripts/probe-key-fit.py --tasks 100 --iters 150 --out /tmp/keyfit
"""
import argparse, math, os, random, re, sys, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import torch, torch.nn.functional as F
from titans_torch import passkey
from titans_torch.model import BOS, TitansModel
from titans_torch.write_gate import read_training_texts
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model_dir", default=os.path.join(ROOT, "models/default"))
parser.add_argument("--out", default="", help="write the model with the refitted rows here")
parser.add_argument("--tasks", type=int, default=200, help="recorded tasks the fit sees")
parser.add_argument("--tau", type=float, default=0.1, help="softmax temperature over q . k")
parser.add_argument("--keep", type=float, default=10.0,
                    help="weight of the change of the keys and queries the fit must leave alone")
parser.add_argument("--own", type=float, default=0.0, help="weight of 1 - q . k with the own fact's key")
parser.add_argument("--iters", type=int, default=300, help="Adam steps over all recorded tasks")
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--layer", type=int, default=1)
parser.add_argument("--head", type=int, default=0)
args = parser.parse_args()
torch.set_num_threads(args.threads)
model = TitansModel.load(args.model_dir)
texts, _ = read_training_texts(
    ",".join(os.path.join(ROOT, "data", f) for f in ("english.txt", "kjv.txt")))


def task(rng, pairs, gap, source):
    """A recall task (source None: in the noise) with a passkey needle, 128 filler bytes and the
    passkey question after it (their keys and queries are held in place by the fit)."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source)
    key = passkey.random_key(rng)
    needle = len(text)
    text += passkey.needle(key).encode() + passkey.haystack(rng, 128, source) + \
        passkey.QUESTION.encode()
    return list(text), answers, order, filler, (needle, len(text))


recorded = {}


def record_input(layer, x, q, k, out):
    if layer == args.layer:
        recorded["x"] = x[0]  # the memory's input after its RMSNorm [T, d]


model.memory_observer = record_input
H, dh = model.config["num_heads"], model.config["head_dim"]
head_rows = slice(args.head * dh, (args.head + 1) * dh)
taps = model.p(f"layers.{args.layer}.memory.k_conv.weight").shape[1]


def windows(x, positions):
    """The conv's input windows [N, taps, d] ending at the input positions (zeros before 0)."""
    index = torch.tensor(positions)[:, None] + torch.arange(1 - taps, 1)[None, :]
    return x[index.clamp_min(0)] * (index >= 0)[..., None]


def collect(count, seed):
    """Per task: key windows (each fact's first, then second digit), query windows (each
    question's '=' then first digit, in question order), the order, the fact count, the
    windows to keep (64 filler bytes, the needle, the question) and the session's W1 at the end."""
    rng, data = random.Random(seed), []
    with torch.no_grad():
        for _ in range(count):
            pairs, gap = rng.randrange(2, 9), rng.choice([256, 1024])
            source = None if rng.random() < 0.3 else texts[0 if rng.random() < 0.75 else 1]
            text, answers, order, (begin, end), (needle, question_end) = task(rng, pairs, gap,
                                                                              source)
            _, state = model(torch.tensor([[BOS] + text]), None)
            x = recorded["x"]
            w1 = state.layers[args.layer].weights[0][0, args.head]  # [hidden, dh]
            # Input position = byte offset + 1 (<|bos|> first); a fact's digits at 8 i + 4, + 5.
            key_at = [8 * i + 5 + d for d in (0, 1) for i in range(pairs)]
            query_at = [answers[2 * j] + d for d in (0, 1) for j in range(pairs)]
            keep_at = rng.sample(range(begin + 4, end), 64) + list(range(needle + 2,
                                                                         question_end + 1))
            data.append((windows(x, key_at), windows(x, query_at), order, pairs,
                         windows(x, keep_at), w1))
    return data


began = time.time()
fit_tasks, held_out_tasks = collect(args.tasks, 1), collect(60, 99)
print(f"collected in {time.time() - began:.0f}s", flush=True)
prefix = f"layers.{args.layer}.memory."
start = {name: model.p(prefix + name)[head_rows].detach().clone()
         for name in ("q_proj.weight", "k_proj.weight", "q_conv.weight", "k_conv.weight")}
fitted = {name: t.clone().requires_grad_(True) for name, t in start.items()}


def unit_rows(window, rows, which):
    """The head's unit query or key rows for input windows: L2norm(SiLU(depthwise conv of the
    projection)), as the model computes them."""
    projected = (window @ rows[which + "_proj.weight"].t() * rows[which + "_conv.weight"].t()[None])
    return F.normalize(F.silu(projected.sum(1)), dim=-1)


def losses(data, rows):
    """(contrastive loss per question (+ --own term), share of questions whose own fact's key
    scores highest, mean squared change of the kept keys and queries)."""
    contrast, right, questions, change = 0.0, 0, 0, 0.0
    for key_windows, query_windows, order, pairs, keep_windows, _ in data:
        keys, queries = unit_rows(key_windows, rows, "k"), unit_rows(query_windows, rows, "q")
        target = torch.tensor(order)
        for d in (0, 1):
            k, q = keys[d * pairs:(d + 1) * pairs], queries[d * pairs:(d + 1) * pairs]
            logits = q @ k.t() / args.tau
            contrast = contrast + F.cross_entropy(logits, target, reduction="sum")
            contrast = contrast + args.own * (1 - (q * k[target]).sum(-1)).sum()
            right += int((logits.argmax(1) == target).sum())
            questions += pairs
        for which in ("k", "q"):
            change = change + (unit_rows(keep_windows, rows, which) -
                               unit_rows(keep_windows, start, which)).pow(2).sum(-1).mean()
    return contrast / questions, right / questions, change / len(data)


def overlaps(data, rows):
    """Mean cosine of the query with its own fact's key and with the others' (first digits), as
    unit vectors (q . k), and as the memory's hidden codes SiLU(W1 x) under the session's own
    W1 (what the W2 part of a write's effect on a read follows)."""
    found = {"qk own": [], "qk other": [], "hidden own": [], "hidden other": []}
    for key_windows, query_windows, order, pairs, _, w1 in data:
        k = unit_rows(key_windows, rows, "k")[:pairs]
        q = unit_rows(query_windows, rows, "q")[:pairs]
        hidden_k = F.normalize(F.silu(k @ w1.t()), dim=-1)
        hidden_q = F.normalize(F.silu(q @ w1.t()), dim=-1)
        own = torch.zeros(pairs, pairs, dtype=torch.bool)
        own[torch.arange(pairs), torch.tensor(order)] = True
        for name, cosines in (("qk", q @ k.t()), ("hidden", hidden_q @ hidden_k.t())):
            found[name + " own"].append(cosines[own])
            found[name + " other"].append(cosines[~own])
    return ", ".join(f"{name} {torch.cat(v).mean():.3f}" for name, v in found.items())


with torch.no_grad():
    contrast, right, _ = losses(held_out_tasks, start)
    print(f"before: val contrast {contrast:.3f} acc {right:.3f}", flush=True)
    print("before, held-out cosines (first digits):", overlaps(held_out_tasks, start), flush=True)
optimizer = torch.optim.Adam(list(fitted.values()), lr=args.lr)
for it in range(args.iters):
    optimizer.zero_grad()
    contrast, right, change = losses(fit_tasks, fitted)
    (contrast + args.keep * change).backward()
    optimizer.step()
    if it % 25 == 0 or it == args.iters - 1:
        with torch.no_grad():
            val_contrast, val_right, val_change = losses(held_out_tasks, fitted)
        print(f"it {it} train c {contrast.item():.3f} acc {right:.3f} keep {change.item():.4f} | "
              f"val c {val_contrast:.3f} acc {val_right:.3f} keep {val_change:.4f}", flush=True)
with torch.no_grad():
    print("after, held-out cosines (first digits):", overlaps(held_out_tasks, fitted), flush=True)
    if args.out:
        for name, rows in fitted.items():
            model.p(prefix + name)[head_rows] = rows
        model.memory_observer = None
        model.save(args.out, description="key fit experiment")

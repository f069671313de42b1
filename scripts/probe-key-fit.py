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
p = argparse.ArgumentParser()
p.add_argument("--model_dir", default=os.path.join(ROOT, "models/default"))
p.add_argument("--out", default="")
p.add_argument("--tasks", type=int, default=200)
p.add_argument("--tau", type=float, default=0.1)
p.add_argument("--keep", type=float, default=10.0)
p.add_argument("--own", type=float, default=0.0, help="weight of 1 - q . k with the own fact's key")
p.add_argument("--iters", type=int, default=300)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--layer", type=int, default=1)
p.add_argument("--head", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
model = TitansModel.load(a.model_dir)
texts, held = read_training_texts(",".join(os.path.join(ROOT, "data", f) for f in ("english.txt", "kjv.txt")))
def task(rng, pairs, gap, source):
    """A recall task (source None: in the noise) with a passkey needle, 128 filler bytes and the
    passkey question after it (their keys and queries are held in place by the fit)."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source)
    key = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(4))
    needle = len(text)
    text += passkey.needle(key).encode() + passkey.haystack(rng, 128, source) + \
        passkey.QUESTION.encode()
    return list(text), answers, order, filler, (needle, len(text))
X = {}
def obs(i, x, q, k, out):
    if i == a.layer: X["x"] = x[0]
model.memory_observer = obs
H, dh = model.config["num_heads"], model.config["head_dim"]
rows = slice(a.head * dh, (a.head + 1) * dh)
def gather(x, pos):  # windows [N, 4, d] ending at input positions pos
    idx = torch.tensor(pos)[:, None] + torch.arange(-3, 1)[None, :]
    return x[idx.clamp_min(0)] * (idx >= 0)[..., None]
def collect(n, seed):
    rng = random.Random(seed); data = []
    with torch.no_grad():
        for t in range(n):
            pairs = rng.randrange(2, 9); gap = rng.choice([256, 1024])
            src = None if rng.random() < 0.3 else texts[0 if rng.random() < 0.75 else 1]
            s, ans, order, (lo, hi), (ndl, qpos) = task(rng, pairs, gap, src)
            _, state = model(torch.tensor([[BOS] + s]), None)
            x = X["x"]
            w1 = state.layers[a.layer].weights[0][0, a.head]  # the session's W1 at the end [hidden, dh]
            kp = [8 * i + 5 + d for d in (0, 1) for i in range(pairs)]
            qp = [ans[2 * j] + d for d in (0, 1) for j in range(pairs)]
            # keep: random text positions, the needle's digits, the question's end
            keep = rng.sample(range(lo + 4, hi), 64) + list(range(ndl + 2, qpos + 1))
            data.append((gather(x, kp), gather(x, qp), order, pairs, gather(x, keep), w1))
    return data
t0 = time.time(); train = collect(a.tasks, 1); val = collect(60, 99)
print(f"collected in {time.time()-t0:.0f}s", flush=True)
m = f"layers.{a.layer}.memory."
Wq0, Wk0 = model.p(m + "q_proj.weight")[rows].clone(), model.p(m + "k_proj.weight")[rows].clone()
tq0, tk0 = model.p(m + "q_conv.weight")[rows].clone(), model.p(m + "k_conv.weight")[rows].clone()
Wq0, Wk0, tq0, tk0 = (t.detach() for t in (Wq0, Wk0, tq0, tk0))
Wq, Wk, tq, tk = (t.clone().requires_grad_(True) for t in (Wq0, Wk0, tq0, tk0))
def proj(win, W, taps):  # win [N,4,d] -> unit [N, dh]
    h = (win @ W.t() * taps.t()[None]).sum(1)
    return F.normalize(F.silu(h), dim=-1)
def loss_of(data, Wq, Wk, tq, tk):
    c, acc, n, keep = 0.0, 0, 0, 0.0
    for kw, qw, order, pairs, kpw, _ in data:
        k, q = proj(kw, Wk, tk), proj(qw, Wq, tq)
        for d in (0, 1):
            kk, qq = k[d * pairs:(d + 1) * pairs], q[d * pairs:(d + 1) * pairs]
            lg = qq @ kk.t() / a.tau; tgt = torch.tensor(order)
            c = c + F.cross_entropy(lg, tgt, reduction="sum")
            c = c + a.own * (1 - (qq * kk[tgt]).sum(-1)).sum(); acc += int((lg.argmax(1) == tgt).sum()); n += pairs
        keep = keep + ((proj(kpw, Wk, tk) - proj(kpw, Wk0, tk0)) ** 2).sum(-1).mean() + ((proj(kpw, Wq, tq) - proj(kpw, Wq0, tq0)) ** 2).sum(-1).mean()
    return c / n, acc / n, keep / len(data)
def overlaps(data, Wq, Wk, tq, tk):
    """Mean cosine of the query with its own fact's key and with the others', as unit vectors
    (q . k), and as the memory's hidden codes SiLU(W1 x) under the session's own W1 (what the
    W2 part of a write's effect on a read follows)."""
    sums = {"qk own": [], "qk other": [], "hidden own": [], "hidden other": []}
    for kw, qw, order, pairs, _, w1 in data:
        k, q = proj(kw, Wk, tk)[:pairs], proj(qw, Wq, tq)[:pairs]
        hk, hq = F.normalize(F.silu(k @ w1.t()), dim=-1), F.normalize(F.silu(q @ w1.t()), dim=-1)
        own = torch.zeros(pairs, pairs, dtype=torch.bool)
        own[torch.arange(pairs), torch.tensor(order)] = True
        for name, m in (("qk", q @ k.t()), ("hidden", hq @ hk.t())):
            sums[name + " own"].append(m[own]); sums[name + " other"].append(m[~own])
    return ", ".join(f"{n} {torch.cat(v).mean():.3f}" for n, v in sums.items())
with torch.no_grad():
    c, acc, _ = loss_of(val, Wq0, Wk0, tq0, tk0); print(f"before: val contrast {c:.3f} acc {acc:.3f}", flush=True)
    print("before, held-out cosines (first digits):", overlaps(val, Wq0, Wk0, tq0, tk0), flush=True)
opt = torch.optim.Adam([Wq, Wk, tq, tk], lr=a.lr)
for it in range(a.iters):
    opt.zero_grad()
    c, acc, keep = loss_of(train, Wq, Wk, tq, tk)
    (c + a.keep * keep).backward(); opt.step()
    if it % 25 == 0 or it == a.iters - 1:
        with torch.no_grad():
            vc, vacc, vkeep = loss_of(val, Wq, Wk, tq, tk)
        print(f"it {it} train c {c.item():.3f} acc {acc:.3f} keep {keep.item():.4f} | val c {vc:.3f} acc {vacc:.3f} keep {vkeep:.4f}", flush=True)
with torch.no_grad():
    print("after, held-out cosines (first digits):", overlaps(val, Wq, Wk, tq, tk), flush=True)
if a.out:
    with torch.no_grad():
        model.p(m + "q_proj.weight")[rows] = Wq; model.p(m + "k_proj.weight")[rows] = Wk
        model.p(m + "q_conv.weight")[rows] = tq; model.p(m + "k_conv.weight")[rows] = tk
    model.memory_observer = None
    model.save(a.out, description="key fit experiment")

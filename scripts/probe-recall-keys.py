#!/usr/bin/python3
"""Probe (docs/evaluation.md, "Training the keys apart"): fine-tunes a subset of a model's
parameters on multi-fact recall tasks (2-8 facts, the titans-eval format), one 8-16 KiB passkey
stream of training text every --passkey_every steps, and the filler's text loss; optionally
adds a contrastive loss on one memory head's addressing: at each question, the query (at '=' for
the first digit, at the first digit for the second) against the keys at every stated fact's
digit, softmax over the facts at temperature --tau, the asked fact the target. Every
--eval_every steps: 20 four-fact tasks per filler (RULER noise, the licence texts) and gap (1 K,
4 K), scored like titans-eval (greedy, teacher-forced), and bits per byte on the first 16 KiB of
the held-out part of data/english.txt. An experiment, not a training stage.

    scripts/probe-recall-keys.py --out /tmp/probe --steps 100 --contrast 1
"""
import argparse, glob, math, os, random, re, sys, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import torch, torch.nn.functional as F
from titans_torch import passkey
from titans_torch.model import BOS, TitansModel
from titans_torch.train_gate import passkey_stream, stream_nats
from titans_torch.write_gate import read_training_texts

p = argparse.ArgumentParser()
p.add_argument("--model_dir", default=os.path.join(ROOT, "models/default"))
p.add_argument("--out", required=True)
p.add_argument("--params", default=r"layers\.1\.memory\.")
p.add_argument("--steps", type=int, default=100)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--lm_weight", type=float, default=1.0)
p.add_argument("--passkey_every", type=int, default=4)
p.add_argument("--pk_len", type=int, default=16384)
p.add_argument("--gaps", default="256,1024,2048,4096")
p.add_argument("--eval_every", type=int, default=25)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--contrast", type=float, default=0.0)
p.add_argument("--tau", type=float, default=0.1)
p.add_argument("--head", type=int, default=0)
p.add_argument("--layer", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
model = TitansModel.load(a.model_dir)
texts, held = read_training_texts(",".join(os.path.join(ROOT, "data", f) for f in ("english.txt", "kjv.txt")))
lic = "".join(open(f, encoding="utf-8", errors="replace").read() for f in sorted(glob.glob(
    "/usr/share/common-licenses/*")) if not re.search(r"/(GFDL|GPL|LGPL)$", f))
names = []
for n, t in model.named_parameters():
    key = n.replace("params.", "").replace("__", ".")
    t.requires_grad_(bool(re.search(a.params, key)))
    if t.requires_grad: names.append(key)
train = [t for t in model.parameters() if t.requires_grad]
print("training", len(train), "tensors", sum(t.numel() for t in train), "numbers", flush=True)
opt = torch.optim.Adam(train, lr=a.lr)
rng = random.Random(a.seed)


def recall_task(rng, pairs, gap, source):
    """One task as (bytes, answer offsets, filler range scored as text or (0, 0) in the noise,
    the order asked); source None is the noise."""
    text, answers, order, filler = passkey.recall_task(rng, pairs, gap, source)
    return list(text), answers, filler if source is not None else (0, 0), order

QK = []
def observer(i, x, q, k, out):
    if i == a.layer: QK.append((q, k))
def run2(rows, ans_rows, ranges):
    QK.clear()
    ids = torch.tensor([[BOS] + r for r in rows])
    nats, logits = stream_nats(model, ids)
    amask = torch.zeros_like(nats, dtype=torch.bool); tmask = torch.zeros_like(amask)
    for r, (ans, (lo, hi)) in enumerate(zip(ans_rows, ranges)):
        for x in ans: amask[r, x] = True
        tmask[r, lo:hi] = True
    return nats, amask, tmask, logits

def evaluate():
    erng = random.Random(1234)
    res = {}
    with torch.no_grad():
        for src_name, src in (("noise", None), ("lic", lic)):
            for gap in (1024, 4096):
                good = tot = 0
                for _ in range(5):
                    rows, ans, rg, _ = zip(*[recall_task(erng, 4, gap, src) for _ in range(4)])
                    nats, am, tm, logits = run2(list(rows), list(ans), list(rg))
                    ids = torch.tensor([[BOS] + r for r in rows])
                    pred = logits.argmax(-1)
                    for r in range(4):
                        for f in range(0, 8, 2):
                            x, y = ans[r][f], ans[r][f + 1]
                            good += int(pred[r, x] == ids[r, x + 1] and pred[r, y] == ids[r, y + 1]); tot += 1
                res[f"{src_name}{gap}"] = f"{good}/{tot}"
            # text bpb on held-out english 8K
        hb = held[0][:16384].encode("utf-8", "replace")[:16384]
        nats, _, _, _ = run2([list(hb)], [[]], [(0, 0)])
        res["heldout_bpb"] = round(nats.mean().item() / math.log(2), 4)
    return res

print("step 0", evaluate(), flush=True)
for step in range(a.steps):
    t0 = time.time()
    opt.zero_grad()
    if a.passkey_every and step % a.passkey_every == a.passkey_every - 1:
        L = rng.choice([a.pk_len // 2, a.pk_len])
        toks, is_text, is_ans = passkey_stream(rng, texts, L)
        n = stream_nats(model, torch.tensor([toks]))[0][0]
        ansl, txt = n[is_ans].mean(), n[is_text].mean()
        kind = "pk"
    else:
        kind = ""
        pairs = rng.randrange(2, 9)
        gap = rng.choice([int(g) for g in a.gaps.split(",")])
        tasks = []
        for _ in range(a.batch):
            t = recall_task(rng, pairs, gap, None if rng.random() < 0.3 else texts[0 if rng.random() < 0.75 else 1])
            tasks.append(t)
        rows, ans, rg, orders = zip(*tasks)
        model.memory_observer = observer if a.contrast else None
        n, am, tm, _ = run2(list(rows), list(ans), list(rg))
        model.memory_observer = None
        ansl = n[am].mean(); txt = n[tm].mean() if tm.any() else torch.zeros(())
        if a.contrast:
            H = model.config["num_heads"]; dh = model.config["head_dim"]
            q = torch.cat([x[0] for x in QK], 1); k = torch.cat([x[1] for x in QK], 1)
            B, T = q.shape[:2]
            q = q.view(B, T, H, dh)[:, :, a.head]; k = k.view(B, T, H, dh)[:, :, a.head]
            cl = []
            for r in range(B):
                for d in (0, 1):
                    keys = k[r, [8 * i + 5 + d for i in range(pairs)]]  # [P, dh]
                    qs = q[r, [ans[r][2 * j] + d for j in range(pairs)]]  # [P, dh]
                    cl.append(F.cross_entropy(qs @ keys.t() / a.tau, torch.tensor(orders[r])))
            closs = torch.stack(cl).mean()
            ansl = ansl + a.contrast * closs
            kind += f" c{closs.item():.3f}"
        kind = f"mf{pairs}x{gap}" + kind if a.contrast else f"mf{pairs}x{gap}"
    (ansl + a.lm_weight * txt).backward()
    fin = all(torch.isfinite(t.grad).all() for t in train if t.grad is not None)
    if fin:
        torch.nn.utils.clip_grad_norm_(train, 1.0); opt.step()
    print(f"step {step+1} {kind} ans {ansl.item():.3f} txt {txt.item()/math.log(2):.3f} {'' if fin else 'SKIP'} {time.time()-t0:.1f}s", flush=True)
    if (step + 1) % a.eval_every == 0:
        print("eval", step + 1, evaluate(), flush=True)
        model.save(a.out, description="experiment")
model.save(a.out, description="experiment")

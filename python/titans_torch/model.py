"""The Titans model of docs/model.md in PyTorch: every variant (MAC, MAG, MAL, LMM, and the SWA
baseline), one code path for training and streaming.

`TitansModel.forward(tokens, state)` consumes any number of tokens after an explicit `State` and
returns the logits of every token and the state after them, without changing the state passed in.
A training batch is the same call from `new_state()`: the neural memory runs in its chunked dual
form (docs/model.md, section 2), chunk by chunk, with autograd through everything. Split a stream
into calls anywhere and the results are the same (up to float reassociation), as in the server.

Shapes: B batch (streams), T tokens, d d_model, H heads, dh head_dim, hd = H * dh.
Section numbers refer to docs/model.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from titans_torch import io

BOS, EOS = 256, 257  # the byte tokenizer's <|bos|> and <|eos|> (section 5)


# Parameters -------------------------------------------------------------------------------------

def memory_layer_shapes(config: dict) -> List[Tuple[int, int]]:
    """(in, out) of each memory MLP layer: dh -> hidden -> ... -> dh."""
    m, dh = config["memory"], config["head_dim"]
    hidden = m["expansion"] * dh
    dims = [dh] + [hidden] * (m["depth"] - 1) + [dh]
    return [(dims[i], dims[i + 1]) for i in range(m["depth"])]


def memory_heads(config: dict, layer: int) -> int:
    """Heads of layer `layer`'s neural memory: memory.num_heads[layer] where it is a list (one
    count per layer), memory.num_heads where it is a count > 0, else the attention's num_heads
    (as ModelConfig::memory_heads)."""
    heads = config["memory"].get("num_heads", 0)
    if isinstance(heads, list):
        return heads[layer]
    return heads or config["num_heads"]


def memory_head_share(name: str, head_dim: int) -> Tuple[int, int]:
    """(axis, width): memory head h's share of memory tensor `name` (layers.i.memory.*) is
    `tensor.narrow(axis, h * width, width)`: columns of out_proj, one entry of each gate and of
    the initial weights, rows of the projections, convolutions, output gate and norm."""
    part = name.split(".memory.", 1)[1]
    if part == "out_proj.weight":
        return 1, head_dim
    if part.startswith(("alpha_proj", "eta_proj", "theta_proj", "initial_weights")):
        return 0, 1
    return 0, head_dim


def param_slots(config: dict) -> List[Tuple[str, Tuple[int, ...], str, float]]:
    """(name, shape, initialisation, constant) of every parameter, in the order titans-train
    writes them and the weights' CRC covers them (model/params.cc)."""
    d, H, dh = config["d_model"], config["num_heads"], config["head_dim"]
    hd, f, K = H * dh, config["ffn_hidden"], config["memory"]["conv_kernel"]
    variant, mem = config["variant"], config["memory"]
    slots = [("embedding.weight", (config["vocab_size"], d), "embedding", 0.0)]
    for i in range(config["num_layers"]):
        pre = f"layers.{i}."
        slots.append((pre + "mixer_norm.weight", (d,), "ones", 0.0))
        if variant == "mal":
            slots.append((pre + "attn_norm.weight", (d,), "ones", 0.0))
        if variant in ("mac", "mag"):
            slots.append((pre + "combine.y_norm.weight", (d,), "ones", 0.0))
            slots.append((pre + "combine.m_norm.weight", (d,), "ones", 0.0))
        if variant != "lmm":
            a = pre + "attn."
            slots += [(a + "wq.weight", (hd, d), "linear", 0.0),
                      (a + "wk.weight", (hd, d), "linear", 0.0),
                      (a + "wv.weight", (hd, d), "linear", 0.0),
                      (a + "wo.weight", (d, hd), "output", 0.0)]
            if config["attention"]["num_persistent"] > 0:
                slots.append((a + "persistent", (config["attention"]["num_persistent"], d),
                              "embedding", 0.0))
        if variant == "mac":
            r = pre + "retrieval."
            slots += [(r + "q_proj.weight", (hd, d), "linear", 0.0),
                      (r + "q_conv.weight", (hd, K), "conv", 0.0),
                      (r + "out_proj.weight", (d, hd), "linear", 0.0)]
        if variant != "swa":
            m, Hm = pre + "memory.", memory_heads(config, i)
            mhd = Hm * dh
            slots += [(m + "q_proj.weight", (mhd, d), "linear", 0.0),
                      (m + "k_proj.weight", (mhd, d), "linear", 0.0),
                      (m + "v_proj.weight", (mhd, d), "linear", 0.0),
                      (m + "q_conv.weight", (mhd, K), "conv", 0.0),
                      (m + "k_conv.weight", (mhd, K), "conv", 0.0),
                      (m + "v_conv.weight", (mhd, K), "conv", 0.0)]
            for gate in ("alpha", "eta", "theta"):
                slots += [(m + f"{gate}_proj.weight", (Hm, d), "gate", 0.0),
                          (m + f"{gate}_proj.bias", (Hm,), "constant", mem[f"{gate}_bias_init"])]
            for l, (fan_in, out) in enumerate(memory_layer_shapes(config)):
                slots.append((m + f"initial_weights.{l}", (Hm, out, fan_in), "memory", 0.0))
            slots += [(m + "out_norm.weight", (mhd,), "ones", 0.0),
                      (m + "out_gate.weight", (mhd, d), "linear", 0.0),
                      (m + "out_proj.weight", (d, mhd), "output", 0.0)]
        slots += [(pre + "ffn_norm.weight", (d,), "ones", 0.0),
                  (pre + "ffn.gate.weight", (f, d), "linear", 0.0),
                  (pre + "ffn.up.weight", (f, d), "linear", 0.0),
                  (pre + "ffn.down.weight", (d, f), "output", 0.0)]
    slots.append(("final_norm.weight", (d,), "constant", 1.0 / math.sqrt(d)))
    return slots


def _initial_value(config, shape, kind, constant, generator):
    fan_in = shape[-1] if len(shape) >= 2 else 1
    normal = lambda std: torch.randn(shape, generator=generator) * std  # noqa: E731
    if kind in ("linear", "memory"):
        return normal(1 / math.sqrt(fan_in))
    if kind == "gate":
        return normal(0.02 / math.sqrt(fan_in))
    if kind == "output":
        return normal(1 / math.sqrt(fan_in * 2 * config["num_layers"]))
    if kind == "embedding":
        return normal(1.0)
    if kind == "ones":
        return torch.ones(shape)
    if kind == "constant":
        return torch.full(shape, float(constant))
    taps = normal(0.1)  # conv: the current token passes through, with a little of the previous
    taps[:, -1] += 1
    return taps


# Streaming state --------------------------------------------------------------------------------

@dataclasses.dataclass
class LayerState:
    weights: List[torch.Tensor]      # chunk-start memory weights Phi_0, per MLP layer [B,H,out,in]
    momentum: List[torch.Tensor]     # S_0, same shapes
    pending_inputs: List[torch.Tensor]  # the open chunk's Z rows per MLP layer [B,H,p,in]
    pending_deltas: List[torch.Tensor]  # and its Delta rows [B,H,p,out]
    pending_gates: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # log(1-alpha), log eta, theta [B,H,p]
    segment_weights: Optional[List[torch.Tensor]]  # MAC with segment > chunk: Phi at segment start
    tails: dict                      # conv inputs of the last K-1 tokens, name -> [B, K-1, hd]
    attn_k: Optional[torch.Tensor]   # attention cache (rotated keys) [B, H, S, dh]
    attn_v: Optional[torch.Tensor]


@dataclasses.dataclass
class State:
    """A batch of sessions' state after `position` tokens (the same at every row)."""
    position: int
    layers: List[LayerState]
    last_logits: Optional[torch.Tensor]  # [B, V] after the last token; None at position 0

    def detach(self) -> "State":
        """The same state cut from the autograd graph (truncated backpropagation)."""
        return _map_state(self, lambda t: t.detach())


def _map_state(state: State, fn) -> State:
    def f(x):
        if x is None:
            return None
        if isinstance(x, torch.Tensor):
            return fn(x)
        if isinstance(x, (list, tuple)):
            return type(x)(f(v) for v in x)
        if isinstance(x, dict):
            return {k: f(v) for k, v in x.items()}
        return x
    layers = [LayerState(**{field.name: f(getattr(ls, field.name))
                            for field in dataclasses.fields(LayerState)}) for ls in state.layers]
    return State(state.position, layers, f(state.last_logits))


# Building blocks --------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def l2_normalize(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))


def causal_conv(x, taps, tail):
    """Depthwise causal conv: x [B, T, C], taps [C, K] (tap K-1 is the current token), tail the
    previous K-1 inputs [B, K-1, C]. Returns (y [B, T, C], new tail)."""
    T, K = x.shape[1], taps.shape[1]
    padded = torch.cat([tail, x], 1)
    out = padded[:, 0:T] * taps[:, 0]
    for k in range(1, K):
        out = out + padded[:, k:k + T] * taps[:, k]
    return out, padded[:, T:T + K - 1]


def rotary(x, start, theta):
    """Rotate-half rotary embedding of x [B, H, T, dh] at positions start.. (angles in double,
    then rounded: exact relative phases far beyond 10^6 tokens)."""
    T, half = x.shape[2], x.shape[3] // 2
    inv_freq = torch.pow(torch.tensor(theta, dtype=torch.float64),
                         -torch.arange(0, half, dtype=torch.float64) * (2.0 / x.shape[3]))
    pos = torch.arange(start, start + T, dtype=torch.float64)
    angle = pos[:, None] * inv_freq[None, :]
    cos, sin = angle.cos().to(x.dtype).to(x.device), angle.sin().to(x.dtype).to(x.device)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], 3)


def split_heads(x, heads):  # [B, T, H*dh] -> [B, H, T, dh]
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x):  # [B, H, T, dh] -> [B, T, H*dh]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def attend(q_plain, q, pk, pv, k, v, visible):
    """Softmax attention of rotated queries over rotated keys where `visible` [T, S], plus the
    position-free persistent keys scored with the unrotated queries (section 3)."""
    scale = 1.0 / math.sqrt(q.shape[3])
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    values = v
    if pk is not None:
        scores = torch.cat([torch.matmul(q_plain, pk.transpose(2, 3)) * scale, scores], 3)
        values = torch.cat([pv, v], 2)
    return torch.matmul(torch.softmax(scores, -1), values)


def activate(name, a):
    return F.silu(a) if name == "silu" else F.gelu(a)


def activation_grad(name, a):
    if name == "silu":
        s = torch.sigmoid(a)
        return s * (1 + a * (1 - s))
    return 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-0.5 * a * a) / math.sqrt(
        2 * math.pi)


def memory_read(mem_config, weights, x):
    """M_Phi(x) with fixed weights: x [B, H, n, dh], weights [B, H, out, in]."""
    h = x
    for l, w in enumerate(weights):
        h = torch.matmul(h, w.transpose(-1, -2))
        if l + 1 < len(weights):
            h = activate(mem_config["activation"], h)
    return h + x if mem_config["residual"] else h


def memory_piece(mem, ls: LayerState, k, v, q, gates):
    """Writes and reads n tokens that lie in the open chunk (section 2): k, v, q [B, H, n, dh],
    gates (log(1-alpha), log eta, theta) [B, H, n]. Returns (y [B, H, n, dh], LayerState)."""
    L, act = mem["depth"], mem["activation"]
    W0, S0 = ls.weights, ls.momentum
    p = ls.pending_inputs[0].shape[2]
    m = p + k.shape[2]
    # Forward and backward of l_t = 1/2 ||M(k_t) - v_t||^2 at Phi_0: layer inputs Z, deltas.
    inputs, pre, h = [], [], k
    for l in range(L):
        inputs.append(h)
        pre.append(torch.matmul(h, W0[l].transpose(-1, -2)))
        if l + 1 < L:
            h = activate(act, pre[l])
    prediction = pre[-1] + k if mem["residual"] else pre[-1]
    deltas = [None] * L
    deltas[L - 1] = prediction - v
    for l in range(L - 2, -1, -1):
        deltas[l] = torch.matmul(deltas[l + 1], W0[l + 1]) * activation_grad(act, pre[l])
    Z = [torch.cat([ls.pending_inputs[l], inputs[l]], 2) for l in range(L)]
    D = [torch.cat([ls.pending_deltas[l], deltas[l]], 2) for l in range(L)]
    log_keep, log_eta, theta = (torch.cat([a, b], 2) for a, b in zip(ls.pending_gates, gates))
    # Coefficients (every ratio the exponential of a non-positive difference).
    lb, lm = torch.cumsum(log_keep, 2), torch.cumsum(log_eta, 2)  # [B, H, m]
    lower = torch.ones(m, m, dtype=torch.bool, device=k.device).tril()
    E = torch.exp((lb[..., :, None] - lb[..., None, :]).masked_fill(~lower, float("-inf")))
    R = torch.exp((lm[..., :, None] - lm[..., None, :]).masked_fill(~lower, float("-inf")))
    beta = torch.exp(lb)
    f = torch.matmul(E, torch.exp(lm)[..., None])[..., 0]
    G = torch.matmul(E, R) * theta[..., None, :]
    # Read: A_l = diag(beta) H W_0^T + diag(f) H S_0^T - (G o (H Z_l^T)) Delta_l.
    b_rows, f_rows, g_rows = beta[..., p:m, None], f[..., p:m, None], G[..., p:m, :]
    hq = q
    for l in range(L):
        scores = g_rows * torch.matmul(hq, Z[l].transpose(-1, -2))
        a = (b_rows * torch.matmul(hq, W0[l].transpose(-1, -2)) +
             f_rows * torch.matmul(hq, S0[l].transpose(-1, -2)) - torch.matmul(scores, D[l]))
        hq = activate(act, a) if l + 1 < L else a
    y = hq + q if mem["residual"] else hq
    if m < mem["chunk_size"]:
        return y, dataclasses.replace(ls, pending_inputs=Z, pending_deltas=D,
                                      pending_gates=(log_keep, log_eta, theta))
    # Close the chunk: W_b = beta_b W_0 + f_b S_0 - Delta^T diag(G_b.) Z,
    #                  S_b = m_b S_0 - Delta^T diag(theta_j m_b / m_j) Z, then the weight bound.
    beta_b, f_b = beta[..., m - 1, None, None], f[..., m - 1, None, None]
    m_b = torch.exp(lm[..., m - 1])[..., None, None]
    g_last = G[..., m - 1, :, None]
    s_last = (theta * R[..., m - 1, :])[..., None]
    weights, momentum = [], []
    for l in range(L):
        d_t = D[l].transpose(-1, -2)
        w_new = beta_b * W0[l] + f_b * S0[l] - torch.matmul(d_t, g_last * Z[l])
        s_new = m_b * S0[l] - torch.matmul(d_t, s_last * Z[l])
        if mem["max_weight_rms"] > 0:
            limit = mem["max_weight_rms"] * math.sqrt(w_new.shape[-1] * w_new.shape[-2])
            norm = w_new.double().pow(2).sum((-1, -2), keepdim=True).sqrt()
            w_new = w_new * torch.clamp_max(limit / norm, 1.0).to(w_new.dtype)
        weights.append(w_new)
        momentum.append(s_new)
    empty = lambda t: t[..., :0, :]  # noqa: E731
    return y, dataclasses.replace(
        ls, weights=weights, momentum=momentum,
        pending_inputs=[empty(z) for z in Z], pending_deltas=[empty(d) for d in D],
        pending_gates=tuple(g[..., :0] for g in (log_keep, log_eta, theta)))


# The model --------------------------------------------------------------------------------------

class TitansModel(nn.Module):
    """A Titans model with the server's parameter names (`model.safetensors` keys, dots kept in
    a ParameterDict under escaped names). Load with `TitansModel.load(dir)`, save with `save`."""

    def __init__(self, config: dict, seed: Optional[int] = None):
        super().__init__()
        self.config = io.complete_config(config)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.slots = param_slots(self.config)
        self.params = nn.ParameterDict({
            _key(name): nn.Parameter(_initial_value(self.config, shape, kind, value, generator))
            for name, shape, kind, value in self.slots})
        # Called as memory_observer(layer, x, q, k, out) by every memory read (x [B, T, d] its input,
        # q and k [B, T, H * dh] normalised, out [B, T, d] its output; MAC: once per segment), for
        # tools that look inside the memory (scripts/memory-probe.py, titans_torch.write_gate).
        self.memory_observer = None

    # Loading and saving

    @classmethod
    def load(cls, model_dir: str, device=None, dtype=torch.float32) -> "TitansModel":
        """Reads a model directory written by titans-train, titans-init-model or `save`.
        ValueError names a missing, unexpected or misshapen tensor."""
        model = cls(io.read_config(model_dir))
        tensors, _ = io.read_safetensors(os.path.join(model_dir, "model.safetensors"))
        expected = {name: shape for name, shape, _, _ in model.slots}
        for name in tensors:
            if name not in expected:
                raise ValueError(f"model.safetensors: unexpected tensor {name!r}")
        with torch.no_grad():
            for name, shape in expected.items():
                if name not in tensors:
                    raise ValueError(f"model.safetensors: missing tensor {name!r}")
                if tuple(tensors[name].shape) != tuple(shape):
                    raise ValueError(f"model.safetensors: {name!r} has shape "
                                     f"{tuple(tensors[name].shape)}, expected {tuple(shape)}")
                model.params[_key(name)].copy_(tensors[name])
        return model.to(device=device, dtype=dtype)

    def save(self, model_dir: str, description: Optional[str] = None,
             initialization: str = "trained") -> None:
        """Writes config.json and model.safetensors (float32, with the weights' CRC-32C), which
        titans-server loads."""
        os.makedirs(model_dir, exist_ok=True)
        tensors = [(name, self.params[_key(name)]) for name, _, _, _ in self.slots]
        io.write_safetensors(os.path.join(model_dir, "model.safetensors"), tensors, {
            "format": "titans", "variant": self.config["variant"],
            "initialization": initialization, "weights_crc32c": io.weights_crc(tensors)})
        io.write_config(model_dir, self.config, description, initialization)

    def p(self, name: str) -> torch.Tensor:
        return self.params[_key(name)]

    # State

    def new_state(self, batch: int = 1) -> State:
        """The state of `batch` empty sessions: Phi_init, zero momentum, zero conv tails."""
        c, H, dh = self.config, self.config["num_heads"], self.config["head_dim"]
        hd, K = H * dh, c["memory"]["conv_kernel"]
        like = self.p("embedding.weight")
        zeros = lambda *shape: torch.zeros(shape, dtype=like.dtype, device=like.device)  # noqa
        layers = []
        for i in range(c["num_layers"]):
            weights, momentum, inputs, deltas, gates, segment = [], [], [], [], (), None
            tails = {}
            if c["variant"] != "swa":
                Hm = memory_heads(c, i)
                for l, (fan_in, out) in enumerate(memory_layer_shapes(c)):
                    w = self.p(f"layers.{i}.memory.initial_weights.{l}")
                    weights.append(w.unsqueeze(0).expand(batch, -1, -1, -1))
                    momentum.append(zeros(batch, Hm, out, fan_in))
                    inputs.append(zeros(batch, Hm, 0, fan_in))
                    deltas.append(zeros(batch, Hm, 0, out))
                gates = (zeros(batch, Hm, 0), zeros(batch, Hm, 0), zeros(batch, Hm, 0))
                tails = {name: zeros(batch, K - 1, Hm * dh) for name in ("q", "k", "v")}
                if c["variant"] == "mac":
                    tails["retrieval"] = zeros(batch, K - 1, hd)
                    if c["attention"]["segment_size"] > c["memory"]["chunk_size"]:
                        segment = list(weights)
            attn_k = attn_v = None
            if c["variant"] != "lmm":
                attn_k, attn_v = zeros(batch, H, 0, dh), zeros(batch, H, 0, dh)
            layers.append(LayerState(weights, momentum, inputs, deltas, gates, segment, tails,
                                     attn_k, attn_v))
        return State(0, layers, None)

    # Forward

    def forward(self, tokens: torch.Tensor, state: Optional[State] = None
                ) -> Tuple[torch.Tensor, State]:
        """tokens [B, T] (int64) after `state` (default: empty sessions) -> logits [B, T, V] and
        the state after them. MAC steps are cut at segment boundaries (which changes nothing)."""
        if state is None:
            state = self.new_state(tokens.shape[0])
        T = tokens.shape[1]
        if T == 0:
            raise ValueError("no tokens")
        C = self.config["attention"]["segment_size"]
        logits, begin = [], 0
        while begin < T:
            length = T - begin
            if self.config["variant"] == "mac":
                length = min(length, C - state.position % C)
            out, state = self._step(tokens[:, begin:begin + length], state)
            logits.append(out)
            begin += length
        return torch.cat(logits, 1), state

    def _step(self, tokens, state: State):
        c = self.config
        x = F.embedding(tokens, self.p("embedding.weight"))
        layers = []
        for i, ls in enumerate(state.layers):
            x, ls = self._layer(i, x, ls, state.position)
            layers.append(ls)
        logits = torch.matmul(rms_norm(x, self.p("final_norm.weight"), c["norm_eps"]),
                              self.p("embedding.weight").t())
        return logits, State(state.position + tokens.shape[1], layers, logits[:, -1])

    def _layer(self, i, x, ls: LayerState, position):
        c, pre = self.config, f"layers.{i}."
        eps, variant = c["norm_eps"], c["variant"]
        n = rms_norm(x, self.p(pre + "mixer_norm.weight"), eps)
        if variant == "mac":
            out, ls = self._mac(i, n, ls, position)
            h = x + out
        elif variant == "mag":
            y, ls = self._window_attention(i, n, ls, position)
            m, ls = self._memory(i, n, ls, position)
            h = x + self._combine(i, y, m)
        elif variant == "mal":
            m, ls = self._memory(i, n, ls, position)
            h = x + m
            y, ls = self._window_attention(i, rms_norm(h, self.p(pre + "attn_norm.weight"), eps),
                                           ls, position)
            h = h + y
        elif variant == "lmm":
            m, ls = self._memory(i, n, ls, position)
            h = x + m
        else:  # swa
            y, ls = self._window_attention(i, n, ls, position)
            h = x + y
        f = rms_norm(h, self.p(pre + "ffn_norm.weight"), eps)
        ffn = torch.matmul(F.silu(torch.matmul(f, self.p(pre + "ffn.gate.weight").t())) *
                           torch.matmul(f, self.p(pre + "ffn.up.weight").t()),
                           self.p(pre + "ffn.down.weight").t())
        return h + ffn, ls

    def _combine(self, i, y, m):
        eps, pre = self.config["norm_eps"], f"layers.{i}.combine."
        return rms_norm(y, self.p(pre + "y_norm.weight"), eps) * torch.sigmoid(
            rms_norm(m, self.p(pre + "m_norm.weight"), eps))

    def _query_rows(self, x, proj, taps, ls, tail):
        """Linear -> causal conv -> SiLU (unless qk_activation is none) -> per-head L2 norm."""
        c = self.config
        h, new_tail = causal_conv(torch.matmul(x, proj.t()), taps, ls.tails[tail])
        if c["memory"]["qk_activation"] == "silu":
            h = F.silu(h)
        B, T = h.shape[:2]
        h = l2_normalize(h.reshape(B, T, -1, c["head_dim"])).reshape(B, T, -1)
        return h, dataclasses.replace(ls, tails={**ls.tails, tail: new_tail})

    def _persistent_kv(self, i, batch):
        name = f"layers.{i}.attn.persistent"
        if self.config["attention"]["num_persistent"] == 0:
            return None, None
        P = self.p(name).unsqueeze(0)
        H = self.config["num_heads"]
        k = split_heads(torch.matmul(P, self.p(f"layers.{i}.attn.wk.weight").t()), H)
        v = split_heads(torch.matmul(P, self.p(f"layers.{i}.attn.wv.weight").t()), H)
        return k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)

    def _window_attention(self, i, x, ls: LayerState, position):
        """Sliding-window attention (MAG, MAL, SWA): token t sees the persistent tokens and the
        w most recent tokens including itself; the cache keeps the last w - 1."""
        c, a = self.config, f"layers.{i}.attn."
        H, w, rope = c["num_heads"], c["attention"]["window"], c["attention"]["rope_theta"]
        T = x.shape[1]
        q_plain = split_heads(torch.matmul(x, self.p(a + "wq.weight").t()), H)
        q = rotary(q_plain, position, rope)
        k = rotary(split_heads(torch.matmul(x, self.p(a + "wk.weight").t()), H), position, rope)
        v = split_heads(torch.matmul(x, self.p(a + "wv.weight").t()), H)
        cached = ls.attn_k.shape[2]
        keys, values = torch.cat([ls.attn_k, k], 2), torch.cat([ls.attn_v, v], 2)
        tq = torch.arange(T, device=x.device)[:, None] + cached
        tk = torch.arange(cached + T, device=x.device)[None, :]
        visible = (tk <= tq) & (tq - tk < w)
        keep = min(w - 1, cached + T)
        pk, pv = self._persistent_kv(i, x.shape[0])
        heads = merge_heads(attend(q_plain, q, pk, pv, keys, values, visible))
        ls = dataclasses.replace(ls, attn_k=keys[:, :, cached + T - keep:],
                                 attn_v=values[:, :, cached + T - keep:])
        return torch.matmul(heads, self.p(a + "wo.weight").t()), ls

    def gates(self, i, x):
        """Layer i's memory gates per token and head for its input x [B, T, d]: log(1 - alpha),
        log eta and theta = theta_max * sigmoid(.), each [B, T, H]."""
        m = f"layers.{i}.memory."

        def gate(name):
            return torch.matmul(x, self.p(m + f"{name}_proj.weight").t()) + self.p(
                m + f"{name}_proj.bias")

        return (F.logsigmoid(-gate("alpha")), F.logsigmoid(gate("eta")),
                self.config["memory"]["theta_max"] * torch.sigmoid(gate("theta")))

    def _memory(self, i, x, ls: LayerState, position):
        """The neural memory (section 1) over x [B, T, d]: write and read every token, chunk by
        chunk; o = W_o(RMSNorm_h(y) * SiLU(W_g x))."""
        c, m = self.config, f"layers.{i}.memory."
        mem, H = c["memory"], memory_heads(c, i)
        B, T = x.shape[:2]
        q, ls = self._query_rows(x, self.p(m + "q_proj.weight"), self.p(m + "q_conv.weight"),
                                 ls, "q")
        k, ls = self._query_rows(x, self.p(m + "k_proj.weight"), self.p(m + "k_conv.weight"),
                                 ls, "k")
        v, v_tail = causal_conv(torch.matmul(x, self.p(m + "v_proj.weight").t()),
                                self.p(m + "v_conv.weight"), ls.tails["v"])
        v = F.silu(v)
        ls = dataclasses.replace(ls, tails={**ls.tails, "v": v_tail})
        log_keep, log_eta, theta = (g.transpose(1, 2) for g in self.gates(i, x))  # [B, H, T]
        kq, vq, qq = (split_heads(t, H) for t in (k, v, q))  # [B, H, T, dh]
        ys, begin, b = [], 0, mem["chunk_size"]
        while begin < T:
            pending = ls.pending_inputs[0].shape[2]
            end = min(T, begin + b - pending)
            y, ls = memory_piece(mem, ls, kq[:, :, begin:end], vq[:, :, begin:end],
                                 qq[:, :, begin:end], (log_keep[..., begin:end],
                                                       log_eta[..., begin:end],
                                                       theta[..., begin:end]))
            ys.append(y)
            begin = end
        y = torch.cat(ys, 2).transpose(1, 2)  # [B, T, H, dh]
        normed = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + c["norm_eps"])).reshape(
            B, T, -1)
        out = torch.matmul(normed * self.p(m + "out_norm.weight") * F.silu(
            torch.matmul(x, self.p(m + "out_gate.weight").t())), self.p(m + "out_proj.weight").t())
        if self.memory_observer is not None:
            self.memory_observer(i, x, q, k, out)
        return out, ls

    def _mac(self, i, n, ls: LayerState, position):
        """MAC (section 3) over a step that lies inside one segment."""
        c, pre = self.config, f"layers.{i}."
        H, C = c["num_heads"], c["attention"]["segment_size"]
        rope = c["attention"]["rope_theta"]
        B, T = n.shape[:2]
        if position % C == 0:  # a segment starts: its weights are the memory's, the cache empties
            ls = dataclasses.replace(
                ls, segment_weights=list(ls.weights) if ls.segment_weights is not None else None,
                attn_k=ls.attn_k[:, :, :0], attn_v=ls.attn_v[:, :, :0])
        q_r, ls = self._query_rows(n, self.p(pre + "retrieval.q_proj.weight"),
                                   self.p(pre + "retrieval.q_conv.weight"), ls, "retrieval")
        phi = ls.segment_weights if ls.segment_weights is not None else ls.weights
        h = merge_heads(memory_read(c["memory"], phi, split_heads(q_r, H)))
        h = torch.matmul(h, self.p(pre + "retrieval.out_proj.weight").t())  # [B, T, d]
        a = pre + "attn."
        offset = position % C
        wq, wk, wv = (self.p(a + f"{w}.weight") for w in ("wq", "wk", "wv"))
        q_plain = split_heads(torch.matmul(n, wq.t()), H)
        q = rotary(q_plain, offset, rope)
        kx = rotary(split_heads(torch.matmul(n, wk.t()), H), offset, rope)
        kh = rotary(split_heads(torch.matmul(h, wk.t()), H), offset, rope)
        vx = split_heads(torch.matmul(n, wv.t()), H)
        vh = split_heads(torch.matmul(h, wv.t()), H)

        def interleave(first, second):  # h_j, x_j per token: [B, H, 2T, dh]
            return torch.stack([first, second], 3).reshape(B, H, 2 * T, -1)
        cached = ls.attn_k.shape[2]
        keys = torch.cat([ls.attn_k, interleave(kh, kx)], 2)
        values = torch.cat([ls.attn_v, interleave(vh, vx)], 2)
        causal = torch.ones(T, T, dtype=torch.bool, device=n.device).tril().repeat_interleave(2, 1)
        visible = torch.cat([torch.ones(T, cached, dtype=torch.bool, device=n.device), causal], 1)
        pk, pv = self._persistent_kv(i, B)
        y = torch.matmul(merge_heads(attend(q_plain, q, pk, pv, keys, values, visible)),
                         self.p(a + "wo.weight").t())
        ls = dataclasses.replace(ls, attn_k=keys, attn_v=values)
        m, ls = self._memory(i, y, ls, position)
        return self._combine(i, y, m), ls

    # Scoring and generation, as the server does them

    def score(self, tokens: Sequence[int], state: Optional[State] = None
              ) -> Tuple[List[float], State]:
        """log p(token_i | context, tokens_<i) for one session, as the server's Score: from an
        empty session the first token is predicted after <|bos|>, which then counts in the
        position (section 5). Returns the log-probs and the state with the tokens committed."""
        state = state or self.new_state(1)
        ids = torch.tensor([list(tokens)], dtype=torch.long,
                           device=self.p("embedding.weight").device)
        if state.position == 0:
            ids = torch.cat([torch.full_like(ids[:, :1], BOS), ids], 1)
        logits, after = self.forward(ids, state)
        if state.position > 0:
            logits = torch.cat([state.last_logits[:, None], logits], 1)
        logprobs = torch.log_softmax(logits[:, :-1].double(), -1)
        picked = logprobs.gather(-1, ids[:, -len(tokens):, None])[0, :, 0]
        return picked.tolist(), after


def _key(name: str) -> str:
    return name.replace(".", "__")

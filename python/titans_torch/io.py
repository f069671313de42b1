"""The model directory format (docs/model.md, section 0): config.json + model.safetensors.

The safetensors file is read and written here rather than with the `safetensors` package because
Debian 12, the project's platform, does not package it and nothing may be downloaded; the format
is small (an 8-byte little-endian header length, a JSON header, raw little-endian data). The
header's __metadata__ carries what titans-train writes: format, variant, initialization and the
weights' CRC-32C in parameter order (the server checks it when present).
"""
from __future__ import annotations

import copy
import json
import os
import struct
import tempfile
from typing import Dict, List, Optional, Tuple

import torch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64}

# Defaults of config.json's keys (docs/model.md, section 0); any other key is an error.
DEFAULTS = {
    "format_version": 1, "name": "", "description": "", "initialization": "random",
    "variant": "mac", "vocab_size": 260, "d_model": 128, "num_layers": 2, "num_heads": 4,
    "head_dim": 32, "ffn_hidden": 384, "norm_eps": 1e-6,
    "memory": {"depth": 2, "expansion": 4, "activation": "silu", "qk_activation": "silu",
               "residual": False, "chunk_size": 16, "theta_max": 0.01, "max_weight_rms": 1.0,
               "conv_kernel": 4, "alpha_bias_init": -4.0, "eta_bias_init": 2.0,
               "theta_bias_init": 0.0},
    "attention": {"window": 64, "segment_size": 64, "num_persistent": 4, "rope_theta": 10000.0},
    "tokenizer": {"type": "byte", "model_file": ""},
}


def read_config(model_dir: str) -> dict:
    """config.json with every default filled in; ValueError names an unknown or invalid key."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    return complete_config(raw)


def complete_config(raw: dict) -> dict:
    config = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise ValueError(f"config.json: unknown key {key!r}")
        if isinstance(DEFAULTS[key], dict):
            for sub, sub_value in value.items():
                # memory.num_heads is optional (absent: the attention's num_heads), so configs
                # without it are written back without it.
                if sub not in DEFAULTS[key] and (key, sub) != ("memory", "num_heads"):
                    raise ValueError(f"config.json: unknown key {key}.{sub!r}")
                config[key][sub] = sub_value
        else:
            config[key] = value
    memory_heads = config["memory"].get("num_heads", 0)
    if isinstance(memory_heads, list):  # one count per layer (model/config.cc)
        if len(memory_heads) != config["num_layers"]:
            raise ValueError(f"config.json: memory.num_heads must list one count per layer "
                             f"({config['num_layers']}), got {len(memory_heads)}")
        if not all(type(n) is int and 1 <= n <= 1024 for n in memory_heads):
            raise ValueError(f"config.json: memory.num_heads must list counts in [1, 1024], "
                             f"got {memory_heads!r}")
        counts = memory_heads
    elif type(memory_heads) is not int or not 0 <= memory_heads <= 1024:
        raise ValueError(f"config.json: memory.num_heads must be in [0, 1024], got {memory_heads!r}")
    else:
        counts = [memory_heads or config["num_heads"]]
    if config["variant"] == "mac" and any(n != config["num_heads"] for n in counts):
        raise ValueError("config.json: memory.num_heads must equal num_heads for MAC")
    if config["format_version"] != 1:
        raise ValueError("config.json: format_version must be 1")
    if config["variant"] not in ("mac", "mag", "mal", "lmm", "swa"):
        raise ValueError(f"config.json: variant {config['variant']!r}")
    if config["head_dim"] % 2:
        raise ValueError("config.json: head_dim must be even (rotary pairs)")
    if config["tokenizer"]["type"] not in ("byte", "sentencepiece"):
        raise ValueError(f"config.json: tokenizer.type {config['tokenizer']['type']!r}")
    return config


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), continuing from `crc` as model/crc32c.h does. Plain Python: about
    a second per 3 MB, paid once per save."""
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Every tensor (widened to float32) and the header's __metadata__."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: truncated")
    (length,) = struct.unpack("<Q", blob[:8])
    if 8 + length > len(blob):
        raise ValueError(f"{path}: truncated header")
    header = json.loads(blob[8:8 + length])
    metadata = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + length:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if end > len(data) or entry["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} is truncated or of type {entry['dtype']}")
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=_DTYPES[entry["dtype"]])
        tensors[name] = t.reshape(entry["shape"]).to(torch.float32)
    return tensors, metadata


def write_safetensors(path: str, tensors: List[Tuple[str, torch.Tensor]],
                      metadata: Dict[str, str]) -> None:
    header, offset, payload = {"__metadata__": metadata}, 0, []
    for name, tensor in tensors:
        raw = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        payload.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    _write_atomic(path, struct.pack("<Q", len(head)) + head + b"".join(payload))


def weights_crc(tensors: List[Tuple[str, torch.Tensor]]) -> str:
    crc = 0
    for _, tensor in tensors:
        crc = crc32c(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), crc)
    return f"{crc:08x}"


def _write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_config(model_dir: str, config: dict, description: Optional[str] = None,
                 initialization: Optional[str] = None) -> None:
    config = copy.deepcopy(config)
    if description is not None:
        config["description"] = description
    if initialization is not None:
        config["initialization"] = initialization
    _write_atomic(os.path.join(model_dir, "config.json"),
                  (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

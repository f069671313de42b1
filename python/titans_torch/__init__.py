"""The Titans model of docs/model.md in PyTorch, reading and writing the server's model
directories: train or fine-tune here, serve with titans-server.

    import torch, titans_torch
    model = titans_torch.TitansModel.load("models/default")
    logits, state = model(torch.tensor([list(b"In the beginning")]))  # [1, 16, V], State
    logits, state = model(torch.tensor([list(b" God created")]), state)  # carried across calls
    logprobs, state = model.score(list(b" the heaven"), state)           # as the server's Score

`python3 -m titans_torch.train --help` fine-tunes a model directory on text.
"""
from titans_torch.model import BOS, EOS, LayerState, State, TitansModel, param_slots

__all__ = ["BOS", "EOS", "LayerState", "State", "TitansModel", "param_slots"]

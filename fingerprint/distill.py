"""Distilling a student from a teacher's outputs: the threat the audit tests for.

A small Llama with the teacher's tokenizer is trained from scratch on the teacher's completions
(prompt and answer, as served). This is what a competitor who distils an API does, at a size a
laptop CPU can train in a minute, so the demo and the experiment can show the audit catching it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fingerprint.errors import ConfigError, InputError
from fingerprint.models import tiny_llama


def train_student(
    sequences: Sequence[Sequence[int]],
    *,
    vocab_size: int,
    steps: int = 300,
    batch_size: int = 16,
    seq_len: int = 128,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    lr: float = 3e-3,
    corpus_softmax: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "training student",
) -> Any:
    """Train a fresh tiny Llama on ``sequences`` (token ids) with next-token cross-entropy.

    Sequences are concatenated into one stream and cut into windows of ``seq_len`` tokens.
    With ``corpus_softmax`` the training softmax runs over the tokens that occur in the corpus
    (a sampled softmax: tokens the teacher never wrote get no gradient), which makes a step tens
    of times cheaper than a softmax over the whole vocabulary. The learning rate warms up
    linearly over the first tenth of the steps, then decays on a cosine to zero. Deterministic
    for a ``seed`` (on one device and thread count). The model is returned on ``device``.
    """
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise ConfigError("steps, batch_size must be >= 1 and seq_len >= 2")
    stream = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences if len(s)])
    if stream.size < seq_len + 1:
        raise InputError(f"need more than {seq_len} tokens to train on, got {stream.size}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    model = tiny_llama(vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                       num_heads=num_heads, seed=seed).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps))
    data = torch.as_tensor(stream, device=device)
    vocab_ids = torch.as_tensor(np.unique(stream), device=device)
    local = torch.full((vocab_size,), -1, dtype=torch.int64, device=device)
    local[vocab_ids] = torch.arange(len(vocab_ids))
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        starts = rng.integers(0, stream.size - seq_len, batch_size)
        batch = torch.stack([data[s : s + seq_len] for s in starts])
        if corpus_softmax:
            hidden = decoder(input_ids=batch).last_hidden_state[:, :-1]
            logits = hidden @ head.weight[vocab_ids].T
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, len(vocab_ids)), local[batch[:, 1:]].reshape(-1))
        else:
            loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


def lr_factor(step: int, steps: int) -> float:
    """The learning-rate multiplier at ``step`` of ``steps``: linear warm-up, cosine decay."""
    warm = max(1, steps // 10)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


__all__ = ["lr_factor", "train_student"]

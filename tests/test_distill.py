"""Student training: the distillation the audits are built to catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fingerprint.distill import lr_factor, train_student
from fingerprint.errors import ConfigError, InputError


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 11, 300])
def test_schedule_warms_up_then_decays_for_any_length(steps) -> None:
    f = [lr_factor(i, steps) for i in range(steps)]
    assert all(0.0 <= v <= 1.0 for v in f)
    peak = int(np.argmax(f))
    assert f[peak] == 1.0 and peak == max(1, steps // 10) - 1
    assert (np.diff(f[: peak + 1]) >= 0).all() and (np.diff(f[peak:]) <= 0).all()


def _corpus(n: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a deterministic successor rule (t -> 3t + 1 mod 50) a student can learn
    out = []
    for _ in range(n):
        t = [int(rng.integers(0, 50))]
        for _ in range(31):
            t.append((3 * t[-1] + 1) % 50)
        out.append(np.array(t))
    return out


@pytest.mark.parametrize("steps", [1, 10])
def test_short_runs_train_and_are_deterministic(steps) -> None:
    kw = {"vocab_size": 64, "steps": steps, "batch_size": 4, "seq_len": 16,
          "hidden_size": 32, "seed": 3}
    a, b = train_student(_corpus(), **kw), train_student(_corpus(), **kw)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not a.training


def test_student_learns_the_corpus_rule() -> None:
    model = train_student(_corpus(), vocab_size=64, steps=150, batch_size=8, seq_len=16,
                          hidden_size=32, seed=0)
    x = torch.as_tensor(np.stack(_corpus(4, seed=9)))
    with torch.no_grad():
        pred = model(input_ids=x).logits.argmax(-1)
    assert (pred[:, 4:-1] == (3 * x[:, 4:-1] + 1) % 50).float().mean() > 0.9


def test_bad_training_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        train_student(_corpus(), vocab_size=64, steps=0)
    with pytest.raises(ConfigError):
        train_student(_corpus(), vocab_size=64, lr=0.0)
    with pytest.raises(InputError):
        train_student([np.arange(5)], vocab_size=64, seq_len=16)

"""``fingerprint demo``: an end-to-end run on the embedded default model, offline, on CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fingerprint.core import get_prf, windows
from fingerprint.detect.detector import Detector
from fingerprint.keys import WatermarkKey

GAMMA = 0.25
CONTEXT_WIDTH = 1


def human_text(max_chars: int = 200_000) -> str:
    """English prose that ships with Python (the pydoc topic pages): text no key ever touched."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))[:max_chars]


def _step(n: int, title: str) -> float:
    print(f"[{n}] {title}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, max_tokens: int = 4000) -> int:
    """Make a key, score human text under it, and show what the exact test says."""
    from fingerprint.models import load_default_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    t = _step(1, "making a secret watermark key")
    key = WatermarkKey.generate()
    key_path = key.save(out / "watermark.key", overwrite=True)
    print(f"    {key_path} (mode 0600), public key id {key.key_id}")

    t = _step(2, "loading the embedded SmolLM2-135M-Instruct tokenizer")
    tokenizer = load_default_tokenizer()
    print(f"    vocabulary {len(tokenizer):,} tokens ({time.perf_counter() - t:.1f} s)")

    t = _step(3, "tokenizing human text (Python's pydoc topics)")
    ids = np.asarray(tokenizer(human_text(), add_special_tokens=False)["input_ids"])[:max_tokens]
    print(f"    {len(ids):,} tokens")

    _step(4, f"scoring under the key: KGW green lists, gamma={GAMMA}, h={CONTEXT_WIDTH}")
    det = Detector(key, scheme="kgw", gamma=GAMMA, context_width=CONTEXT_WIDTH)
    rows = [("human text", det.detect([ids], vocab_size=len(tokenizer)))]

    # in the same windows, the token the key likes best: what a strongly watermarked text would
    # look like to the test (scored as candidates, as the reading-mode audit does)
    prf = get_prf("siphash24-v1", key, "kgw")
    win = windows(ids, CONTEXT_WIDTH)[0]
    preferred = np.concatenate([np.argmin(prf.row(win[i : i + 256], len(tokenizer)), axis=1)
                                for i in range(0, len(win), 256)])
    state = det.new_state()
    det.update(state, ids, candidates=preferred, vocab_size=len(tokenizer))
    rows.append(("key-preferred tokens", det.result(state)))

    print(f"\n    {'text':<22}{'scored':>8}{'green':>8}{'rate':>8}{'log10 p':>12}")
    for name, res in rows:
        print(f"    {name:<22}{res.n_scored:>8}{res.n_green:>8}{res.green_rate:>8.3f}"
              f"{res.log10_pvalue:>12.2f}")
    print("\n    H0 (each row): every scored token is green with probability gamma, independently"
          "\n    of the key. Human text keeps H0; text steered by the key rejects it.")
    return 0


__all__ = ["human_text", "run_demo"]

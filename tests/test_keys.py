"""Watermark keys: derivation, key ids, files, and that secrets never show."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from fingerprint.errors import KeyFileError, WatermarkKeyError
from fingerprint.keys import KeyPurpose, WatermarkKey, as_key


def secret_of(key: WatermarkKey) -> bytes:
    return key._WatermarkKey__secret  # the tests alone peek, to look for leaks


def test_generate_is_random_and_256_bit() -> None:
    a, b = WatermarkKey.generate(), WatermarkKey.generate()
    assert len(secret_of(a)) == 32
    assert a != b and a.key_id != b.key_id


def test_secret_never_in_repr_str_or_errors(tmp_path) -> None:
    key = WatermarkKey.generate()
    secret = secret_of(key)
    texts = [repr(key), str(key), f"{key}", key.key_id]
    for t in texts:
        assert secret.hex() not in t and secret.hex()[:16] not in t
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(WatermarkKeyError) as err:
        key.int64_value()
    assert secret.hex() not in str(err.value)


def test_int_key_roundtrip_and_bounds() -> None:
    k = WatermarkKey.from_int(42)
    assert k.kind == "int64" and k.int64_value() == 42
    assert WatermarkKey.from_int(2**64 - 1).int64_value() == 2**64 - 1
    for bad in (-1, 2**64, 1.5, True, "42"):
        with pytest.raises(WatermarkKeyError):
            WatermarkKey.from_int(bad)  # type: ignore[arg-type]
    assert "42" not in repr(k).replace(k.key_id, "")


def test_wrong_secret_sizes_refused() -> None:
    for n in (0, 16, 31, 33, 64):
        with pytest.raises(WatermarkKeyError, match="32 secret bytes"):
            WatermarkKey(b"x" * n)


def test_subkeys_depend_on_every_purpose_field() -> None:
    key = WatermarkKey(bytes(range(32)))
    base = key.subkey(KeyPurpose("siphash24-v1", "kgw"), 16)
    assert len(base) == 16
    others = [
        key.subkey(KeyPurpose("siphash24-v1", "gumbel"), 16),
        key.subkey(KeyPurpose("philox4x32-10-v1", "kgw"), 16),
        key.subkey(KeyPurpose("siphash24-v1", "kgw", "x"), 16),
        WatermarkKey(bytes(range(1, 33))).subkey(KeyPurpose("siphash24-v1", "kgw"), 16),
    ]
    assert len({base, *others}) == 5
    # unambiguous encoding: moving a character between fields changes the subkey
    assert key.subkey(KeyPurpose("ab", "c"), 16) != key.subkey(KeyPurpose("a", "bc"), 16)
    assert key.subkey(KeyPurpose("siphash24-v1", "kgw"), 16) == base  # deterministic


def test_key_id_commits_and_is_stable() -> None:
    key = WatermarkKey(bytes(range(32)))
    assert key.key_id == WatermarkKey(bytes(range(32))).key_id
    assert key.key_id.startswith("fpk1-") and len(key.key_id) == 5 + 32
    assert WatermarkKey.from_int(1).key_id != WatermarkKey.from_int(2).key_id


def test_save_load_roundtrip_mode_0600(tmp_path) -> None:
    key = WatermarkKey.generate()
    path = key.save(tmp_path / "k.key")
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert WatermarkKey.load(path) == key
    assert as_key(str(path)) == key
    with pytest.raises(KeyFileError, match="already exists"):
        key.save(path)
    key2 = WatermarkKey.from_int(7)
    key2.save(path, overwrite=True)
    assert WatermarkKey.load(path) == key2


def test_load_refuses_readable_file(tmp_path) -> None:
    path = WatermarkKey.generate().save(tmp_path / "k.key")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        WatermarkKey.load(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: "not json{", "not valid JSON"),
        (lambda d: json.dumps({**d, "version": 99}), "version 99"),
        (lambda d: json.dumps({**d, "format": "other"}), "not a fingerprint"),
        (lambda d: json.dumps({**d, "secret": "!!!"}), "corrupt"),
        (lambda d: json.dumps({**d, "secret": d["secret"][:-8] + "AAAAAAA="}), "corrupt"),
        (lambda d: json.dumps({**d, "key_id": "fpk1-" + "0" * 32}), "does not match"),
        (lambda d: json.dumps({**d, "kind": "rsa"}), "corrupt"),
    ],
)
def test_load_refuses_corrupt_files(tmp_path, mutate, message) -> None:
    key = WatermarkKey.generate()
    path = key.save(tmp_path / "k.key")
    data = json.loads(path.read_text())
    path.write_text(mutate(data))
    with pytest.raises(KeyFileError, match=message) as err:
        WatermarkKey.load(path)
    assert data["secret"] not in str(err.value)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        WatermarkKey.load(tmp_path / "nope.key")


def test_as_key_rejects_other_types() -> None:
    with pytest.raises(WatermarkKeyError):
        as_key(3.5)  # type: ignore[arg-type]


def test_vllm_key_derivation_vectors(vllm_vectors) -> None:
    from fingerprint.keys import vllm_derived_key

    cases = vllm_vectors["derive_watermark_key"]
    assert len(cases) >= 4
    for case in cases:
        derived = vllm_derived_key(WatermarkKey.from_int(case["key"]), case["domain"].encode())
        assert derived.int64_value() == case["derived"]
    with pytest.raises(WatermarkKeyError):
        vllm_derived_key(WatermarkKey.generate(), b"key_a")

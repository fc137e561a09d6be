"""Local pretrained weight files: path + sha256 checks and loading."""

import hashlib

import pytest
import torch

from singer.weights import (
    MissingWeightsError,
    WeightsChecksumError,
    load_state_dict,
    resolve_weights,
    sha256_file,
)

COMMON = dict(
    name="test net state dict",
    config_key="frontend.pretrained_path",
    hint="ask the lab for test.pt",
)


def test_sha256_file_streams(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 100
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=7) == hashlib.sha256(data).hexdigest()


def test_missing_path_error_says_what_to_do():
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights(None, sha256=None, sha256_key="frontend.sha256", **COMMON)
    text = str(info.value)
    for part in (
        "test net state dict",
        "frontend.pretrained_path",
        "frontend.sha256",
        "ask the lab for test.pt",
    ):
        assert part in text


def test_nonexistent_file_error_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(MissingWeightsError, match="nowhere.pt") as info:
        resolve_weights(str(missing), sha256="00", **COMMON)
    assert isinstance(info.value, FileNotFoundError)


def test_checksum_mismatch_shows_expected_and_actual(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    actual = hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(WeightsChecksumError) as info:
        resolve_weights(path, sha256="ab" * 32, **COMMON)
    text = str(info.value)
    assert "ab" * 32 in text and actual in text and "expected" in text and "actual" in text


def test_matching_checksum_returns_the_path(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert resolve_weights(str(path), sha256=digest.upper(), **COMMON) == path.resolve()


def test_no_checksum_warns_with_the_digest(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    with pytest.warns(UserWarning, match=hashlib.sha256(b"weights").hexdigest()):
        assert resolve_weights(path, sha256=None, **COMMON) == path.resolve()


def test_load_state_dict_torch_and_safetensors(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    torch.save(state, tmp_path / "s.pt")
    loaded = load_state_dict(tmp_path / "s.pt")
    assert set(loaded) == set(state) and torch.equal(loaded["a.weight"], state["a.weight"])

    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(load_state_dict(tmp_path / "ckpt.pt")["a.weight"], state["a.weight"])

    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(state, str(tmp_path / "s.safetensors"))
    loaded = load_state_dict(tmp_path / "s.safetensors")
    assert torch.equal(loaded["a.weight"], state["a.weight"])


def test_load_state_dict_rejects_non_state_dicts(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.pt")

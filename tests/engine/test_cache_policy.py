"""The L2 policy switch of the streamed weight loads (no GPU needed: it only picks a string)."""

from __future__ import annotations

import pytest
import torch

from m2agent.engine.kernels.cache_policy import ENV_VAR, streamed_eviction

CUDA = torch.device("cuda")


def test_on_by_default_on_cuda_and_never_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert streamed_eviction("moe", CUDA) == "evict_first"
    assert streamed_eviction("dense", CUDA) == "evict_first"
    assert streamed_eviction("moe", torch.device("cpu")) == ""


@pytest.mark.parametrize(
    ("value", "moe", "dense"),
    [
        ("0", "", ""),
        ("off", "", ""),
        ("1", "evict_first", "evict_first"),
        ("moe", "evict_first", ""),
    ],
)
def test_the_switch_turns_kinds_off(
    monkeypatch: pytest.MonkeyPatch, value: str, moe: str, dense: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert (streamed_eviction("moe", CUDA), streamed_eviction("dense", CUDA)) == (moe, dense)


def test_an_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        streamed_eviction("router", CUDA)

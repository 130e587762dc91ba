"""The checkpoint tokenizer: round trips, M2's special and added tokens, streaming decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2agent.engine.errors import TokenizerError
from m2agent.engine.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "emoji 😀🚀👩‍👩‍👧 and CJK 我们修复这个错误 and café",
    "  leading spaces, trailing newline\n\n",
    "]~!b[]~b]user\nhi[e~[\n]~b]ai\n<think>\nhm</think>\n\n<minimax:tool_call>",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_m2_checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_m2_checkpoint)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_markers_are_single_tokens(tokenizer: Tokenizer) -> None:
    for marker in ("]~!b[", "]~b]", "[e~[", "<think>", "</think>", "<minimax:tool_call>"):
        ids = tokenizer.encode(marker)
        assert len(ids) == 1, marker
        assert ids[0] == tokenizer.token_to_id(marker)


def test_special_tokens_are_skipped_but_think_tags_survive(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("]~!b[]~b]ai\n<think>\nx</think>y[e~[")
    assert tokenizer.decode(ids) == "ai\n<think>\nx</think>y"
    assert tokenizer.eos_token_id == tokenizer.token_to_id("[e~[")
    assert tokenizer.eos_token_id in tokenizer.special_ids
    assert tokenizer.token_to_id("<think>") not in tokenizer.special_ids


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_decode_never_splits_a_character(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    deltas = [detokenizer.add(i) for i in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_multibyte_character_held_until_complete(tokenizer: Tokenizer) -> None:
    # Byte-level tokens of one 4-byte emoji, fed one byte-token at a time.
    byte_ids = [tokenizer.encode(ch)[0] for ch in ("a",)]
    emoji_ids = tokenizer.encode("😀")
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add(byte_ids[0]) == "a"
    outputs = [detokenizer.add(i) for i in emoji_ids]
    assert outputs[-1] == "😀"
    assert all(o == "" for o in outputs[:-1])


def test_missing_and_corrupt_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable tokenizer"):
        Tokenizer.from_dir(tmp_path)

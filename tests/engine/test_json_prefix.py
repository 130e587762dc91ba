"""The JSON-object prefix validator: every prefix of a real object is accepted, the object's
end is seen, invalid text is refused, and the completion length really completes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2agent.engine.json_prefix import JsonPrefix

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=8), values, max_size=5)


def dumps_variants(obj: dict[str, Any]) -> list[bytes]:
    return [
        json.dumps(obj).encode(),
        json.dumps(obj, ensure_ascii=False).encode(),
        json.dumps(obj, indent=2, ensure_ascii=False).encode(),
        json.dumps(obj, separators=(",", ":")).encode(),
    ]


def accepts(text: bytes) -> bool:
    return JsonPrefix().feed(text) is not None


def minimal_completion(state: JsonPrefix) -> bytes:
    """Greedy walk along bytes that shorten the completion: proves the length is reachable."""
    out = b""
    while not state.complete:
        need = state.completion_length
        for byte in range(256):
            after = state.feed(bytes([byte]))
            if after is not None and after.completion_length == need - 1:
                state, out = after, out + bytes([byte])
                break
        else:
            raise AssertionError(f"no byte shortens {state}")
    return out


@settings(max_examples=60, deadline=None)
@given(objects)
def test_every_prefix_of_an_object_is_accepted_and_the_end_is_seen(obj: dict[str, Any]) -> None:
    for text in dumps_variants(obj):
        state: JsonPrefix | None = JsonPrefix().feed(b"\n  ")
        for i, byte in enumerate(text):
            assert state is not None, text[:i]
            assert not state.complete, text[:i]
            state = state.feed(bytes([byte]))
        assert state is not None and state.complete
        assert state.feed(b" ") is None  # nothing may follow the object


@settings(max_examples=60, deadline=None)
@given(objects, st.data())
def test_completion_length_completes_every_prefix(obj: dict[str, Any], data: st.DataObject) -> None:
    text = json.dumps(obj, ensure_ascii=False).encode()
    cut = data.draw(st.integers(0, len(text)))
    state = JsonPrefix().feed(text[:cut])
    assert state is not None
    tail = minimal_completion(state)
    assert len(tail) == state.completion_length
    assert isinstance(json.loads((text[:cut] + tail).decode()), dict)


@pytest.mark.parametrize(
    "text",
    [
        b"[]",  # the top level must be an object
        b'"x"',
        b"1",
        b"{,",
        b"{}}",
        b"{} ",
        b'{"a" 1',
        b'{"a":}',
        b'{"a":1,}',
        b'{"a":[1,]}',
        b"{1:2}",
        b'{"a":01}',
        b'{"a":1.}',
        b'{"a":1e}',
        b'{"a":.5}',
        b'{"a":-}',
        b'{"a":+1}',
        b'{"a":tru}',
        b'{"a":True}',
        b'{"a":nul ',
        b'{"a":"\\x"}',
        b'{"a":"\\u12g4"}',
        b'{"a":"line\nbreak"}',  # raw control character in a string
        b'{"a":"\xff"}',  # not UTF-8
        b'{"a":"\xc0\xaf"}',  # overlong
        b'{"a":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'{"a":"\xe2\x82"}',  # truncated character
        b"{'a':1}",
        b'{"a":NaN}',
    ],
)
def test_invalid_text_is_refused(text: bytes) -> None:
    assert not accepts(text)


@pytest.mark.parametrize(
    ("prefix", "length"),
    [
        (b"", 2),
        (b"  {", 1),
        (b'{"a', 4),
        (b'{"a"', 3),
        (b'{"a":', 2),
        (b'{"a":[1,', 3),
        (b'{"a":"\\u12', 4),
        (b'{"a":tr', 3),
        (b'{"a":-', 2),
        (b'{"a":1.5e+', 2),
        (b'{"a":{"b":[{}', 3),
        (b'{"a":1}', 0),
    ],
)
def test_completion_length(prefix: bytes, length: int) -> None:
    state = JsonPrefix().feed(prefix)
    assert state is not None and state.completion_length == length

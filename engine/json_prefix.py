"""Is this byte string the start of exactly one JSON object? An incremental validator.

A pushdown automaton over UTF-8 bytes (RFC 8259: strings with escapes and `\\u` sequences,
numbers, `true`/`false`/`null`, nesting; multi-byte characters checked as UTF-8). Leading
whitespace is allowed; the top-level value must be an object, and the text ends where it
closes. `feed` returns a new state (states are immutable, so checking a candidate costs no
copy), and `completion_length` is the fewest bytes that would close the object from here:
the budget a constrained decoder needs to keep so the output can always be finished.
Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

WHITESPACE = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrtu')
QUOTE, BACKSLASH = ord('"'), ord("\\")


class Mode(Enum):
    START = "start"  # before the top-level object
    KEY_OR_END = "key or end"  # after `{`
    KEY = "key"  # after `,` in an object
    COLON = "colon"  # after a key
    VALUE = "value"  # after `:` or after `,` in an array
    VALUE_OR_END = "value or end"  # after `[`
    COMMA_OR_END = "comma or end"  # after a value inside a container
    STRING = "string"
    ESCAPE = "escape"  # after a backslash
    UNICODE = "unicode"  # inside \uXXXX (`count` hex digits read)
    MINUS = "minus"  # after a leading `-`: a digit must follow
    ZERO = "zero"  # integer part is `0`
    INT = "int"  # integer part 1-9 followed by digits
    DOT = "dot"  # after `.`: a digit must follow
    FRAC = "frac"
    EXP = "exp"  # after `e`/`E`: a sign or digit must follow
    EXP_SIGN = "exp sign"  # after the exponent's sign: a digit must follow
    EXP_DIGITS = "exp digits"
    LITERAL = "literal"  # inside true/false/null (`literal` holds the bytes still due)
    DONE = "done"


NUMBER_ENDS = frozenset({Mode.ZERO, Mode.INT, Mode.FRAC, Mode.EXP_DIGITS})
# Bytes the current token still needs before it can end, by mode.
_TOKEN_DUE = {Mode.MINUS: 1, Mode.DOT: 1, Mode.EXP: 1, Mode.EXP_SIGN: 1}


@dataclass(frozen=True, slots=True)
class JsonPrefix:
    """The state after some bytes. `JsonPrefix()` is the empty text."""

    mode: Mode = Mode.START
    stack: tuple[bool, ...] = ()  # open containers, innermost last: True for an object
    is_key: bool = False  # the open string is an object key
    count: int = 0  # hex digits read in \uXXXX
    utf8_due: int = 0  # continuation bytes the open multi-byte character still needs
    utf8_low: int = 0x80  # the next continuation byte's allowed range (RFC 3629 table 3-7)
    utf8_high: int = 0xBF
    literal: bytes = b""

    @property
    def complete(self) -> bool:
        return self.mode is Mode.DONE

    def feed(self, data: bytes) -> JsonPrefix | None:
        """The state after `data`, or None when `data` cannot continue a JSON object."""
        state: JsonPrefix | None = self
        for byte in data:
            assert state is not None
            state = state._step(byte)
            if state is None:
                return None
        return state

    @property
    def completion_length(self) -> int:
        """The fewest bytes that complete the object (0 when it is complete)."""
        mode = self.mode
        closers = len(self.stack)
        if mode is Mode.DONE:
            return 0
        if mode is Mode.START:
            return 2  # {}
        if mode is Mode.KEY:
            return 4 + closers  # "":0
        if mode is Mode.COLON:
            return 2 + closers  # :0
        if mode is Mode.VALUE:
            return 1 + closers  # 0
        if mode is Mode.STRING:
            return self.utf8_due + 1 + (2 if self.is_key else 0) + closers
        if mode is Mode.ESCAPE:
            return 2 + (2 if self.is_key else 0) + closers  # n"
        if mode is Mode.UNICODE:
            return 4 - self.count + 1 + (2 if self.is_key else 0) + closers
        if mode is Mode.LITERAL:
            return len(self.literal) + closers
        return _TOKEN_DUE.get(mode, 0) + closers

    def _step(self, byte: int) -> JsonPrefix | None:
        mode = self.mode
        if mode is Mode.STRING:
            return self._string_byte(byte)
        if mode is Mode.ESCAPE:
            if byte not in ESCAPES:
                return None
            if byte == ord("u"):
                return replace(self, mode=Mode.UNICODE, count=0)
            return replace(self, mode=Mode.STRING)
        if mode is Mode.UNICODE:
            if byte not in HEX:
                return None
            if self.count == 3:
                return replace(self, mode=Mode.STRING, count=0)
            return replace(self, count=self.count + 1)
        if mode is Mode.LITERAL:
            if byte != self.literal[0]:
                return None
            if len(self.literal) == 1:
                return self._value_done()
            return replace(self, literal=self.literal[1:])
        if mode in (Mode.MINUS, Mode.ZERO, Mode.INT, Mode.DOT, Mode.FRAC):
            return self._number_byte(byte)
        if mode in (Mode.EXP, Mode.EXP_SIGN, Mode.EXP_DIGITS):
            return self._exponent_byte(byte)
        if byte in WHITESPACE:
            return None if mode is Mode.DONE else self
        return self._structural(byte)

    def _structural(self, byte: int) -> JsonPrefix | None:
        char, mode = chr(byte), self.mode
        if mode is Mode.START:
            return replace(self, mode=Mode.KEY_OR_END, stack=(True,)) if char == "{" else None
        if mode in (Mode.KEY_OR_END, Mode.KEY):
            if char == '"':
                return replace(self, mode=Mode.STRING, is_key=True)
            return self._close() if char == "}" and mode is Mode.KEY_OR_END else None
        if mode is Mode.COLON:
            return replace(self, mode=Mode.VALUE) if char == ":" else None
        if mode is Mode.COMMA_OR_END:
            in_object = self.stack[-1]
            if char == ",":
                return replace(self, mode=Mode.KEY if in_object else Mode.VALUE)
            return self._close() if char == ("}" if in_object else "]") else None
        if mode is Mode.VALUE_OR_END and char == "]":
            return self._close()
        if mode in (Mode.VALUE, Mode.VALUE_OR_END):
            return self._value_start(char)
        return None  # DONE: nothing may follow the object

    def _value_start(self, char: str) -> JsonPrefix | None:
        if char == "{":
            return replace(self, mode=Mode.KEY_OR_END, stack=(*self.stack, True))
        if char == "[":
            return replace(self, mode=Mode.VALUE_OR_END, stack=(*self.stack, False))
        if char == '"':
            return replace(self, mode=Mode.STRING, is_key=False)
        if char == "-":
            return replace(self, mode=Mode.MINUS)
        if char == "0":
            return replace(self, mode=Mode.ZERO)
        if "1" <= char <= "9":
            return replace(self, mode=Mode.INT)
        for word in ("true", "false", "null"):
            if char == word[0]:
                return replace(self, mode=Mode.LITERAL, literal=word[1:].encode())
        return None

    def _close(self) -> JsonPrefix:
        return replace(self, stack=self.stack[:-1])._value_done()

    def _value_done(self) -> JsonPrefix:
        mode = Mode.COMMA_OR_END if self.stack else Mode.DONE
        return replace(self, mode=mode, literal=b"")

    def _string_byte(self, byte: int) -> JsonPrefix | None:
        if self.utf8_due:
            if not self.utf8_low <= byte <= self.utf8_high:
                return None
            return replace(self, utf8_due=self.utf8_due - 1, utf8_low=0x80, utf8_high=0xBF)
        if byte == QUOTE:
            if self.is_key:
                return replace(self, mode=Mode.COLON, is_key=False)
            return replace(self, is_key=False)._value_done()
        if byte == BACKSLASH:
            return replace(self, mode=Mode.ESCAPE)
        if byte < 0x20:
            return None  # control characters must be escaped
        if byte < 0x80:
            return self
        return self._utf8_lead(byte)

    def _utf8_lead(self, byte: int) -> JsonPrefix | None:
        """The first byte of a multi-byte character: how many follow, and the range of the
        next (which rules out overlong forms, surrogates and code points above U+10FFFF)."""
        if 0xC2 <= byte <= 0xDF:
            return replace(self, utf8_due=1)
        if 0xE0 <= byte <= 0xEF:
            low, high = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(byte, (0x80, 0xBF))
            return replace(self, utf8_due=2, utf8_low=low, utf8_high=high)
        if 0xF0 <= byte <= 0xF4:
            low, high = {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(byte, (0x80, 0xBF))
            return replace(self, utf8_due=3, utf8_low=low, utf8_high=high)
        return None

    def _number_byte(self, byte: int) -> JsonPrefix | None:
        mode, char = self.mode, chr(byte)
        if byte in DIGITS:
            if mode is Mode.MINUS:
                return replace(self, mode=Mode.ZERO if char == "0" else Mode.INT)
            if mode is Mode.ZERO:
                return None  # no leading zeros
            return replace(self, mode=Mode.FRAC if mode is Mode.DOT else mode)
        if mode in (Mode.MINUS, Mode.DOT):
            return None
        if char == "." and mode in (Mode.ZERO, Mode.INT):
            return replace(self, mode=Mode.DOT)
        if char in "eE":
            return replace(self, mode=Mode.EXP)
        return self._value_done()._step(byte)  # the number ended: the byte follows it

    def _exponent_byte(self, byte: int) -> JsonPrefix | None:
        mode = self.mode
        if byte in DIGITS:
            return replace(self, mode=Mode.EXP_DIGITS)
        if mode is Mode.EXP and chr(byte) in "+-":
            return replace(self, mode=Mode.EXP_SIGN)
        if mode is Mode.EXP_DIGITS:
            return self._value_done()._step(byte)
        return None

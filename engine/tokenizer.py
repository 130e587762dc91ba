"""The checkpoint's tokenizer (tokenizer.json via `tokenizers`) and incremental detokenization.

Special tokens come from the files, never from constants: M2's `]~!b[`, `]~b]`, `[e~[` are
special (dropped when decoding with skip_special_tokens); `<think>` and the tool-call tags are
added tokens that are *not* special, so they survive decoding.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from m2agent.engine.errors import TokenizerError
from m2agent.engine.jsonfile import read_json_object

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
    def __init__(self, backend: HFTokenizer, eos_token: str | None = None) -> None:
        self._backend = backend
        self.special_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        self.eos_token_id = backend.token_to_id(eos_token) if eos_token else None

    @classmethod
    def from_dir(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        file = folder / TOKENIZER_FILE
        if not file.is_file():
            raise TokenizerError(f"{file}: no such file; the checkpoint needs its tokenizer.json")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises bare Exception subclasses on bad files
            raise TokenizerError(f"{file}: not a readable tokenizer ({e})") from e
        config_file = folder / TOKENIZER_CONFIG_FILE
        config = read_json_object(config_file, TokenizerError) if config_file.is_file() else {}
        eos = config.get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        return cls(backend, eos if isinstance(eos, str) else None)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / TOKENIZER_FILE).is_file()

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` exactly as written (markers in it map to their added tokens;
        nothing is prepended: the prompt carries its own `]~!b[`)."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_releasing_gil(self, text: str) -> list[int]:
        """The same ids as `encode`, with the GIL released while the tokenizer works (the
        library's batch path releases it; its single-text path does not): for a worker thread
        that must not stall the threads around it, such as the server's event loop."""
        return self._backend.encode_batch([text], add_special_tokens=False)[0].ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def token_bytes(self) -> list[bytes | None]:
        """The bytes each token id stands for, by id; None for added tokens (markers) and for
        ids with no token. Byte-level BPE tokens map through the byte alphabet (a token may
        hold part of a multi-byte character); other tokens are decoded one by one."""
        added = set(self._backend.get_added_tokens_decoder())
        alphabet = _byte_level_alphabet()
        table: list[bytes | None] = []
        for token_id in range(self.vocab_size):
            token = None if token_id in added else self._backend.id_to_token(token_id)
            if token is None:
                table.append(None)
            elif all(char in alphabet for char in token):
                table.append(bytes(alphabet[char] for char in token))
            else:
                table.append(self._backend.decode([token_id]).encode("utf-8"))
        return table


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level map from the character standing for each byte back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class IncrementalDetokenizer:
    """Text deltas for a growing list of token ids. A multi-byte character split across tokens
    is held back until complete (never emitted as U+FFFD halves)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer, self._skip = tokenizer, skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # decode from here, for context (BPE merges, spaces)
        self._read_offset = 0  # text of ids before this point has been emitted

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        text = decode(self._ids[self._prefix_offset :], self._skip)
        if len(text) <= len(prefix) or (text.endswith("\ufffd") and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix) :]

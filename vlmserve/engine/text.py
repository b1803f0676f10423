"""Turning generated token ids into streamed text: incremental decoding and stop strings.

Text is only released once it can no longer change: a trailing replacement character may be half
of a multi-byte character, and a trailing piece that starts a stop string may become that stop
string. Both are held back until the next token settles them or the sequence ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Decoder(Protocol):
    """What :class:`TextStream` needs from a tokenizer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class TextStream:
    """The text of one generated sequence, released piece by piece."""

    tokenizer: Decoder
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    released: int = 0
    stopped: bool = False

    def add(self, token_id: int) -> str:
        """Append one token; return the text that is now final (may be empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._stop_index(text)
        if cut is not None:
            self.stopped = True
            return self._release(text[:cut])
        settled = len(text) - self._held_back(text)
        return self._release(text[:settled])

    def flush(self) -> str:
        """Release everything still held back (the sequence ended without a stop string)."""
        return self._release(self.tokenizer.decode(self.token_ids, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        piece = text[self.released :]
        self.released = max(self.released, len(text))
        return piece

    def _stop_index(self, text: str) -> int | None:
        if not self.stop:
            return None
        start = max(0, self.released - max(len(s) for s in self.stop))
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        held = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

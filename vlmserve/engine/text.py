"""Turning generated token ids into streamed text: incremental decoding and stop strings.

Each new token is decoded in a short window, not with the whole sequence (which would cost time
quadratic in the output length): the window starts at the tokens that produced the previous piece
of text, which give the tokenizer the context it needs for spacing and merges, and the new text is
what the window decodes to beyond what its first part did. A window whose text ends in U+FFFD
holds a character whose bytes have not all arrived (byte-level tokens split multi-byte UTF-8), so
it waits for the next token and grows by one.

Text is only released once it can no longer change. Besides incomplete characters, a trailing
piece that starts a stop string may become that stop string, so it is held back until the next
token settles it or the sequence ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

#: What a tokenizer decodes an incomplete UTF-8 sequence to.
REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What :class:`TextStream` needs from a tokenizer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class TextStream:
    """The text of one generated sequence, released piece by piece."""

    tokenizer: Decoder
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    stopped: bool = False
    #: Decoded text not released yet: it may begin a stop string.
    pending: str = ""
    #: The decode window: tokens from ``_start`` on; those before ``_read`` are already text.
    _start: int = 0
    _read: int = 0

    def add(self, token_id: int) -> str:
        """Append one token; return the text that is now final (may be empty)."""
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        self.pending += self._decode_new(final=False)
        cut = self._stop_index()
        if cut is not None:
            self.stopped = True
            piece, self.pending = self.pending[:cut], ""
            return piece
        settled = len(self.pending) - self._held_back()
        piece, self.pending = self.pending[:settled], self.pending[settled:]
        return piece

    def flush(self) -> str:
        """Release everything still held back (the sequence ended without a stop string)."""
        if self.stopped:
            return ""
        piece, self.pending = self.pending + self._decode_new(final=True), ""
        return piece

    def _decode_new(self, *, final: bool) -> str:
        """Text the tokens after ``_read`` add; empty while a character is incomplete, unless
        ``final`` (then the replacement character is the text)."""
        context = self.tokenizer.decode(
            self.token_ids[self._start : self._read], skip_special_tokens=True
        )
        text = self.tokenizer.decode(self.token_ids[self._start :], skip_special_tokens=True)
        if len(text) <= len(context) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self._start, self._read = self._read, len(self.token_ids)
        return text[len(context) :]

    def _stop_index(self) -> int | None:
        """Where the first stop string starts in the pending text, if one is there.

        Released text never holds the start of a stop string (see :meth:`_held_back`), so only
        the pending text is searched.
        """
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Characters at the end of the pending text that could begin a stop string."""
        held = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

"""Incremental detokenization with stop strings, on a toy character tokenizer."""

from __future__ import annotations

from vlmserve.engine.text import TextStream

ALPHABET = "abc ,.\ufffd"


class CharTokenizer:
    """Token i is ALPHABET[i]; enough to exercise hold-back and stop logic."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(ALPHABET[i] for i in token_ids)


def feed(stream: TextStream, text: str) -> list[str]:
    return [stream.add(ALPHABET.index(ch)) for ch in text]


def test_plain_text_is_released_token_by_token() -> None:
    stream = TextStream(CharTokenizer())
    assert feed(stream, "ab c") == ["a", "b", " ", "c"]


def test_stop_string_is_cut_and_never_leaked() -> None:
    stream = TextStream(CharTokenizer(), stop=("c.",))
    pieces = feed(stream, "abc.")
    assert "".join(pieces) == "ab"
    assert pieces[2] == ""  # "c" is held back: it may start the stop string
    assert stream.stopped


def test_held_back_prefix_is_released_when_it_does_not_stop() -> None:
    stream = TextStream(CharTokenizer(), stop=("c.",))
    assert "".join(feed(stream, "acb")) == "acb"
    assert not stream.stopped


def test_partial_character_waits_for_the_next_token() -> None:
    stream = TextStream(CharTokenizer())
    assert feed(stream, "a\ufffd") == ["a", ""]
    assert stream.flush() == "\ufffd"

"""Incremental detokenization with stop strings: a toy character tokenizer for the hold-back
rules, real byte-level and SentencePiece-style tokenizers for split characters and spacing."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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


# -- real tokenizers: byte-level tokens that split characters, word-boundary markers -------------

CORPUS = ["the cat sat on the mat, and the dog sat on the log."] * 20
#: Non-ASCII characters the tokenizers never saw: each becomes 2 to 4 byte tokens.
MULTI_BYTE = "the café cat 猫 sat 🙂 on the mat"


def byte_level_tokenizer() -> Tokenizer:
    """A GPT-2-style byte-level BPE tokenizer trained on ASCII text only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style tokenizer: words carry a leading "▁" that decodes to a space."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<eos>"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


class WindowRecorder:
    """Decodes with a real tokenizer and records how many ids each call was given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.sizes.append(len(token_ids))
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))


def test_multi_byte_characters_split_across_tokens_are_released_whole() -> None:
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode(MULTI_BYTE).ids
    assert len(ids) > len(tokenizer.encode("the caf cat  sat  on the mat").ids) + 6  # bytes split
    stream = TextStream(tokenizer)
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) + stream.flush() == MULTI_BYTE
    assert not any("\ufffd" in piece for piece in pieces)
    # The emoji's first three byte tokens release nothing; the fourth releases the character.
    emoji_at = [i for i, piece in enumerate(pieces) if "🙂" in piece]
    assert len(emoji_at) == 1 and pieces[emoji_at[0] - 3 : emoji_at[0]] == ["", "", ""]


def test_stop_string_made_of_multi_byte_characters() -> None:
    tokenizer = byte_level_tokenizer()
    stream = TextStream(tokenizer, stop=("猫",))
    text = "".join(stream.add(i) for i in tokenizer.encode(MULTI_BYTE).ids if not stream.stopped)
    assert stream.stopped and text == "the café cat "
    assert stream.flush() == ""


def test_word_boundaries_survive_windowed_decoding() -> None:
    tokenizer = metaspace_tokenizer()
    text = "the dog sat on the cat, and the mat sat on the log."
    stream = TextStream(tokenizer)
    streamed = "".join(stream.add(i) for i in tokenizer.encode(text).ids) + stream.flush()
    assert streamed == tokenizer.decode(tokenizer.encode(text).ids) == text


def test_special_tokens_are_skipped() -> None:
    tokenizer = byte_level_tokenizer()
    eos = tokenizer.token_to_id("<eos>")
    ids = tokenizer.encode("the cat").ids
    stream = TextStream(tokenizer)
    assert "".join(stream.add(i) for i in [*ids, eos, *ids]) + stream.flush() == "the catthe cat"


def test_each_token_decodes_a_short_window_however_long_the_text() -> None:
    recorder = WindowRecorder(byte_level_tokenizer())
    ids = recorder.tokenizer.encode(MULTI_BYTE * 40).ids
    stream = TextStream(recorder)
    text = "".join(stream.add(i) for i in ids) + stream.flush()
    assert text == MULTI_BYTE * 40
    # Two decodes per token, each of the previous piece's tokens plus at most one character's
    # bytes: the cost per token does not grow with the length of the output.
    assert len(recorder.sizes) == 2 * len(ids) + 2
    assert max(recorder.sizes) <= 8

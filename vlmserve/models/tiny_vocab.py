"""Tiny tokenizers whose special tokens sit at the real checkpoints' ids.

Some engines hard-code a token id (vLLM's Phi-3-V writes 32044 at image positions), so a tiny
checkpoint must have the real vocabulary size and the special tokens at their real ids. The BPE
trained here stays a few hundred tokens; unreachable filler entries pad its vocabulary up to the
first special id.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from vlmserve.models.tiny import train_tokenizer, wrap_tokenizer


def padded_tokenizer(
    base_specials: list[str],
    specials: list[str],
    *,
    first_special_id: int,
    bos: str,
    eos: str,
    unk: str,
    pad: str,
    add_bos: bool,
    extra_special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose ``specials`` take the ids ``first_special_id``, ``+1``, ...

    ``base_specials`` keep the lowest ids (``<unk>``, ``<s>``, ``</s>`` for Llama-style
    vocabularies).
    """
    trained = train_tokenizer(
        base_specials, bos=bos if bos in base_specials else unk, eos=unk, unk=unk, pad=unk
    )
    spec = json.loads(trained.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for filler_id in range(len(vocab), first_special_id):
        vocab[f"<vlmserve_filler_{filler_id}>"] = filler_id
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens(specials)
    for token, token_id in zip(
        specials, range(first_special_id, first_special_id + len(specials)), strict=True
    ):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return wrap_tokenizer(tokenizer, bos, eos, unk, pad, extra_special_tokens)

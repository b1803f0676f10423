"""Choosing the next token from logits, per sequence, with the OpenAI sampling knobs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmserve.engine.base import SamplingOptions, TokenLogprob


def new_generator(seed: int | None) -> torch.Generator:
    """A CPU generator, seeded when the request gave a seed (reproducible output)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def adjust_logits(
    logits: torch.Tensor,
    options: SamplingOptions,
    generated: list[int],
    eos_token_ids: tuple[int, ...],
) -> torch.Tensor:
    """Apply EOS suppression and OpenAI's presence and frequency penalties to one row."""
    logits = logits.float().clone()
    if eos_token_ids and (options.ignore_eos or len(generated) < options.min_tokens):
        logits[list(eos_token_ids)] = float("-inf")
    if generated and (options.presence_penalty or options.frequency_penalty):
        ids, counts = torch.tensor(generated).unique(return_counts=True)
        logits[ids] -= options.presence_penalty + options.frequency_penalty * counts.float()
    return logits


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> int:
    """Pick one token: greedy at temperature 0, else temperature and nucleus (top-p) sampling."""
    if options.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > options.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprob(
    raw_logits: torch.Tensor, token_id: int, top_n: int, token_text: Callable[[int], str]
) -> TokenLogprob:
    """The chosen token's log probability and the ``top_n`` most likely tokens at its position.

    Computed from the model's raw logits, before penalties and grammar masks, as vLLM reports
    them by default (``logprobs_mode="raw_logprobs"``).
    """
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    top: list[tuple[str, float]] = []
    if top_n:
        values, ids = torch.topk(logprobs, top_n)
        top = [(token_text(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]
    return TokenLogprob(token_text(token_id), float(logprobs[token_id]), top)

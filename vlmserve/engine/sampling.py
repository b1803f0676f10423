"""Choosing the next token from logits, per sequence, with the OpenAI sampling knobs.

Repetition penalty follows vLLM (and transformers): a token already in the prompt or the output
has its logit divided by the penalty when positive, multiplied when negative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmserve.engine.base import Sampling, TokenLogprob


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
    sampling: Sampling,
    generated: list[int],
    eos_token_ids: tuple[int, ...],
    prompt_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply EOS suppression, repetition penalty and OpenAI's presence and frequency penalties."""
    options = sampling.options
    logits = logits.float().clone()
    if eos_token_ids and (options.ignore_eos or len(generated) < options.min_tokens):
        logits[list(eos_token_ids)] = float("-inf")
    if sampling.repetition_penalty != 1.0:
        seen = torch.tensor(generated, dtype=torch.long)
        if prompt_ids is not None:
            seen = torch.cat([seen, prompt_ids.flatten().to(torch.long).cpu()])
        seen = seen.unique()
        values = logits[seen]
        penalty = sampling.repetition_penalty
        logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if generated and (options.presence_penalty or options.frequency_penalty):
        ids, counts = torch.tensor(generated).unique(return_counts=True)
        logits[ids] -= options.presence_penalty + options.frequency_penalty * counts.float()
    return logits


#: Below this temperature sampling is greedy (vLLM's ``_SAMPLING_EPS``).
SAMPLING_EPS = 1e-5


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Pick one token: greedy at temperature 0, else temperature, top-k and nucleus (top-p).

    Temperatures below ``SAMPLING_EPS`` are greedy too, as in vLLM: dividing by them overflows
    the logits to infinity, and the probabilities to NaN.
    """
    if sampling.temperature < SAMPLING_EPS:
        return int(torch.argmax(logits))
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
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

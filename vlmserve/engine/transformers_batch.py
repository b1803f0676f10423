"""The transformers engine's worker-side records: a request, its sequences, and the batched cache.

These hold state only; :mod:`vlmserve.engine.transformers_engine`'s worker thread drives them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmserve.engine.base import EngineOutput, PreparedRequest, Sampling, TokenLogprob
from vlmserve.engine.grammar import Constraint
from vlmserve.engine.text import TextStream

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Request:
    """A request inside the worker: its prepared inputs, its queue and its random generator."""

    prepared: PreparedRequest
    queue: asyncio.Queue[EngineOutput | BaseException]
    loop: asyncio.AbstractEventLoop
    generator: torch.Generator
    #: The compiled ``response_format`` grammar, if the output is constrained.
    grammar: Any = None

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

    @property
    def sampling(self) -> Sampling:
        return self.prepared.sampling

    @property
    def prompt_tokens(self) -> int:
        return self.prepared.prompt_tokens

    @property
    def prompt_ids(self) -> torch.Tensor:
        ids: torch.Tensor = self.prepared.inputs["input_ids"]
        return ids

    def send(self, item: EngineOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class Sequence:
    """One choice of a request being decoded."""

    owner: Request
    index: int
    #: This sequence's own KV cache; stale while the sequence sits in a :class:`Batch`.
    kv: KV
    next_token: int
    text: TextStream
    #: Tokens in the KV cache (the position of the next input token).
    length: int
    generated: list[int] = field(default_factory=list)
    constraint: Constraint | None = None
    #: The log probability of ``next_token``, when the request asked for logprobs.
    logprob: TokenLogprob | None = None


@dataclass
class Batch:
    """The left-padded KV cache of the sequences decoded together, kept across steps.

    While the same sequences run, each step appends to this cache in place; only when one joins
    or leaves is it split back into per-sequence caches and packed anew.
    """

    seqs: list[Sequence]
    cache: Any
    mask: torch.Tensor

    def unpack(self) -> None:
        """Give every member its own view of its rows (no copy)."""
        width = self.mask.shape[1]
        for row, seq in enumerate(self.seqs):
            start = width - seq.length
            seq.kv = [
                (lay.keys[row : row + 1, :, start:], lay.values[row : row + 1, :, start:])
                for lay in self.cache.layers
            ]

    @classmethod
    def pack(cls, seqs: list[Sequence], device: str) -> Batch:
        """Left-pad the members' caches into one batch (the one copy of the KV cache)."""
        from transformers import DynamicCache

        longest = max(s.length for s in seqs)
        layers = []
        for layer in range(len(seqs[0].kv)):
            keys, values = seqs[0].kv[layer]
            shape = (len(seqs), keys.shape[1], longest, keys.shape[3])
            k_batch, v_batch = keys.new_zeros(shape), values.new_zeros(shape)
            for row, seq in enumerate(seqs):
                k_batch[row, :, longest - seq.length :] = seq.kv[layer][0][0]
                v_batch[row, :, longest - seq.length :] = seq.kv[layer][1][0]
            layers.append((k_batch, v_batch))
        mask = torch.zeros(len(seqs), longest, dtype=torch.long, device=device)
        for row, seq in enumerate(seqs):
            mask[row, longest - seq.length :] = 1
        return cls(list(seqs), DynamicCache(ddp_cache_data=layers), mask)

"""The transformers engine: CPU (or one GPU) serving with continuous batching, for development.

``prepare`` runs the processor once per request, off the event loop (the rendered prompt gives
the length and image tokens the shared checks need); ``generate`` hands the prepared inputs to one
worker thread that owns the model. Each step the worker admits waiting requests (one prefill
each, with their images), then runs ONE batched decode step for every running sequence:
per-sequence KV caches are left-padded into a batch, so a request joins or leaves the batch
between any two decode steps. Outputs go back to each request's asyncio queue. An aborted request
is dropped at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import torch

from vlmserve.engine.base import (
    ChoiceDelta,
    Engine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    PreparedRequest,
    RequestLimits,
    SamplingOptions,
    StepSizes,
)
from vlmserve.engine.errors import EngineFailed, EngineStopping, RequestRejected
from vlmserve.engine.grammar import (
    Grammars,
    check_response_format,
    closing_window,
)
from vlmserve.engine.prepare import (
    Rendered,
    check_image_count,
    checkpoint_sampling_defaults,
    finish,
    shared_processor_kwargs,
)
from vlmserve.engine.sampling import adjust_logits, new_generator, sample, token_logprob
from vlmserve.engine.text import TextStream
from vlmserve.engine.transformers_batch import Batch, Request, Sequence
from vlmserve.logs import for_request
from vlmserve.models.base import ModelFamily
from vlmserve.models.families import family_for_checkpoint

logger = logging.getLogger(__name__)


class TransformersEngine(Engine):
    """Serves one local checkpoint with transformers, batching decode steps across requests."""

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        max_batch_size: int = 16,
        limits: RequestLimits | None = None,
    ):
        self.model_path = Path(model_path)
        self.family: ModelFamily = family_for_checkpoint(self.model_path)
        self.limits = limits or RequestLimits()
        self._defaults = checkpoint_sampling_defaults(self.model_path)
        self.device = device
        self.max_batch_size = max_batch_size
        self.model: Any = None
        self.processor: Any = None
        self._eos: tuple[int, ...] = ()
        self._grammars: Grammars | None = None
        self._max_len = 0
        self._pending: collections.deque[Request] = collections.deque()
        self._running: list[Sequence] = []
        self._step_sizes = StepSizes()
        self._batch: Batch | None = None
        self._aborted: set[str] = set()
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def max_model_len(self) -> int:
        """The language model's ``max_position_embeddings``."""
        return self._max_len

    async def start(self) -> None:
        """Load the model in a thread, then start the worker."""
        self.model, self.processor = await asyncio.to_thread(
            self.family.load, self.model_path, self.device
        )
        text_config = self.model.config.get_text_config()
        self._max_len = int(text_config.max_position_embeddings)
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.processor.tokenizer.eos_token_id
        self._eos = tuple(eos) if isinstance(eos, list) else (int(eos),)
        vocab_size = int(text_config.vocab_size)
        self._grammars = await asyncio.to_thread(
            Grammars, self.processor.tokenizer, vocab_size, self._eos
        )
        self._thread = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._thread.start()
        logger.info("loaded %s (%s family) on %s", self.model_path, self.family.name, self.device)

    async def shutdown(self) -> None:
        """Stop the worker; requests still running end with ``abort``."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    async def prepare(self, request: EngineRequest) -> PreparedRequest:
        """Refuse what this engine does not implement, then run the processor once (off the
        event loop) and check and resolve the request against the rendered prompt."""
        check_image_count(len(request.images), self.limits)
        _refuse_unsupported(request.sampling)
        kwargs = shared_processor_kwargs(self.family, request.images)
        try:
            inputs = await asyncio.to_thread(self._preprocess, request, kwargs)
        except (
            TypeError,
            UnicodeError,
        ) as exc:  # text the tokenizer cannot encode (lone surrogates)
            raise RequestRejected(
                "The text of this request cannot be tokenized (is it valid Unicode?).",
                param=request.input_param,
            ) from exc
        ids = inputs["input_ids"][0]
        counts = image_token_counts(ids, self.processor.image_token_id, len(request.images))
        rendered = Rendered(int(ids.shape[0]), counts, inputs)
        return finish(request, rendered, self._max_len, self.limits, self._defaults)

    async def generate(self, request: PreparedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Queue a prepared request for the worker and stream its outputs."""
        assert self._grammars is not None
        grammar = await asyncio.to_thread(
            self._grammars.compile, request.sampling.options.response_format
        )
        item = Request(
            request,
            asyncio.Queue(),
            asyncio.get_running_loop(),
            new_generator(request.sampling.options.seed),
            grammar,
        )
        with self._lock:
            # Behind every waiting request of the same or a more urgent priority.
            place = len(self._pending)
            while place and self._pending[place - 1].prepared.priority > request.priority:
                place -= 1
            self._pending.insert(place, item)
            self._lock.notify()
        choices = request.sampling.options.n
        ended = 0
        try:
            while ended < choices:
                output = await item.queue.get()
                if isinstance(output, BaseException):
                    raise output
                ended += sum(1 for d in output.deltas if d.finish_reason)
                yield output
        finally:
            if ended < choices:
                await self.abort(request.request_id)

    async def abort(self, request_id: str) -> None:
        """Mark the request; the worker drops it before its next step."""
        with self._lock:
            self._aborted.add(request_id)
            self._lock.notify()

    def stats(self) -> EngineStats:
        """Requests decoding now, and requests queued for a prefill."""
        with self._lock:
            running = len({id(s.owner) for s in self._running})
            return EngineStats(
                running=running, waiting=len(self._pending), step_sizes=self._step_sizes
            )

    # -- the worker thread --------------------------------------------------------------------

    def _preprocess(self, request: EngineRequest, kwargs: dict[str, Any]) -> dict[str, Any]:
        prompt = request.prompt
        if prompt is None:
            prompt = self.processor.apply_chat_template(
                request.messages, tokenize=False, add_generation_prompt=True
            )
        images = [self.family.prepare_image(i.image, i.detail) for i in request.images]
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt", **kwargs)
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            admitted = self._next_batch()
            if admitted is None:
                return
            for item in admitted:
                try:
                    self._prefill(item)
                except Exception:  # one request's failure must not stop the worker
                    logger.exception("prefill failed", extra=for_request(item.request_id))
                    item.send(EngineFailed("The engine failed on this request."))
            if self._running:
                try:
                    self._decode_step()
                except Exception:
                    logger.exception("decode step failed; failing the running requests")
                    self._fail_running()

    def _fail_running(self) -> None:
        """End every running request with an error (their caches may be inconsistent)."""
        with self._lock:
            owners = {id(s.owner): s.owner for s in self._running}
            self._running = []
            self._batch = None
        for owner in owners.values():
            owner.send(EngineFailed("The engine failed while generating."))

    def _next_batch(self) -> list[Request] | None:
        """Drop aborted work, then take the waiting requests that fit (None: shut down)."""
        with self._lock:
            while not self._stopping and not self._pending and not self._running:
                self._lock.wait()
            if self._stopping:
                owners = {id(s.owner): s.owner for s in self._running}
                owners.update((id(p), p) for p in self._pending)
                for owner in owners.values():
                    owner.send(EngineStopping("The server is shutting down.", code="shutting_down"))
                return None
            if self._aborted:
                for request_id in self._aborted:
                    logger.debug("dropped by abort", extra=for_request(request_id))
                self._pending = collections.deque(
                    p for p in self._pending if p.request_id not in self._aborted
                )
                self._running = [
                    s for s in self._running if s.owner.request_id not in self._aborted
                ]
                self._aborted.clear()
            admitted: list[Request] = []
            room = self.max_batch_size - len(self._running)
            while self._pending and (
                room >= self._pending[0].sampling.options.n or not admitted and not self._running
            ):
                item = self._pending.popleft()
                room -= item.sampling.options.n
                admitted.append(item)
            return admitted

    def _prefill(self, item: Request) -> None:
        request_id = item.request_id
        logger.debug("prefill: %d prompt tokens", item.prompt_tokens, extra=for_request(request_id))
        try:
            out = self.model(**item.prepared.inputs, use_cache=True)
        except Exception as exc:  # a bad input must fail its own request, not the worker
            logger.exception("prefill failed", extra=for_request(request_id))
            item.send(exc)
            return
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        logits = out.logits[0, -1]
        sampling = item.sampling
        sequences = []
        for index in range(sampling.options.n):
            text = TextStream(self.processor.tokenizer, sampling.options.stop)
            seq = Sequence(item, index, kv, -1, text, item.prompt_tokens)
            if self._grammars is not None:
                seq.constraint = self._grammars.constraint(item.grammar)
            seq.next_token = self._choose(seq, logits)
            sequences.append(seq)
        output = self._advance(sequences, item.prompt_tokens)
        with self._lock:
            self._running.extend(s for s in sequences if not self._done(s))
        item.send(output)

    def _decode_step(self) -> None:
        seqs = list(self._running)
        self._step_sizes.observe(len({id(s.owner) for s in seqs}))
        batch = self._batch
        if batch is None or [id(s) for s in batch.seqs] != [id(s) for s in seqs]:
            if batch is not None:
                batch.unpack()
            batch = self._batch = Batch.pack(seqs, self.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(seqs), 1)], dim=1)
        out = self.model(
            input_ids=torch.tensor([[s.next_token] for s in seqs], device=self.device),
            attention_mask=batch.mask,
            position_ids=torch.tensor([[s.length] for s in seqs], device=self.device),
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.cache = out.past_key_values
        for row, seq in enumerate(seqs):
            seq.length += 1
            seq.next_token = self._choose(seq, out.logits[row, -1])
        self._advance_all(seqs)

    def _choose(self, seq: Sequence, raw: torch.Tensor) -> int:
        """Sample a sequence's next token from its raw logits, within its grammar if any."""
        sampling = seq.owner.sampling
        logits = adjust_logits(raw, sampling, seq.generated, self._eos, seq.owner.prompt_ids)
        token: int | None = None
        if seq.constraint is not None:
            remaining = sampling.max_tokens - len(seq.generated)
            steer = remaining <= closing_window(sampling.max_tokens)
            if not seq.constraint.apply(logits, steer):
                token = self._eos[0]  # the grammar is complete: only a stop is left
        if token is None:
            token = sample(logits, sampling, seq.owner.generator)
        if seq.constraint is not None:
            seq.constraint.accept(token)
        options = sampling.options
        if options.logprobs:
            seq.logprob = token_logprob(raw, token, options.top_logprobs, self._token_text)
        return token

    def _token_text(self, token_id: int) -> str:
        return str(self.processor.tokenizer.decode([token_id]))

    def _advance_all(self, seqs: list[Sequence]) -> None:
        """Emit each request's new tokens, then keep only unfinished sequences."""
        by_owner: dict[int, list[Sequence]] = {}
        for seq in seqs:
            by_owner.setdefault(id(seq.owner), []).append(seq)
        outputs = [
            (g[0].owner, self._advance(g, g[0].owner.prompt_tokens)) for g in by_owner.values()
        ]
        with self._lock:
            self._running = [s for s in self._running if not self._done(s)]
        for owner, output in outputs:
            # Every running sequence is in this step, so all done here means the request is.
            if all(self._done(s) for s in by_owner[id(owner)]):
                logger.debug("finished", extra=for_request(owner.request_id))
            owner.send(output)

    def _advance(self, group: list[Sequence], prompt_tokens: int) -> EngineOutput:
        """Commit each sequence's sampled token into the request's next output.

        A finished sequence gets ``next_token = -1``; otherwise ``next_token`` is the input of its
        next decode step.
        """
        deltas = []
        for seq in group:
            sampling = seq.owner.sampling
            seq.generated.append(seq.next_token)
            reason: FinishReason | None = None
            if seq.next_token in self._eos and not sampling.options.ignore_eos:
                text, reason = seq.text.flush(), "stop"
            else:
                text = seq.text.add(seq.next_token)
                if seq.text.stopped:
                    reason = "stop"
                elif len(seq.generated) >= sampling.max_tokens:
                    text, reason = text + seq.text.flush(), "length"
            if reason:
                seq.next_token = -1
            logprobs = [seq.logprob] if seq.logprob is not None else None
            deltas.append(ChoiceDelta(seq.index, text, 1, reason, logprobs))
        return EngineOutput(prompt_tokens, deltas)

    @staticmethod
    def _done(seq: Sequence) -> bool:
        return seq.next_token == -1


def _refuse_unsupported(options: SamplingOptions) -> None:
    """A 400 for option combinations this engine cannot honour."""
    if options.top_logprobs and not options.logprobs:
        raise RequestRejected("top_logprobs requires logprobs to be true.", param="top_logprobs")
    check_response_format(options.response_format)
    if options.response_format and (options.ignore_eos or options.min_tokens):
        raise RequestRejected(
            "ignore_eos and min_tokens cannot be combined with a JSON response_format on the "
            "transformers engine: the grammar decides where the output ends.",
            param="ignore_eos" if options.ignore_eos else "min_tokens",
        )


def image_token_counts(ids: torch.Tensor, image_token_id: int, images: int) -> list[int]:
    """Image-feature positions in a rendered prompt: per image when each image is one run of
    ``image_token_id``, else their total."""
    mask = (ids == image_token_id).to(torch.int8)
    edges = torch.diff(mask, prepend=mask.new_zeros(1), append=mask.new_zeros(1))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    runs = (ends - starts).tolist()
    return runs if len(runs) == images else [int(mask.sum())]

"""The checks and resolutions every engine's ``prepare`` shares, after its own rendering.

An engine renders a request its own way (vLLM's renderer, or the transformers processor) into a
:class:`Rendered`; :func:`finish` then checks the image tokens counted in that rendering, caps
``max_tokens`` at what the context leaves, and fills unset sampling knobs from the checkpoint's
defaults, the same way on every engine.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vlmserve.engine.base import (
    EngineRequest,
    ImageInput,
    PreparedRequest,
    RequestLimits,
    Sampling,
    SamplingDefaults,
)
from vlmserve.engine.errors import RequestRejected
from vlmserve.models.base import ModelFamily

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Rendered:
    """A request as an engine rendered it: its length, its image tokens, the engine's input.

    ``image_tokens`` has one count per image of the request when the rendering tells them
    apart, else a single total.
    """

    prompt_tokens: int
    image_tokens: list[int]
    inputs: Any


def check_image_count(count: int, limits: RequestLimits) -> None:
    """A 400 when a request carries more images than the engine takes in one prompt."""
    if count > limits.max_images:
        raise RequestRejected(
            f"A request may carry at most {limits.max_images} images; this one has {count}.",
            param="messages",
            code="too_many_images",
        )


def check_image_tokens(counts: Sequence[int], images: Sequence[ImageInput], cap: int | None) -> int:
    """The total of ``counts``; a 400 naming the image that takes it over ``cap``.

    ``counts`` is per image when it has one entry per image; a single total names ``messages``.
    """
    total = sum(counts)
    if cap is None or total <= cap:
        return total
    params = [i.param for i in images] if len(counts) == len(images) else ["messages"]
    sums = itertools.accumulate(counts)
    param = next(p for so_far, p in zip(sums, params, strict=True) if so_far > cap)
    raise RequestRejected(
        f"The images in this request take {total} image tokens, more than the {cap}-token "
        "limit; send fewer or smaller images, or detail 'low'.",
        param=param,
        code="too_many_image_tokens",
    )


def shared_processor_kwargs(family: ModelFamily, images: Sequence[ImageInput]) -> dict[str, Any]:
    """The one set of image-processor arguments the request's images share.

    Both engines run the processor once per prompt, with one set of arguments: a request whose
    images need different ones (InternVL tiles at mixed details) cannot be served as one prompt.
    """
    choices = {json.dumps(family.processor_kwargs(i.detail), sort_keys=True) for i in images}
    if len(choices) > 1:
        raise RequestRejected(
            f"With {family.name} models every image in a request must use the same detail.",
            param="messages",
            code="mixed_image_detail",
        )
    kwargs: dict[str, Any] = json.loads(choices.pop()) if choices else {}
    return kwargs


def resolve_sampling(
    request: EngineRequest,
    prompt_tokens: int,
    max_model_len: int,
    limits: RequestLimits,
    defaults: SamplingDefaults,
) -> Sampling:
    """The request's sampling with every fallback filled in.

    An unset ``max_tokens`` is the server's default, lowered to what the context leaves after the
    prompt; an explicit one that does not fit is a 400, as OpenAI answers it.
    """
    options = request.sampling
    room = max_model_len - prompt_tokens
    wanted = options.max_tokens
    max_tokens = min(limits.default_max_tokens, room) if wanted is None else wanted
    if room < 1 or max_tokens > room:
        # Sizes the engine itself refuses (max_tokens 0) are left to it, named by their field.
        completion = max(max_tokens, 1)
        raise RequestRejected(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + completion} tokens ({prompt_tokens} in the "
            f"{request.input_param}, {completion} in the completion). Please reduce the length "
            f"of the {request.input_param} or completion.",
            param=request.input_param,
            code="context_length_exceeded",
        )
    return Sampling(
        options=options,
        max_tokens=max_tokens,
        temperature=_first(options.temperature, defaults.temperature),
        top_p=_first(options.top_p, defaults.top_p),
        top_k=_first(options.top_k, defaults.top_k),
        repetition_penalty=_first(options.repetition_penalty, defaults.repetition_penalty),
    )


def _first(given: T | None, fallback: T) -> T:
    return fallback if given is None else given


def finish(
    request: EngineRequest,
    rendered: Rendered,
    max_model_len: int,
    limits: RequestLimits,
    defaults: SamplingDefaults,
) -> PreparedRequest:
    """The prepared request, once the checks every engine shares have passed."""
    if rendered.prompt_tokens == 0:
        raise RequestRejected(
            "The prompt is empty: the model needs at least one token to continue from.",
            param=request.input_param,
        )
    image_tokens = check_image_tokens(
        rendered.image_tokens, request.images, limits.max_image_tokens
    )
    sampling = resolve_sampling(request, rendered.prompt_tokens, max_model_len, limits, defaults)
    return PreparedRequest(request, sampling, rendered.prompt_tokens, image_tokens, rendered.inputs)


def checkpoint_sampling_defaults(model_path: str | Path) -> SamplingDefaults:
    """The sampling defaults in a local checkpoint's ``generation_config.json`` (none: OpenAI's)."""
    file = Path(model_path) / "generation_config.json"
    if not file.is_file():
        return SamplingDefaults()
    defaults = SamplingDefaults.from_generation_config(json.loads(file.read_text()))
    if defaults != SamplingDefaults():
        logger.info("sampling defaults from %s: %s", file, defaults)
    return defaults

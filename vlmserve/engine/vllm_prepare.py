"""vLLM's side of the request seam: rendering a request and mapping its sampling options.

A chat is rendered by vLLM's renderer as vLLM's own OpenAI server renders it (the checkpoint's chat
template, then vLLM's multimodal processor, which expands each image placeholder into the image's
tokens); a plain prompt is tokenized as it is. :func:`prepare_request` does that once per request,
runs the checks both engines share, and checks the resolved sampling options as vLLM does when a
request arrives. All of it runs on vLLM's renderer without the engine core, so it is tested
without a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vllm.config import VllmConfig
from vllm.exceptions import VLLMValidationError
from vllm.renderers.base import BaseRenderer
from vllm.renderers.params import ChatParams
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.tokenizers import TokenizerLike

from vlmserve.engine.base import (
    EngineRequest,
    PreparedRequest,
    RequestLimits,
    Sampling,
    SamplingDefaults,
)
from vlmserve.engine.errors import RequestRejected
from vlmserve.engine.grammar import ANY_OBJECT, schema_text
from vlmserve.engine.prepare import Rendered, check_image_count, finish, shared_processor_kwargs
from vlmserve.models.base import ModelFamily

#: Sampling fields whose plain ``ValueError`` from vLLM names no parameter; its message starts
#: with the field's name. Longest first so that "n" does not shadow the others.
_MESSAGE_PARAMS = (
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
)


def structured_outputs(response_format: Mapping[str, Any] | None) -> StructuredOutputsParams | None:
    """OpenAI's ``response_format`` as vLLM's structured-output constraint."""
    text = schema_text(response_format)
    if text is None:
        return None
    if text == ANY_OBJECT:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=json.loads(text))


def param_of(exc: ValueError, sampling: Sampling) -> str | None:
    """The OpenAI parameter a vLLM validation error is about."""
    name = exc.parameter if isinstance(exc, VLLMValidationError) else None
    if name is None:
        message = str(exc)
        name = next((p for p in _MESSAGE_PARAMS if message.startswith(f"{p} ")), None)
    if name == "logprobs":
        return "top_logprobs"
    if name is None and sampling.options.response_format is not None:
        return "response_format"
    return name


def sampling_params(sampling: Sampling) -> SamplingParams:
    """``SamplingParams`` for a request, streaming deltas; vLLM's refusals become 400s."""
    options = sampling.options
    if options.top_logprobs and not options.logprobs:
        raise RequestRejected("top_logprobs requires logprobs to be true.", param="top_logprobs")
    constraint = structured_outputs(options.response_format)
    try:
        return SamplingParams(
            n=options.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            seed=options.seed,
            stop=list(options.stop),
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            logprobs=options.top_logprobs if options.logprobs else None,
            structured_outputs=constraint,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=param_of(exc, sampling)) from exc


def verify_sampling(
    sampling: Sampling, config: VllmConfig, tokenizer: TokenizerLike | None
) -> SamplingParams:
    """Map ``sampling`` and run the checks vLLM runs when a request arrives (logprob limit,
    JSON schema compiled by the structured-output backend)."""
    params = sampling_params(sampling)
    try:
        params.verify(
            config.model_config,
            config.speculative_config,
            config.structured_outputs_config,
            tokenizer,
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=param_of(exc, sampling)) from exc
    return params


def vllm_messages(family: ModelFamily, request: EngineRequest) -> list[dict[str, Any]]:
    """The request's messages in vLLM's chat form, each image part carrying its prepared image."""
    images = iter(request.images)
    messages = []
    for message in request.messages or ():
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    item = next(images)
                    prepared = family.prepare_image(item.image, item.detail)
                    part = {"type": "image_pil", "image_pil": prepared}
                parts.append(part)
            content = parts
        messages.append({**message, "content": content})
    return messages


def has_chat_template(model_path: str | Path) -> bool:
    """Whether a local checkpoint brings its own chat template (tokenizer or processor)."""
    path = Path(model_path)
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        file = path / name
        if file.exists() and "chat_template" in json.loads(file.read_text()):
            return True
    return False


async def render_request(
    renderer: BaseRenderer,
    family: ModelFamily,
    request: EngineRequest,
    chat_template: str | None = None,
) -> Any:
    """vLLM's engine input for a request: token ids with every image's placeholders expanded.

    Chat messages go through the chat template (``chat_template`` replaces the checkpoint's, for
    checkpoints that have none); a plain prompt is tokenized as it is.
    """
    kwargs = shared_processor_kwargs(family, request.images) or None
    extras = {"mm_processor_kwargs": kwargs} if kwargs else None
    try:
        if request.prompt is not None:
            # vLLM types prompts as TypedDicts; this is its TextPrompt.
            prompt: Any = {"prompt": request.prompt}
            if request.images:
                prepared = [family.prepare_image(i.image, i.detail) for i in request.images]
                prompt["multi_modal_data"] = {"image": prepared}
            (engine_input,) = await renderer.render_cmpl_async([prompt], prompt_extras=extras)
            return engine_input
        template_kwargs: dict[str, Any] = {"add_generation_prompt": True}
        tok_params = None
        if family.processor_adds_special_tokens and not request.images:
            # Rendered to text, then tokenized with the special tokens (see the family's flag).
            template_kwargs["tokenize"] = False
            tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=True)
        params = ChatParams(
            chat_template=chat_template,
            chat_template_kwargs=template_kwargs,
            mm_processor_kwargs=kwargs,
        )
        # vLLM types chat messages as OpenAI TypedDicts; ours are plain dicts of the same shape.
        conversation: list[Any] = vllm_messages(family, request)
        _, (engine_input,) = await renderer.render_chat_async(
            [conversation], params, tok_params, prompt_extras=extras
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=request.input_param) from exc
    return engine_input


def sampling_defaults(config: VllmConfig) -> SamplingDefaults:
    """The checkpoint's sampling defaults as vLLM reads them (its ``generation_config`` setting
    decides where from, as in vLLM's own server)."""
    return SamplingDefaults.from_generation_config(config.model_config.get_diff_sampling_param())


def image_token_counts(engine_input: Mapping[str, Any]) -> list[int]:
    """Prompt positions holding each image's features, from vLLM's rendered placeholders."""
    placeholders = (engine_input.get("mm_placeholders") or {}).get("image") or ()
    return [p.get_num_embeds() for p in placeholders]


async def prepare_request(
    renderer: BaseRenderer,
    config: VllmConfig,
    family: ModelFamily,
    request: EngineRequest,
    *,
    limits: RequestLimits,
    defaults: SamplingDefaults,
    chat_template: str | None = None,
) -> PreparedRequest:
    """Render ``request`` once with vLLM's renderer, check it and resolve its sampling; the
    resolved options are checked as vLLM checks them when a request arrives."""
    check_image_count(len(request.images), limits)
    engine_input = await render_request(renderer, family, request, chat_template)
    prompt_tokens = len(engine_input["prompt_token_ids"])
    rendered = Rendered(prompt_tokens, image_token_counts(engine_input), engine_input)
    prepared = finish(request, rendered, config.model_config.max_model_len, limits, defaults)
    verify_sampling(prepared.sampling, config, renderer.tokenizer)
    return prepared

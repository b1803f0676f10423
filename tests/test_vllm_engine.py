"""The vLLM engine up to the engine core, on real vLLM objects, without starting it.

vLLM builds its full engine configuration from the arguments vlmserve derives, renders chat
requests through its own renderer and multimodal processor (the code path ``VLLMEngine.generate``
uses), and validates sampling parameters as it does when a request arrives. The engine core itself
runs in tests/test_api.py, behind the real server, for every family.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmserve.config import Settings
from vlmserve.engine.base import (
    EngineRequest,
    ImageInput,
    RequestLimits,
    Sampling,
    SamplingDefaults,
    SamplingOptions,
)
from vlmserve.engine.errors import RequestRejected
from vlmserve.engine.prepare import resolve_sampling, shared_processor_kwargs
from vlmserve.models.families import FAMILIES as ALL_FAMILIES
from vlmserve.models.families import get_family

pytest.importorskip("vllm")

FAMILIES = tuple(ALL_FAMILIES)
#: A large photo-sized image: its tile count, and so its token count, depends on detail.
LARGE = (1024, 768)


@pytest.fixture(scope="module")
def tiny_vllm_model(tiny_model: Callable[[str], Path]) -> Callable[[str], Path]:
    """``tiny_vllm_model(family)`` -> the session's tiny checkpoint."""
    return tiny_model


@pytest.fixture(scope="module")
def vllm_mod() -> Any:
    """The vLLM engine module."""
    from vlmserve.engine import vllm_engine

    return vllm_engine


@pytest.fixture(scope="module")
def vllm_prep(vllm_mod: Any) -> Any:
    """vLLM's side of the request seam (rendering, sampling), on the same vLLM set-up."""
    from vlmserve.engine import vllm_prepare

    return vllm_prepare


@pytest.fixture(scope="module")
def vllm_setup(vllm_mod: Any, tiny_vllm_model: Callable[[str], Path]) -> Callable[[str], Any]:
    """``vllm_setup(family)`` -> (vLLM config, vLLM renderer) for the tiny checkpoint, cached."""
    from vllm.renderers import renderer_from_config

    built: dict[str, Any] = {}

    def setup(family: str) -> Any:
        if family not in built:
            settings = Settings(max_model_len=8192, max_images_per_request=4)
            args = vllm_mod.engine_args_from_settings(settings, tiny_vllm_model(family))
            config = vllm_mod.build_vllm_config(args)
            built[family] = (config, renderer_from_config(config))
        return built[family]

    return setup


def chat(images: list[ImageInput], text: str = "What is in this picture?") -> EngineRequest:
    """A one-turn chat with the images first, then the question."""
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in images]
    parts.append({"type": "text", "text": text})
    return EngineRequest(
        request_id="req-1",
        messages=[{"role": "user", "content": parts}],
        images=images,
        sampling=SamplingOptions(max_tokens=8),
    )


def sampling(**fields: Any) -> Sampling:
    """Options as a client sets them (16 tokens unless given), resolved with OpenAI's defaults."""
    request = EngineRequest("r", SamplingOptions(**{"max_tokens": 16, **fields}), prompt="x")
    return resolve_sampling(request, 1, 1 << 20, RequestLimits(), SamplingDefaults())


def image(size: tuple[int, int] = LARGE) -> Image.Image:
    """A two-tone test image (not uniform, so no processor shortcut applies)."""
    img = Image.new("RGB", size, (30, 120, 200))
    img.paste((220, 40, 40), (0, 0, size[0] // 2, size[1] // 2))
    return img


# -- engine configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_accepts_the_engine_configuration(family: str, vllm_setup: Any) -> None:
    config, _ = vllm_setup(family)
    assert config.model_config.max_model_len == 8192
    assert config.model_config.architectures[0] in get_family(family).architectures
    mm = config.model_config.multimodal_config
    assert mm.get_limit_per_prompt("image") == 4
    assert mm.get_limit_per_prompt("video") == 0


def test_each_vllm_setting_applies_once(vllm_mod: Any) -> None:
    """Planned settings reach vLLM through the plan when there is one, else directly."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from vlmserve.models.catalog import get_model
    from vlmserve.planner.gpus import gpus_to_plan_for
    from vlmserve.planner.plan import Overrides, Workload
    from vlmserve.planner.planner import plan_model

    settings = Settings(max_num_seqs=8, load_format="dummy", gpu_memory_utilization=0.8)
    plan = plan_model(
        get_model("llava-1.5-7b"),
        gpus_to_plan_for("A100-80GB"),
        Workload.from_settings(settings),
        Overrides.from_settings(settings),
    )
    planned = vllm_mod.engine_args_from_settings(settings, "/models/m", plan.engine_args())
    unplanned = vllm_mod.engine_args_from_settings(settings, "/models/m")
    for args in (planned, unplanned):
        assert args["model"] == "/models/m"
        assert args["max_num_seqs"] == 8 and args["gpu_memory_utilization"] == 0.8
        assert args["load_format"] == "dummy"
        assert args["limit_mm_per_prompt"]["video"] == 0
        AsyncEngineArgs(**args)  # every name is one of vLLM's engine arguments
    assert planned["max_model_len"] == plan.max_model_len and "max_model_len" not in unplanned
    assert "quantization" not in unplanned


# -- rendering: image placeholders as vLLM expands them -----------------------------------------


def placeholder_lengths(engine_input: dict[str, Any]) -> list[int]:
    """Prompt positions vLLM reserves for each image, in order."""
    return [p.length for p in engine_input["mm_placeholders"]["image"]]


@pytest.mark.parametrize("detail", ["high", "low"])
@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_prompt_has_the_predicted_image_tokens(
    family: str, detail: str, vllm_prep: Any, vllm_setup: Any
) -> None:
    _, renderer = vllm_setup(family)
    fam = get_family(family)
    request = chat([ImageInput(image(), detail)])  # type: ignore[arg-type]
    engine_input = asyncio.run(vllm_prep.render_request(renderer, fam, request))
    expected = fam.image_tokens(*LARGE, detail)  # type: ignore[arg-type]
    assert placeholder_lengths(engine_input) == [expected]
    image_token = engine_input["mm_placeholders"]["image"][0]
    ids = engine_input["prompt_token_ids"]
    assert len(ids) > image_token.offset + image_token.length


@pytest.mark.parametrize("family", ["llava-next", "internvl"])
def test_low_detail_cuts_prompt_tokens(family: str, vllm_prep: Any, vllm_setup: Any) -> None:
    _, renderer = vllm_setup(family)
    fam = get_family(family)
    sizes = {}
    for detail in ("high", "low"):
        request = chat([ImageInput(image(), detail)])  # type: ignore[arg-type]
        sizes[detail] = len(
            asyncio.run(vllm_prep.render_request(renderer, fam, request))["prompt_token_ids"]
        )
    saved = fam.image_tokens(*LARGE, "high") - fam.image_tokens(*LARGE, "low")
    assert saved > 900
    assert sizes["high"] - sizes["low"] == saved


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_in_order(family: str, vllm_prep: Any, vllm_setup: Any) -> None:
    _, renderer = vllm_setup(family)
    fam = get_family(family)
    images = [ImageInput(image(LARGE), "high"), ImageInput(image((500, 900)), "high")]
    engine_input = asyncio.run(vllm_prep.render_request(renderer, fam, chat(images)))
    lengths = placeholder_lengths(engine_input)
    assert lengths == [fam.image_tokens(*LARGE), fam.image_tokens(500, 900)]
    # Image tokens are the positions that hold image features (InternVL's <img> and </img> do
    # not), counted in what vLLM rendered.
    counts = vllm_prep.image_token_counts(engine_input)
    assert len(counts) == 2 and 0 <= lengths[0] - counts[0] <= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_chats_start_alike_with_and_without_images(
    family: str, vllm_prep: Any, vllm_setup: Any
) -> None:
    """A text-only chat starts with the same token as one with an image (Phi-3-V's processor
    gives every text chunk a BOS; vLLM's chat path alone gives a text-only chat none)."""
    _, renderer = vllm_setup(family)
    fam = get_family(family)
    rendered = [
        asyncio.run(vllm_prep.render_request(renderer, fam, chat(images)))["prompt_token_ids"]
        for images in ([], [ImageInput(image(), "high")])
    ]
    text_only, with_image = rendered
    assert text_only[0] == with_image[0]


def processor_refuses_placeholder_text(path: Path) -> bool:
    """Whether the checkpoint's HF processor refuses an image placeholder without an image.

    transformers 5.23 does (5.18 and older do not); vLLM 0.26.0 sizes its encoder budget by
    running the processor on the placeholder text alone, so for LLaVA ``AsyncLLM`` cannot even
    be constructed then.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    token = getattr(processor, "image_token", None) if hasattr(processor, "tokenizer") else None
    if token is None:
        return False
    try:
        processor(text=token)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_input_processor_accepts_the_rendered_request(
    family: str,
    vllm_prep: Any,
    vllm_setup: Any,
    tiny_vllm_model: Callable[[str], Path],
    request: pytest.FixtureRequest,
) -> None:
    """What ``AsyncLLM.generate`` does with our input before the engine core sees it."""
    from vllm.v1.engine.input_processor import InputProcessor

    # vLLM's profiling text for InternVL is not the processor's own image token, so only the
    # LLaVA processors trip over it.
    if family in ("llava", "llava-next") and processor_refuses_placeholder_text(
        tiny_vllm_model(family)
    ):
        request.applymarker(
            pytest.mark.xfail(
                reason="vLLM 0.26.0 with transformers newer than 5.18: encoder-budget "
                "profiling fails for LLaVA (the gpu extra pins transformers < 5.17)",
                raises=ValueError,
                strict=True,
            )
        )
    config, renderer = vllm_setup(family)
    fam = get_family(family)
    images = [ImageInput(image(), "high"), ImageInput(image((640, 480)), "high")]
    engine_input = asyncio.run(vllm_prep.render_request(renderer, fam, chat(images)))
    params = vllm_prep.sampling_params(sampling(max_tokens=5, n=2, logprobs=True, top_logprobs=2))
    processor = InputProcessor(config, renderer)
    core_request = processor.process_inputs(
        "req-1", engine_input, params, supported_tasks=("generate",)
    )
    assert len(core_request.prompt_token_ids) == len(engine_input["prompt_token_ids"])
    assert [f.mm_position.length for f in core_request.mm_features] == [
        fam.image_tokens(*LARGE),
        fam.image_tokens(640, 480),
    ]
    assert (core_request.sampling_params.n, core_request.sampling_params.logprobs) == (2, 2)


def test_internvl_refuses_mixed_detail_in_one_request(vllm_mod: Any) -> None:
    images = [ImageInput(image(), "low"), ImageInput(image(), "high")]
    with pytest.raises(RequestRejected) as err:
        shared_processor_kwargs(get_family("internvl"), images)
    assert (err.value.param, err.value.code) == ("messages", "mixed_image_detail")
    assert shared_processor_kwargs(get_family("llava-next"), images) == {}


def test_prompt_longer_than_the_context_is_a_bad_request(vllm_prep: Any, vllm_setup: Any) -> None:
    _, renderer = vllm_setup("llava")
    request = chat([ImageInput(image(), "high")], text="describe the picture " * 4000)
    with pytest.raises(RequestRejected) as err:
        asyncio.run(vllm_prep.render_request(renderer, get_family("llava"), request))
    assert err.value.param == "messages"


# -- the prepare step: one rendering, the engine's limits, checkpoint defaults -----------------


@pytest.fixture(scope="module")
def sampling_llava(vllm_mod: Any, tiny_vllm_model: Callable[[str], Path], tmp_path_factory: Any):  # type: ignore[no-untyped-def]
    """A tiny LLaVA with sampling defaults in generation_config.json, configured as a plan
    would start it on a small GPU: one image per prompt, below the setting's four."""
    from vllm.renderers import renderer_from_config

    path = tmp_path_factory.mktemp("sampling") / "llava"
    shutil.copytree(tiny_vllm_model("llava"), path)
    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}
    (path / "generation_config.json").write_text(json.dumps(defaults))
    settings = Settings(max_images_per_request=4, default_max_tokens=5000)
    plan = {"max_model_len": 2048, "limit_mm_per_prompt": {"image": 1}}
    args = vllm_mod.engine_args_from_settings(settings, path, plan)
    config = vllm_mod.build_vllm_config(args)
    limits = vllm_mod.engine_limits(RequestLimits.from_settings(settings), args)
    return config, renderer_from_config(config), limits


def prepare(vllm_prep: Any, setup: Any, request: EngineRequest) -> Any:
    config, renderer, limits = setup
    return asyncio.run(
        vllm_prep.prepare_request(
            renderer,
            config,
            get_family("llava"),
            request,
            limits=limits,
            defaults=vllm_prep.sampling_defaults(config),
        )
    )


def test_prepare_fills_checkpoint_defaults_and_caps_max_tokens(
    vllm_prep: Any, sampling_llava: Any
) -> None:
    request = chat([ImageInput(image(), "high")])
    request.sampling = SamplingOptions()
    prepared = prepare(vllm_prep, sampling_llava, request)
    ids = prepared.inputs["prompt_token_ids"]
    assert prepared.prompt_tokens == len(ids) > prepared.image_tokens == 576
    # The default (5000) does not fit: the request gets what the 2048-token context leaves.
    assert prepared.sampling.max_tokens == 2048 - len(ids)
    params = vllm_prep.sampling_params(prepared.sampling)
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.9, 20)
    assert params.repetition_penalty == 1.05
    request.sampling = SamplingOptions(temperature=0.3, top_k=5, max_tokens=7)
    params = vllm_prep.sampling_params(prepare(vllm_prep, sampling_llava, request).sampling)
    assert (params.temperature, params.top_k, params.max_tokens, params.top_p) == (0.3, 5, 7, 0.9)


def test_prepare_refuses_an_explicit_max_tokens_over_the_context(
    vllm_prep: Any, sampling_llava: Any
) -> None:
    request = chat([ImageInput(image(), "high")])
    request.sampling = SamplingOptions(max_tokens=2000)
    with pytest.raises(RequestRejected) as err:
        prepare(vllm_prep, sampling_llava, request)
    assert (err.value.param, err.value.code) == ("messages", "context_length_exceeded")
    assert "maximum context length is 2048 tokens" in err.value.message


def test_prepare_enforces_the_image_limit_vllm_runs_with(
    vllm_prep: Any, sampling_llava: Any
) -> None:
    config, _, limits = sampling_llava
    assert limits.max_images == 1
    assert config.model_config.multimodal_config.get_limit_per_prompt("image") == 1
    two = chat([ImageInput(image(), "high"), ImageInput(image(), "high")])
    with pytest.raises(RequestRejected) as err:
        prepare(vllm_prep, sampling_llava, two)
    assert (err.value.param, err.value.code) == ("messages", "too_many_images")


def test_prepare_renders_a_plain_prompt(vllm_prep: Any, sampling_llava: Any) -> None:
    request = EngineRequest("p", SamplingOptions(max_tokens=3), prompt="USER: hello\nASSISTANT:")
    prepared = prepare(vllm_prep, sampling_llava, request)
    tokenizer = sampling_llava[1].tokenizer
    assert prepared.inputs["prompt_token_ids"] == tokenizer.encode("USER: hello\nASSISTANT:")
    assert (prepared.image_tokens, prepared.sampling.max_tokens) == (0, 3)


# -- sampling parameters ------------------------------------------------------------------------


def test_sampling_options_map_to_sampling_params(vllm_prep: Any) -> None:
    from vllm.sampling_params import RequestOutputKind

    options = sampling(
        max_tokens=33,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        repetition_penalty=1.1,
        seed=7,
        n=3,
        stop=("END", "\n\n"),
        min_tokens=2,
        ignore_eos=True,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=5,
    )
    params = vllm_prep.sampling_params(options)
    assert (params.max_tokens, params.temperature, params.top_p) == (33, 0.7, 0.9)
    assert (params.top_k, params.repetition_penalty) == (20, 1.1)
    assert (params.seed, params.n, params.min_tokens, params.ignore_eos) == (7, 3, 2, True)
    assert params.stop == ["END", "\n\n"]
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.logprobs == 5
    assert params.output_kind == RequestOutputKind.DELTA
    assert params.structured_outputs is None
    assert vllm_prep.sampling_params(sampling(max_tokens=4)).logprobs is None


def test_response_format_maps_to_structured_outputs(vllm_prep: Any) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    params = vllm_prep.sampling_params(sampling(response_format=json_schema))
    assert params.structured_outputs.json == schema
    params = vllm_prep.sampling_params(sampling(response_format={"type": "json_object"}))
    assert params.structured_outputs.json_object is True
    text = vllm_prep.sampling_params(sampling(response_format={"type": "text"}))
    assert text.structured_outputs is None


REJECTED: list[tuple[dict[str, Any], str]] = [
    ({"n": 0}, "n"),
    ({"n": 2, "temperature": 0.0}, "n"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3.0}, "frequency_penalty"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
    ({"stop": ("",)}, "stop"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
            }
        },
        "response_format",
    ),
]


@pytest.mark.parametrize(("fields", "param"), REJECTED, ids=[p for _, p in REJECTED])
def test_what_vllm_rejects_is_a_400_with_param(
    fields: dict[str, Any], param: str, vllm_prep: Any, vllm_setup: Any
) -> None:
    config, renderer = vllm_setup("llava")
    with pytest.raises(RequestRejected) as err:
        vllm_prep.verify_sampling(sampling(**fields), config, renderer.tokenizer)
    assert err.value.param == param


def test_valid_requests_pass_verification(vllm_prep: Any, vllm_setup: Any) -> None:
    config, renderer = vllm_setup("internvl")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    for options in (
        sampling(logprobs=True, top_logprobs=20),
        sampling(response_format={"type": "json_object"}),
        sampling(response_format={"type": "json_schema", "json_schema": {"schema": schema}}),
    ):
        vllm_prep.verify_sampling(options, config, renderer.tokenizer)


# -- outputs and stats --------------------------------------------------------------------------


def test_request_output_becomes_engine_output(vllm_mod: Any) -> None:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    position = {
        5: Logprob(-0.1, rank=1, decoded_token="cat"),
        9: Logprob(-2.5, rank=2, decoded_token="dog"),
        11: Logprob(-4.0, rank=3, decoded_token="sky"),
    }
    choices = [
        CompletionOutput(0, "cat", [5], None, [position]),
        CompletionOutput(1, " sky", [11], None, None, finish_reason="length"),
    ]
    output = RequestOutput("r", None, list(range(600)), None, choices, finished=False)
    result = vllm_mod.engine_output(output, top_n=2)
    assert result.prompt_tokens == 600
    first, second = result.deltas
    assert (first.index, first.text, first.num_tokens, first.finish_reason) == (0, "cat", 1, None)
    assert first.logprobs[0].token == "cat" and first.logprobs[0].logprob == pytest.approx(-0.1)
    assert first.logprobs[0].top == [("cat", pytest.approx(-0.1)), ("dog", pytest.approx(-2.5))]
    assert (second.index, second.finish_reason, second.logprobs) == (1, "length", None)


def test_stat_logger_snapshot(vllm_mod: Any) -> None:
    from vllm.v1.metrics.stats import SchedulerStats

    snapshot = vllm_mod.SchedulerSnapshot()
    assert snapshot.stats().running == 0 and snapshot.stats().kv_cache_usage is None
    logger = vllm_mod.SnapshotStatLogger(snapshot, None, 0)
    logger.record(SchedulerStats(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.4), None)
    logger.record(None, None, engine_idx=0)
    stats = snapshot.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (3, 2, 0.4)

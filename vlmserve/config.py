"""The one place vlmserve's settings are defined.

Every setting is a field of :class:`Settings`, read from ``VLMSERVE_*`` environment variables
(or a ``.env`` file). CLI flags, ``--help`` and the README table are derived from these fields, and
the Helm chart is checked against them by a test, so a setting is never typed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vlmserve.images.detail import Detail

EngineName = Literal["auto", "transformers", "vllm"]
#: Room in the default body limit for the text and JSON around the images.
BODY_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class VllmArg:
    """Marks a setting that is also a vLLM engine argument of the same name.

    ``planned``: the planner chooses it when unset, and the operator's value overrides that
    choice; otherwise the value goes to vLLM as it is. :func:`vllm_args` reads these marks, so a
    new knob is one annotated field here.
    """

    planned: bool


PLANNED = VllmArg(planned=True)
DIRECT = VllmArg(planned=False)


class Settings(BaseSettings):
    """Server settings; each field is also the environment variable ``VLMSERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="VLMSERVE_", env_file=".env", extra="ignore")

    model: str | None = Field(
        default=None,
        description="Model to serve: a local checkpoint folder. Empty on a machine without a GPU "
        "serves the tiny built-in demo model (random answers).",
    )
    served_model_name: str | None = Field(
        default=None,
        description="Model id clients send and /v1/models lists; defaults to the folder's name.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address to bind; 0.0.0.0 for all interfaces."
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port to listen on.")
    engine: EngineName = Field(
        default="auto",
        description="Inference engine: vllm (GPU), transformers (CPU) or auto (vllm when a GPU and "
        "vLLM are present, transformers otherwise).",
    )
    device: str = Field(default="cpu", description="Torch device for the transformers engine.")
    max_batch_size: int = Field(
        default=16,
        ge=1,
        description="Most sequences the transformers engine decodes together in one step.",
    )
    default_max_tokens: int = Field(
        default=256,
        ge=1,
        description="Output tokens per choice when a request sets neither max_tokens nor "
        "max_completion_tokens (always capped by the model's context).",
    )
    max_images_per_request: int = Field(
        default=8, ge=0, description="Most images one chat completion request may carry."
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "vlmserve",
        description="Where vlmserve keeps what it builds, such as the demo checkpoint.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )

    json_logs: bool = Field(default=False, description="Write logs as one JSON object per line.")

    # -- images and media ------------------------------------------------------------------------
    default_image_detail: Detail = Field(
        default="auto",
        description="Detail for images whose request does not say (low, high or auto); low cuts "
        "image tokens on families whose count varies.",
    )
    max_image_tokens_per_request: int | None = Field(
        default=None,
        ge=1,
        description="Most image tokens one request may use; requests above it get a 400.",
    )
    max_image_bytes: int = Field(
        default=20_000_000, ge=1, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        ge=1,
        description="Largest image accepted, in pixels (width x height), checked before decoding.",
    )
    max_image_aspect_ratio: float = Field(
        default=100.0,
        ge=1,
        description="Longest side over shortest side an image may have, checked from its header "
        "before decoding (a 1x60000 strip is refused).",
    )
    max_resized_image_pixels: int = Field(
        default=16_000_000,
        ge=1,
        description="Most pixels one image may become after the model family's own resize "
        "(LLaVA scales the short side up to 336), checked from the header before decoding.",
    )
    max_image_pixels_per_request: int = Field(
        default=100_000_000,
        ge=1,
        description="Most image pixels one request may carry in all (eight 12-megapixel photos "
        "fit), checked from the headers before any image is decoded.",
    )
    max_request_body_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest request body, in bytes; past it a 413 and nothing more is read. "
        "Unset: max_images_per_request images of max_image_bytes in base64, plus 1 MiB.",
    )
    media_fetch_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Time limit for fetching one http(s) image URL: connecting, redirects and "
        "the body together; past it the request gets a 400.",
    )
    allowed_media_domains: str | None = Field(
        default=None,
        description="Comma-separated domains image URLs may come from (the domain or any "
        "subdomain, checked on every redirect); unset allows any public host.",
    )
    allow_private_media_urls: bool = Field(
        default=False,
        description="Allow image URLs that resolve to loopback, private, link-local or other "
        "non-public addresses (refused by default, redirects included).",
    )
    allowed_local_media_path: Path | None = Field(
        default=None,
        description="Folder under which file:// image URLs are allowed (checked after "
        "resolving symlinks and ..); unset refuses them.",
    )

    # -- access and overload ----------------------------------------------------------------------
    api_keys: str | None = Field(
        default=None,
        description="Comma-separated API keys; when set (here or in api_keys_file), requests "
        "need 'Authorization: Bearer KEY'. /health stays open.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File with one API key per line, # for comments (added to api_keys).",
    )
    protect_metrics: bool = Field(default=False, description="Require an API key on /metrics too.")
    rate_limit_requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Requests per minute allowed per API key (without keys: for all clients "
        "together); beyond it a 429 with Retry-After.",
    )
    rate_limit_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Prompt plus completion tokens per minute per API key, charged when a "
        "request ends; a key over budget gets a 429 with Retry-After.",
    )
    max_queued_requests: int = Field(
        default=256,
        ge=1,
        description="Chat requests admitted at once (running plus waiting); beyond it a 503 "
        "with Retry-After.",
    )
    request_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest a request may run (images, queue and generation) before a 504; "
        "its engine work is aborted.",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM: /health and new requests get 503 at once, requests in flight "
        "get this long to finish, then the process exits 0.",
    )

    # -- planning and the vLLM engine (unset: the planner decides) ---------------------------------
    gpu: str | None = Field(
        default=None,
        description="GPU to plan for, like A10G, 2xA10G or A100-40GB; unset uses the GPUs "
        "detected.",
    )
    expected_output_tokens: int = Field(
        default=256, ge=1, description="Typical output length the planner sizes the KV cache for."
    )
    target_concurrency: int | None = Field(
        default=None, ge=1, description="Requests the planner should hold in flight at once."
    )
    dtype: Annotated[str | None, PLANNED] = Field(
        default=None, description="Override the planned dtype (bfloat16, float16)."
    )
    quantization: Annotated[str | None, PLANNED] = Field(
        default=None,
        description="Override the planned quantization (fp8, bitsandbytes, awq, gptq).",
    )
    tensor_parallel_size: Annotated[int | None, PLANNED] = Field(
        default=None, ge=1, description="Override the planned tensor-parallel size."
    )
    max_model_len: Annotated[int | None, PLANNED] = Field(
        default=None, ge=1, description="Override the planned context length in tokens."
    )
    max_num_seqs: Annotated[int | None, PLANNED] = Field(
        default=None,
        ge=1,
        description="Override the planned number of sequences vLLM runs at once.",
    )
    gpu_memory_utilization: Annotated[float | None, PLANNED] = Field(
        default=None, gt=0, le=1, description="Override the share of GPU memory vLLM may use."
    )
    load_format: Annotated[str, DIRECT] = Field(
        default="auto",
        description="vLLM weight loading: auto, or dummy for random weights when benchmarking.",
    )

    # -- shared state and the response cache ------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://[:password@]host:6379/0) for state shared across "
        "replicas: rate-limit buckets and the response cache. Unset keeps both in memory, per "
        "process. When Redis cannot be reached the server falls back to memory and logs a "
        "warning.",
    )
    redis_timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Time limit for one Redis call; past it (or on any Redis error) the server "
        "uses its in-memory state for redis_retry_seconds.",
    )
    redis_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="After a Redis error, how long to use in-memory state before trying Redis "
        "again.",
    )
    redis_key_prefix: str = Field(
        default="vlmserve",
        description="Prefix of every Redis key; deployments sharing one Redis but not their "
        "budgets or caches need different prefixes.",
    )
    response_cache: bool = Field(
        default=True,
        description="Answer a repeated deterministic request (temperature 0 or a seed, n 1) "
        "from the response cache; 'Cache-Control: no-cache' on a request skips the lookup.",
    )
    response_cache_max_entries: int = Field(
        default=4096, ge=1, description="Most answers the in-memory response cache holds."
    )
    response_cache_max_bytes: int = Field(
        default=64_000_000,
        ge=1,
        description="Most bytes of answers the in-memory response cache holds (in Redis, the "
        "server's maxmemory policy bounds it).",
    )
    response_cache_ttl_seconds: float = Field(
        default=3600.0, gt=0, description="How long a cached answer stays valid."
    )

    def request_body_limit(self) -> int:
        """The request body limit: the setting, or the largest allowed image set in base64."""
        if self.max_request_body_bytes is not None:
            return self.max_request_body_bytes
        base64_image = 4 * -(-self.max_image_bytes // 3) + len("data:image/jpeg;base64,")
        return self.max_images_per_request * base64_image + BODY_SLACK_BYTES


def vllm_setting_names(*, planned: bool) -> tuple[str, ...]:
    """The settings marked as vLLM engine arguments, planned or direct (see :class:`VllmArg`)."""
    return tuple(
        name for name, info in Settings.model_fields.items() if VllmArg(planned) in info.metadata
    )


def vllm_args(settings: Settings, *, planned: bool) -> dict[str, Any]:
    """The vLLM engine arguments the operator set (values other than the field's default)."""
    fields = Settings.model_fields
    return {
        name: getattr(settings, name)
        for name in vllm_setting_names(planned=planned)
        if getattr(settings, name) != fields[name].default
    }

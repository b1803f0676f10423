"""The router's configuration file (``router.yaml``): tiers, backends with prices, ``auto`` rules.

API keys are never written in the file: ``api_key: os.environ/NAME`` names the environment
variable that holds one, read when the router starts (a missing variable stops it with a clear
message).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "os.environ/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Strict):
    """What a backend costs: per 1K images (self-hosted, from ``vlmserve bench --gpu-price``) and
    per 1M tokens (hosted APIs)."""

    per_1k_images: float = Field(default=0.0, ge=0)
    per_1m_input_tokens: float = Field(default=0.0, ge=0)
    per_1m_output_tokens: float = Field(default=0.0, ge=0)

    def cost(self, images: int, prompt_tokens: int, completion_tokens: int) -> float:
        """Estimated dollars for one answered request."""
        return (
            images * self.per_1k_images / 1000
            + prompt_tokens * self.per_1m_input_tokens / 1e6
            + completion_tokens * self.per_1m_output_tokens / 1e6
        )

    def sort_key(self) -> tuple[float, float]:
        """Cheaper first: by image price, then by token price."""
        return (self.per_1k_images, self.per_1m_input_tokens + self.per_1m_output_tokens)


class Backend(_Strict):
    """One model clients may name, served by one or more OpenAI-compatible endpoints."""

    model: str = Field(description="The name clients send in 'model' and see in answers.")
    tier: str
    litellm_model: str | None = Field(
        default=None,
        description="LiteLLM's model string; default 'openai/<model>' (any OpenAI-compatible "
        "server such as vlmserve). Hosted: e.g. 'openai/gpt-4o-mini', 'gemini/gemini-2.0-flash'.",
    )
    api_base: str | None = None
    replicas: list[str] = Field(
        default_factory=list, description="More base URLs serving the same model."
    )
    api_key: str | None = Field(default=None, description="'os.environ/NAME' (or a literal).")
    price: Price = Field(default_factory=Price)
    timeout_seconds: float = Field(default=600.0, gt=0)

    @property
    def api_bases(self) -> list[str | None]:
        """Every endpoint of this backend (None: the provider's own)."""
        return [self.api_base, *self.replicas] if self.api_base else [None, *self.replicas]

    def resolved_api_key(self) -> str | None:
        """The key, read from the environment when given as ``os.environ/NAME``."""
        if self.api_key is None or not self.api_key.startswith(ENV_PREFIX):
            return self.api_key
        name = self.api_key.removeprefix(ENV_PREFIX)
        if name not in os.environ:
            raise ValueError(f"backend {self.model!r}: environment variable {name} is not set")
        return os.environ[name]


class AutoRule(_Strict):
    """A request matching every condition given here needs at least ``tier``."""

    tier: str
    min_images: int | None = Field(default=None, ge=0)
    min_image_pixels: int | None = Field(
        default=None, ge=1, description="Any image at least this large (width x height)."
    )
    detail: Literal["high"] | None = Field(
        default=None, description="Any image asks for detail 'high'."
    )
    min_prompt_chars: int | None = Field(default=None, ge=0)
    keywords: list[str] = Field(
        default_factory=list, description="Any of these words in the text (case-insensitive)."
    )
    response_format: bool | None = Field(
        default=None, description="The request sets response_format (JSON output)."
    )


class RouterConfig(_Strict):
    """The whole ``router.yaml``."""

    tiers: list[str] = Field(min_length=1, description="Tier names, cheapest first.")
    backends: list[Backend] = Field(min_length=1)
    auto: list[AutoRule] = Field(default_factory=list)
    routing_strategy: Literal["simple-shuffle", "least-busy", "latency-based-routing"] = (
        "simple-shuffle"
    )
    num_retries: int = Field(default=0, ge=0, description="Retries on the same backend first.")
    allowed_fails: int = Field(
        default=0, ge=0, description="Failures an endpoint may have before it cools down."
    )
    cooldown_seconds: float = Field(
        default=30.0, ge=0, description="How long a failing endpoint gets no requests."
    )
    retry_after_seconds: int = Field(
        default=5, ge=1, description="Retry-After of the 503 when every fallback failed."
    )

    @model_validator(mode="after")
    def _check(self) -> RouterConfig:
        names = [b.model for b in self.backends]
        if len(set(names)) != len(names) or "auto" in names:
            raise ValueError("backend models must be unique and not 'auto'")
        for tier in [b.tier for b in self.backends] + [r.tier for r in self.auto]:
            if tier not in self.tiers:
                raise ValueError(f"tier {tier!r} is not in tiers {self.tiers}")
        return self

    def backend(self, model: str) -> Backend | None:
        """The backend clients call ``model``."""
        return next((b for b in self.backends if b.model == model), None)

    def by_cost(self) -> list[Backend]:
        """Every backend, cheapest tier first, then by price within a tier."""
        return sorted(self.backends, key=lambda b: (self.tiers.index(b.tier), b.price.sort_key()))

    def fallbacks(self, backend: Backend) -> list[str]:
        """Where a failed request goes next: the same tier by price, then the tiers above."""
        level = self.tiers.index(backend.tier)
        return [
            b.model
            for b in self.by_cost()
            if b.model != backend.model and self.tiers.index(b.tier) >= level
        ]

    @classmethod
    def load(cls, path: Path) -> RouterConfig:
        """Read and validate a YAML file."""
        return cls.model_validate(yaml.safe_load(path.read_text()))

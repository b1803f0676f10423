"""What the router counts per backend and tier: requests, images, tokens, estimated cost.

The same counters feed ``/metrics`` (Prometheus) and ``/health`` (JSON with each backend's
endpoints, which LiteLLM is cooling down, and the cost per 1K images of each tier).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from vlmserve.router.config import Backend, RouterConfig


@dataclass
class _Totals:
    requests: int = 0
    failures: int = 0
    images: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        per_1k = 1000 * self.cost / self.images if self.images else None
        return {
            "requests": self.requests,
            "failures": self.failures,
            "images": self.images,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_cost_usd": round(self.cost, 6),
            "cost_per_1k_images_usd": None if per_1k is None else round(per_1k, 4),
        }


class RouterStats:
    """Counters by backend (and so by tier), in Prometheus and for ``/health``."""

    def __init__(self, config: RouterConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._backends: dict[str, _Totals] = defaultdict(_Totals)
        labels = ["backend", "tier"]
        self.requests = Counter(
            "vlmserve_router_requests",
            "Requests by the backend that answered (or was asked, when all failed) and outcome.",
            [*labels, "outcome"],
            registry=registry,
        )
        self.images = Counter(
            "vlmserve_router_images", "Images answered.", labels, registry=registry
        )
        self.tokens = Counter(
            "vlmserve_router_tokens", "Tokens by kind.", [*labels, "kind"], registry=registry
        )
        self.cost = Counter(
            "vlmserve_router_cost_dollars",
            "Estimated cost at the configured prices.",
            labels,
            registry=registry,
        )

    def answered(self, backend: Backend, images: int, usage: dict[str, Any] | None) -> None:
        """Count a request ``backend`` answered."""
        usage = usage or {}
        # Chat and completions name them prompt/completion; the Responses API input/output.
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        cost = backend.price.cost(images, prompt, completion)
        labels = (backend.model, backend.tier)
        self.requests.labels(*labels, "ok").inc()
        self.images.labels(*labels).inc(images)
        self.tokens.labels(*labels, "prompt").inc(prompt)
        self.tokens.labels(*labels, "completion").inc(completion)
        self.cost.labels(*labels).inc(cost)
        totals = self._backends[backend.model]
        totals.requests += 1
        totals.images += images
        totals.prompt_tokens += prompt
        totals.completion_tokens += completion
        totals.cost += cost

    def failed(self, backend: Backend) -> None:
        """Count a request that no endpoint of ``backend`` or its fallbacks could answer."""
        self.requests.labels(backend.model, backend.tier, "error").inc()
        self._backends[backend.model].failures += 1

    def health(self, cooling: set[str], endpoints: dict[str, Backend]) -> dict[str, Any]:
        """Each backend's endpoints and counters, and each tier's totals."""
        backends = []
        tiers: dict[str, _Totals] = {tier: _Totals() for tier in self.config.tiers}
        for backend in self.config.by_cost():
            ids = [i for i, b in endpoints.items() if b is backend]
            totals = self._backends[backend.model]
            tier = tiers[backend.tier]
            for name in ("requests", "failures", "images", "prompt_tokens", "completion_tokens"):
                setattr(tier, name, getattr(tier, name) + getattr(totals, name))
            tier.cost += totals.cost
            state = "ok" if not set(ids) & cooling else "degraded"
            if set(ids) <= cooling:
                state = "cooling_down"
            backends.append(
                {
                    "model": backend.model,
                    "tier": backend.tier,
                    "state": state,
                    "endpoints": [{"id": i, "cooling_down": i in cooling} for i in ids],
                    "price": backend.price.model_dump(),
                    **totals.as_dict(),
                }
            )
        return {
            "backends": backends,
            "tiers": {name: totals.as_dict() for name, totals in tiers.items()},
        }

"""``model: "auto"``: the cheapest tier that suits a request, by the config's rules.

A request's features are read from its body alone: how many images, the largest one (data URLs
are measured from their header; an http URL's size is unknown to the router and matches no size
rule), whether any asks for detail ``high``, the prompt's length and words, and whether it sets
``response_format``. Every rule whose conditions all hold names a tier the request needs; the
answer is the highest of those (the first tier when none holds), then the cheapest backend there.
"""

from __future__ import annotations

import binascii
import io
import re
from dataclasses import dataclass, field
from typing import Any

import pybase64
from PIL import Image, UnidentifiedImageError

from vlmserve.router.config import AutoRule, Backend, RouterConfig


@dataclass
class Features:
    """What the rules look at in one request."""

    images: int = 0
    max_pixels: int = 0
    high_detail: bool = False
    text: list[str] = field(default_factory=list)
    response_format: bool = False

    @property
    def prompt_chars(self) -> int:
        """Characters of text in every message."""
        return sum(len(t) for t in self.text)


def _pixels(url: str) -> int:
    """Width x height of a base64 data URL's image (its header only), 0 when unknown."""
    if not url.startswith("data:") or ";base64," not in url:
        return 0
    try:
        data = pybase64.b64decode(url.split(",", 1)[1], validate=False)
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        return 0


def _json_output(body: dict[str, Any]) -> bool:
    """Whether the request asks for JSON (chat's ``response_format``, the Responses API's
    ``text.format``)."""
    text = body.get("text")
    wanted = body.get("response_format") or (text.get("format") if isinstance(text, dict) else None)
    return isinstance(wanted, dict) and wanted.get("type", "text") not in ("text", None)


def _contents(body: dict[str, Any]) -> list[Any]:
    """Every message's content: chat ``messages``, completions' ``prompt`` (a string or a list of
    them), the Responses API's ``input`` (a string or a list of items)."""
    prompt, given = body.get("prompt"), body.get("input")
    if isinstance(prompt, str | list):
        return [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
    if isinstance(given, str):
        return [given]
    items = body.get("messages") or (given if isinstance(given, list) else [])
    return [item.get("content") for item in items if isinstance(item, dict)]


def features(body: dict[str, Any], measure: bool = True) -> Features:
    """Read a request's features (a malformed part counts for nothing); images are measured
    (their headers decoded) only when ``measure``."""
    found = Features(response_format=_json_output(body))
    for content in _contents(body):
        for part in [content] if isinstance(content, str) else content or []:
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(part, str):
                found.text.append(part)
            elif isinstance(part, dict) and kind in ("text", "input_text"):
                found.text.append(str(part.get("text", "")))
            elif isinstance(part, dict) and kind in ("image_url", "input_image"):
                image = part.get("image_url") or {}
                if isinstance(image, str):  # the Responses API: detail beside the URL
                    image = {"url": image, "detail": part.get("detail")}
                found.images += 1
                found.high_detail |= image.get("detail") == "high"
                if measure:
                    found.max_pixels = max(found.max_pixels, _pixels(str(image.get("url", ""))))
    return found


def matches(rule: AutoRule, request: Features) -> bool:
    """Whether every condition of ``rule`` holds for the request."""
    text = " ".join(request.text).lower()
    checks = [
        rule.min_images is None or request.images >= rule.min_images,
        rule.min_image_pixels is None or request.max_pixels >= rule.min_image_pixels,
        rule.detail is None or request.high_detail,
        rule.min_prompt_chars is None or request.prompt_chars >= rule.min_prompt_chars,
        not rule.keywords
        or any(re.search(rf"\b{re.escape(k.lower())}\b", text) for k in rule.keywords),
        rule.response_format is None or request.response_format == rule.response_format,
    ]
    return all(checks)


def needed_tier(config: RouterConfig, request: Features) -> str:
    """The highest tier any matching rule asks for; the first tier when none matches."""
    levels = [config.tiers.index(r.tier) for r in config.auto if matches(r, request)]
    return config.tiers[max(levels, default=0)]


def choose(config: RouterConfig, body: dict[str, Any]) -> Backend:
    """The backend ``auto`` sends ``body`` to: the cheapest at or above the needed tier."""
    level = config.tiers.index(needed_tier(config, features(body)))
    candidates = [b for b in config.by_cost() if config.tiers.index(b.tier) >= level]
    # The config validation guarantees backends; with none at or above the tier, the top one.
    return candidates[0] if candidates else config.by_cost()[-1]

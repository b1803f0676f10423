"""Structured output: JSON grammars compiled by xgrammar, the grammar engine vLLM uses.

``response_format`` reaches the engines as a dict (``json_object`` or ``json_schema``). The
HTTP layer checks it with :func:`check_response_format` (no tokenizer needed), so a schema the
grammar engine cannot compile is a 400 on every engine. The transformers engine then keeps one
:class:`Constraint` per sequence: before sampling, a token bitmask sets every token the grammar
forbids to ``-inf``; after sampling, the matcher accepts the token.

Near the end of the token budget a constraint also *steers towards closing*: among the allowed
tokens it favours, inside a string, the quote that closes it, and elsewhere those that close an
object or an array, then a quote, then a comma, so a sequence that would otherwise be cut off
mid-JSON (``finish_reason: length``, unparseable text) usually
completes within its budget.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from vlmserve.engine.errors import RequestRejected

logger = logging.getLogger(__name__)

#: The whole of ``json_object``: any JSON object, as vLLM compiles it.
ANY_OBJECT = '{"type": "object"}'
#: Near the budget's end, allowed tokens holding these bytes are favoured, earlier ones more:
#: inside a string, the quote that closes it; outside, whatever closes a structure, then a quote
#: (it starts the shortest value, an empty string), then a comma (it ends a number).
_INSIDE = ((b'"',),)
_OUTSIDE = ((b"}", b"]"), (b'"',), (b",",))
_BONUS = 1.0e4


def _bonus(pieces: Sequence[bytes], tiers: tuple[tuple[bytes, ...], ...]) -> torch.Tensor:
    """Per token, a bonus for the first tier whose bytes it holds (earlier tiers more)."""
    bonus = torch.zeros(len(pieces))
    for token_id, piece in enumerate(pieces):
        for tier, chars in enumerate(tiers):
            if any(c in piece for c in chars):
                bonus[token_id] = _BONUS * (len(tiers) - tier)
                break
    return bonus


@dataclass
class _Steering:
    """What steering needs per tokenizer: each token's bytes and the two bonus rows."""

    pieces: list[bytes]
    inside: torch.Tensor
    outside: torch.Tensor


def closing_window(max_tokens: int) -> int:
    """How many tokens before the budget's end the steering starts: half, 48 to 128 tokens."""
    return min(128, max(48, max_tokens // 2))


def schema_text(response_format: Mapping[str, Any] | None) -> str | None:
    """The JSON schema a ``response_format`` constrains output to (None: plain text)."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    kind = response_format["type"]
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise RequestRejected(
                "response_format.json_schema.schema must be a JSON Schema object.",
                param="response_format.json_schema.schema",
            )
        return json.dumps(schema)
    raise RequestRejected(
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema.",
        param="response_format.type",
    )


def check_schema(schema: Mapping[str, Any], param: str) -> None:
    """A 400 naming ``param`` when the grammar engine cannot compile ``schema``."""
    try:
        xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RequestRejected(
            f"The JSON schema in {param} cannot be used for structured output: {reason}",
            param=param,
        ) from exc


def check_response_format(response_format: Mapping[str, Any] | None) -> None:
    """A 400 naming ``response_format`` for a format the grammar engine cannot enforce."""
    text = schema_text(response_format)
    if text is not None and text != ANY_OBJECT:
        check_schema(json.loads(text), "response_format")


class Grammars:
    """Compiles grammars for one tokenizer (cached by xgrammar) and hands out constraints."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=2)
        pieces = list(info.decoded_vocab[:vocab_size])
        pieces += [b""] * (vocab_size - len(pieces))
        self._steering = _Steering(pieces, _bonus(pieces, _INSIDE), _bonus(pieces, _OUTSIDE))

    def compile(self, response_format: Mapping[str, Any] | None) -> xgr.CompiledGrammar | None:
        """The compiled grammar of a ``response_format`` (None: plain text); slow, cached."""
        text = schema_text(response_format)
        if text is None:
            return None
        try:
            return self._compiler.compile_json_schema(text, any_whitespace=False)
        except (RuntimeError, ValueError) as exc:  # the HTTP layer checked it; be safe anyway
            raise RequestRejected(
                f"The JSON schema cannot be used for structured output: {exc}",
                param="response_format",
            ) from exc

    def constraint(self, compiled: xgr.CompiledGrammar | None) -> Constraint | None:
        """A fresh grammar state for one sequence (None for plain text)."""
        if compiled is None:
            return None
        return Constraint(xgr.GrammarMatcher(compiled), self.vocab_size, self._steering)


class Constraint:
    """The grammar state of one sequence."""

    def __init__(self, matcher: xgr.GrammarMatcher, vocab_size: int, steering: _Steering):
        self._matcher = matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size
        self._steering = steering
        #: Whether the output so far ends inside a JSON string (and after a backslash in it).
        self._in_string = False
        self._escaped = False

    def apply(self, logits: torch.Tensor, steer: bool) -> bool:
        """Forbid, in place, the tokens the grammar does not allow next; False if none is left.

        With ``steer`` (the budget is nearly spent) the allowed tokens that close structures
        are favoured.
        """
        self._matcher.fill_next_token_bitmask(self._bitmask)
        row = logits[: self._vocab_size].unsqueeze(0)
        xgr.apply_token_bitmask_inplace(row, self._bitmask)
        logits[self._vocab_size :] = float("-inf")
        allowed = torch.isfinite(logits)
        if not bool(allowed.any()):
            return False
        if steer:
            steering = self._steering
            logits[: self._vocab_size] += steering.inside if self._in_string else steering.outside
        return True

    def accept(self, token_id: int) -> None:
        """Advance the grammar past the sampled token."""
        if not self._matcher.accept_token(token_id):
            logger.warning("grammar refused token %d it had allowed", token_id)
        pieces = self._steering.pieces
        for byte in pieces[token_id] if token_id < len(pieces) else b"":
            if self._escaped:
                self._escaped = False
            elif self._in_string and byte == 0x5C:  # a backslash escapes the next character
                self._escaped = True
            elif byte == 0x22:  # a quote opens or closes a string
                self._in_string = not self._in_string

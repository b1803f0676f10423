"""What the transformers engine does with a family's ``(model, processor)``, in a few lines.

A prefill per request with the processor's outputs, then decode steps that batch the requests on a
left-padded ``DynamicCache`` with explicit positions, as ``vlmserve/engine/transformers_engine.py``
does.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache

from vlmserve.models.base import Detail, ModelFamily


def prefill(
    family: ModelFamily,
    model: Any,
    processor: Any,
    text: str,
    images: list[Image.Image],
    detail: Detail,
) -> tuple[dict[str, Any], Any]:
    """Render and prefill one chat request; returns the processor outputs and the model output."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": text})
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    inputs = processor(
        text=prompt,
        images=images or None,
        return_tensors="pt",
        **(family.processor_kwargs(detail) if images else {}),
    )
    with torch.no_grad():
        return dict(inputs), model(**inputs, use_cache=True)


def decode_together(model: Any, outputs: list[Any], steps: int) -> list[list[int]]:
    """Greedy-decode several prefilled requests as one left-padded batch for ``steps`` tokens."""
    kv = [[(layer.keys, layer.values) for layer in out.past_key_values.layers] for out in outputs]
    lengths = [layers[0][0].shape[2] for layers in kv]
    tokens = [[int(out.logits[0, -1].argmax())] for out in outputs]
    for _ in range(steps):
        longest = max(lengths)
        batch = []
        for layer in range(len(kv[0])):
            keys = kv[0][layer][0]
            shape = (len(kv), keys.shape[1], longest, keys.shape[3])
            k_batch, v_batch = keys.new_zeros(shape), keys.new_zeros(shape)
            for row, layers in enumerate(kv):
                k_batch[row, :, longest - lengths[row] :] = layers[layer][0][0]
                v_batch[row, :, longest - lengths[row] :] = layers[layer][1][0]
            batch.append((k_batch, v_batch))
        mask = torch.zeros(len(kv), longest + 1, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([[t[-1]] for t in tokens]),
                attention_mask=mask,
                position_ids=torch.tensor([[n] for n in lengths]),
                past_key_values=DynamicCache(ddp_cache_data=batch),
                use_cache=True,
            )
        for row in range(len(kv)):
            start = longest - lengths[row]
            kv[row] = [
                (lay.keys[row : row + 1, :, start:], lay.values[row : row + 1, :, start:])
                for lay in out.past_key_values.layers
            ]
            lengths[row] += 1
            tokens[row].append(int(out.logits[row, -1].argmax()))
    return tokens

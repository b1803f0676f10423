"""Architecture numbers of a vision-language model and the parameter counts derived from them.

The numbers are the ones in each model's ``config.json``; everything the planner needs about
size (parameters, bytes of weights, KV-cache bytes per token) is computed from them here, so a
weight size is never typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageModel:
    """The decoder: a Llama-style transformer with grouped-query attention and a gated MLP."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    #: ``max_position_embeddings``: the longest context the checkpoint is configured for.
    context: int
    #: Attention head width; ``hidden / heads`` unless the config says otherwise.
    explicit_head_dim: int | None = None
    tie_embeddings: bool = False
    #: Qwen2 puts a bias on the q, k and v projections.
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.explicit_head_dim or self.hidden // self.heads

    def layer_linear_params(self) -> int:
        """Weights of one decoder layer's linear layers (q, k, v, o, gate, up, down)."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return q_and_o + k_and_v + mlp + bias

    def linear_params(self) -> int:
        """Weights of every decoder layer's linear layers: what weight quantization shrinks."""
        return self.layers * self.layer_linear_params()

    def other_params(self) -> int:
        """Embeddings, the LM head and the RMSNorm weights: kept in 16 bits by every method."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        norms = (2 * self.layers + 1) * self.hidden
        return embeddings + norms

    def params(self) -> int:
        """All parameters of the language model."""
        return self.linear_params() + self.other_params()

    def kv_bytes_per_token(self, bytes_per_element: int, tensor_parallel: int = 1) -> int:
        """KV-cache bytes one token takes on one GPU: 2 x layers x kv_heads x head_dim x bytes.

        Under tensor parallelism the KV heads are split across GPUs; when there are fewer KV
        heads than GPUs each GPU keeps a replica of one head, as vLLM does.
        """
        heads_per_gpu = max(1, -(-self.kv_heads // tensor_parallel))
        return 2 * self.layers * heads_per_gpu * self.head_dim * bytes_per_element


@dataclass(frozen=True)
class VisionTower:
    """A ViT image encoder and the projector that feeds its features to the language model."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    image_size: int
    patch_size: int
    #: Encoder features merged into one language-model token: 1 for LLaVA, 4 for InternVL's
    #: pixel shuffle (0.5) and for Phi-3-Vision's 2x2 merge. The projector's input is
    #: ``hidden x merge`` wide.
    merge: int = 1

    def encoder_params(self) -> int:
        """Patch embedding, position embedding and the transformer layers (with biases, norms)."""
        patches = (self.image_size // self.patch_size) ** 2
        embed = 3 * self.patch_size**2 * self.hidden + (patches + 1) * self.hidden
        per_layer = (
            4 * self.hidden * self.hidden
            + 2 * self.hidden * self.intermediate
            + 9 * self.hidden  # q, k, v, o and second MLP biases, two norms with biases
            + self.intermediate  # first MLP bias
        )
        return embed + self.layers * per_layer

    def projector_params(self, text_hidden: int) -> int:
        """The two-layer MLP from (merged) vision features to the language model's width."""
        width_in = self.hidden * self.merge
        return width_in * text_hidden + text_hidden * text_hidden + 2 * text_hidden

    def encoder_tokens_per_image_token(self) -> int:
        """Encoder positions behind one language-model image token (the merge factor)."""
        return self.merge


# Vision towers shared by the catalogue (numbers from the models' vision_config).
CLIP_VIT_L_336 = VisionTower("CLIP ViT-L/14-336", 24, 1024, 16, 4096, 336, 14)
CLIP_VIT_L_336_PHI3V = VisionTower("CLIP ViT-L/14-336 + HD crops", 24, 1024, 16, 4096, 336, 14, 4)
INTERN_VIT_300M = VisionTower("InternViT-300M-448px", 24, 1024, 16, 4096, 448, 14, 4)
INTERN_VIT_6B = VisionTower("InternViT-6B-448px-V1-5", 45, 3200, 25, 12800, 448, 14, 4)

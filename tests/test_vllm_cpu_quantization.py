"""Quantized checkpoints on vLLM's CPU build: AWQ and GPTQ served through the real server.

The tiny LLaVA's AWQ and GPTQ variants (tests/quantized_checkpoint.py) must start, run vLLM's CPU
4-bit kernel (its log names it) and answer an image request as the unquantized model does on the
transformers engine: 4-bit rounding of the tiny random weights leaves the first greedy tokens as
they are, and a wrongly packed layout would not. fp8 weights and bitsandbytes without its package
are refused at start-up (tests/test_engine_factory.py); fp8 KV cache is not a vlmserve setting on
the CPU build, and benchmarks/cpu_quantization.py checks it through vLLM's own server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai import OpenAI

from tests.helpers import ServerProcess, image_question, start_server
from tests.quantized_checkpoint import (
    AWQ_ORDER,
    GROUP_SIZE,
    PACK,
    awq_tensors,
    gptq_tensors,
    quantized_checkpoint,
)
from vlmserve.engine.factory import vllm_cpu_build

#: vLLM's log line when a layer gets its CPU 4-bit kernel (auto_awq.py / auto_gptq.py).
KERNEL_LINES = {
    "awq": "Using CPUWNA16LinearKernel for AutoAWQMarlinLinearMethod",
    "gptq": "Using CPUWNA16LinearKernel for AutoGPTQLinearMethod",
}
#: One LLaVA-1.5 image is 576 tokens; 2,048 is also the smallest batch vLLM's CPU build warms up
#: with, so a longer context would only lengthen the warm-up.
QUANT_SERVER_ARGS = [
    "--engine",
    "vllm",
    "--max-model-len",
    "2048",
    "--enforce-eager",
    "--cpu-kv-cache-gib",
    "1",
]
ANSWER_TOKENS = 4


def unpack(words: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """The 4-bit values of int32 ``words`` ``[rows, n]`` as ``[rows, n * 8]`` (nibble ``k`` is
    column ``order[k]`` of its eight): the reading vLLM's loaders apply."""
    nibbles = [(words.to(torch.int64) >> (4 * k)) & 0xF for k in range(PACK)]
    values = torch.empty(words.shape[0], words.shape[1], PACK, dtype=torch.int64)
    for k, column in enumerate(order):
        values[:, :, column] = nibbles[k]
    return values.reshape(words.shape[0], -1)


def test_awq_layout_dequantizes_to_the_weight() -> None:
    weight = torch.randn(64, 128)
    t = awq_tensors("l", weight)
    assert t["l.qweight"].shape == (128, 64 // PACK) and t["l.qweight"].dtype == torch.int32
    q = unpack(t["l.qweight"], AWQ_ORDER).float()  # [in, out]
    zeros = unpack(t["l.qzeros"], AWQ_ORDER).float().repeat_interleave(GROUP_SIZE, 0)
    scales = t["l.scales"].float().repeat_interleave(GROUP_SIZE, 0)
    dequantized = ((q - zeros) * scales).T
    assert torch.all((dequantized - weight).abs() <= scales.T * 0.51 + 1e-2)


def test_gptq_layout_dequantizes_to_the_weight() -> None:
    weight = torch.randn(64, 128)
    t = gptq_tensors("l", weight)
    assert t["l.qweight"].shape == (128 // PACK, 64)
    q = unpack(t["l.qweight"].T.contiguous(), tuple(range(PACK))).T.float()  # [in, out]
    assert torch.all(unpack(t["l.qzeros"], tuple(range(PACK))) == 7)  # v1 format: zero - 1
    assert torch.equal(t["l.g_idx"], torch.arange(128, dtype=torch.int32) // GROUP_SIZE)
    scales = t["l.scales"].float()[t["l.g_idx"].long()]
    dequantized = ((q - 8) * scales).T
    assert torch.all((dequantized - weight).abs() <= scales.T * 0.51 + 1e-2)


@pytest.mark.skipif(not vllm_cpu_build(), reason="checks vLLM's CPU build")
def test_the_cpu_build_still_lacks_the_fp8_weight_kernel() -> None:
    """Why vlmserve refuses fp8 weights there (``CPU_MISSING_KERNELS``): vLLM's CPU build
    registers the op without a kernel. When an upgrade brings one, this fails: run
    benchmarks/cpu_quantization.py and drop the refusal if fp8 weights then answer."""
    import vllm._custom_ops  # noqa: F401  (loads vLLM's compiled ops)

    assert torch.ops._C.dynamic_scaled_fp8_quant.default._schema.arguments == []


def ask(server: ServerProcess) -> str:
    """The server's greedy answer to one image question."""
    client = OpenAI(base_url=server.base_url, api_key="unused")
    response = client.chat.completions.create(
        model=server.model,
        max_tokens=ANSWER_TOKENS,
        temperature=0,
        messages=image_question(),
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length"
    assert response.usage is not None and response.usage.prompt_tokens > 576
    return choice.message.content or ""


@pytest.fixture(scope="module")
def unquantized_answer(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The unquantized tiny LLaVA's answer, on the transformers engine (seconds to start)."""
    logs = tmp_path_factory.mktemp("logs")
    server = start_server(["--model", str(tiny_llava_dir)], logs / "llava-transformers.log")
    try:
        return ask(server)
    finally:
        server.stop()


#: Each vLLM start is about 100 s here, so the suite serves GPTQ only; AWQ (the same CPU kernel
#: through another loader, its packing checked above) runs with VLMSERVE_TEST_AWQ=1 and in
#: benchmarks/cpu_quantization.py.
AWQ_SKIPPED = pytest.mark.skipif(
    os.environ.get("VLMSERVE_TEST_AWQ") != "1", reason="set VLMSERVE_TEST_AWQ=1 to serve AWQ too"
)


@pytest.fixture(scope="module", params=[pytest.param("awq", marks=AWQ_SKIPPED), "gptq"])
def quantized_server(
    request: pytest.FixtureRequest, tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    """vlmserve on vLLM's CPU build serving the tiny LLaVA's AWQ or GPTQ variant."""
    method = request.param
    path = quantized_checkpoint(tiny_llava_dir, method)
    logs = tmp_path_factory.mktemp("logs")
    server = start_server(
        ["--model", str(path), *QUANT_SERVER_ARGS], logs / f"llava-{method}.log", timeout=900
    )
    yield method, server
    server.stop(timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not vllm_cpu_build(), reason="checks vLLM's CPU build (a GPU uses Marlin)")
def test_quantized_checkpoint_answers_on_the_cpu_build(
    unquantized_answer: str, quantized_server: tuple[str, ServerProcess]
) -> None:
    method, server = quantized_server
    assert server.engine == "vllm"
    assert ask(server) == unquantized_answer
    log = server.log()
    assert KERNEL_LINES[method] in log
    assert f"quantization={'auto_gptq' if method == 'gptq' else 'awq'}" in log

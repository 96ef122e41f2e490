"""The parts of the vLLM backend that need no GPU, so they run everywhere: choosing it, its checks, its guard."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from feedback.errors import ModelError
from feedback.events import ChatMessage
from feedback.model.runtime import SamplingParams
from feedback.settings import GatewaySettings, ModelSettings, Settings, VLLMSettings
from services.gateway.app import load_backend
from services.gateway.backend import ContextLengthError, GenerationRequest
from services.gateway.metrics import GatewayMetrics
from services.gateway.vllm_backend import VLLMBackend

HUGE = (ChatMessage(role="user", content="hello " * 9000),)


def test_the_gateway_setting_picks_vllm_without_loading_the_model_itself(tmp_path: Path, model_dir: Path) -> None:
    settings = Settings(
        model=ModelSettings(registry_dir=tmp_path / "registry"), gateway=GatewaySettings(backend="vllm")
    )
    backend = load_backend(settings)
    assert isinstance(backend, VLLMBackend)
    assert (backend.base, backend.context_length) == ("smollm2-135m-instruct", 8192)
    assert backend.serves("smollm2-135m-instruct+abc")
    assert not backend.serves("another-model")


def test_it_refuses_prompts_beyond_its_context(model_dir: Path) -> None:
    backend = VLLMBackend(model_dir, GatewaySettings(vllm=VLLMSettings(max_model_len=512)))
    fits = GenerationRequest((ChatMessage(role="user", content="hi"),), SamplingParams(max_tokens=400), "x")
    backend.check(fits)
    with pytest.raises(ContextLengthError, match=r"exceeds the model's context length of 512 tokens"):
        backend.check(GenerationRequest(fits.messages, SamplingParams(max_tokens=500), "x"))
    with pytest.raises(ContextLengthError, match=r"context length of 8192 tokens"):
        VLLMBackend(model_dir).check(GenerationRequest(HUGE, SamplingParams(), "x"))


def test_max_cpu_loras_holds_a_batch_of_adapters() -> None:
    with pytest.raises(ValueError, match=r"max_cpu_loras \(2\) must be at least max_loras \(4\)"):
        VLLMSettings(max_loras=4, max_cpu_loras=2)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_starting_says_how_to_install_it(model_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"needs a CUDA GPU and the optional extra installed by infra/gpu/install.sh"):
        asyncio.run(VLLMBackend(model_dir).start(GatewayMetrics()))


def test_engine_arguments_follow_the_settings(model_dir: Path) -> None:
    backend = VLLMBackend(model_dir)
    arguments = backend.engine_arguments()
    assert arguments["model"] == str(model_dir)
    assert (arguments["quantization"], arguments["dtype"], arguments["max_num_seqs"]) == (None, "bfloat16", 256)
    assert (arguments["enable_lora"], arguments["logprobs_mode"], arguments["scheduling_policy"]) == (
        True,
        "raw_logprobs",
        "priority",
    )
    fp8 = VLLMBackend(model_dir, GatewaySettings(vllm=VLLMSettings(quantization="fp8", max_model_len=1024)))
    assert (fp8.engine_arguments()["quantization"], fp8.engine_arguments()["max_model_len"]) == ("fp8", 1024)


def test_a_shadow_engine_halves_each_engines_memory_share_and_refuses_a_shared_engine(model_dir: Path) -> None:
    settings = GatewaySettings(vllm=VLLMSettings(gpu_memory_utilization=0.6, shadow_engine=True))
    assert VLLMBackend(model_dir, settings).engine_arguments()["gpu_memory_utilization"] == pytest.approx(0.3)
    assert VLLMBackend(model_dir).engine_arguments()["gpu_memory_utilization"] == 0.5
    with pytest.raises(ValueError, match=r"shadow_engine needs an engine per process: it cannot be set with shared"):
        VLLMSettings(shared_engine=True, shadow_engine=True)


class FakeEngine:
    """A stand-in for vLLM's ``AsyncLLM`` that records its shutdown: starting and closing need no GPU."""

    def __init__(self) -> None:
        self.shutdowns = 0

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.mark.parametrize("separate", [False, True])
def test_shadow_copies_get_an_engine_of_their_own_only_when_asked(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, separate: bool
) -> None:
    opened: list[FakeEngine] = []

    def open_fake(_backend: VLLMBackend, _metrics: GatewayMetrics) -> FakeEngine:
        opened.append(FakeEngine())
        return opened[-1]

    monkeypatch.setattr(VLLMBackend, "_open_engine", open_fake)
    backend = VLLMBackend(model_dir, GatewaySettings(vllm=VLLMSettings(shadow_engine=separate)))
    with pytest.raises(RuntimeError, match="the backend is not started"):
        backend.engine_of("shadow")
    asyncio.run(backend.start(GatewayMetrics()))
    assert len(opened) == (2 if separate else 1)
    assert backend.engine is opened[0]
    assert backend.engine_of("shadow") is opened[-1]
    asyncio.run(backend.close())
    assert [engine.shutdowns for engine in opened] == [1] * len(opened)  # each engine stopped once
    with pytest.raises(RuntimeError, match="the backend is not started"):
        _ = backend.engine


def test_a_shadow_engine_that_cannot_start_stops_the_served_engine(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[FakeEngine] = []

    def open_once(_backend: VLLMBackend, _metrics: GatewayMetrics) -> FakeEngine:
        if opened:
            raise ModelError("vLLM could not start: out of GPU memory (a fake failure)")
        opened.append(FakeEngine())
        return opened[-1]

    monkeypatch.setattr(VLLMBackend, "_open_engine", open_once)
    backend = VLLMBackend(model_dir, GatewaySettings(vllm=VLLMSettings(shadow_engine=True)))
    with pytest.raises(ModelError, match="out of GPU memory"):
        asyncio.run(backend.start(GatewayMetrics()))
    assert opened[0].shutdowns == 1  # not left running, holding its share of the GPU
    with pytest.raises(RuntimeError, match="the backend is not started"):
        _ = backend.engine

"""One meaning of device="auto" and dtype="auto" for every component."""
import pytest
import torch

from types import SimpleNamespace

from multitask_retriever.devices import (autocast, check_dtype_name, process_device, resolve_device, resolve_dtype,
                                         resolve_mixed_precision)
from multitask_retriever.encoder import EncoderConfig
from multitask_retriever.rerank.cross_encoder import CrossEncoderConfig
from multitask_retriever.rerank.llm_scoring import LLMScoringConfig


@pytest.mark.parametrize("gpu, expected", [(False, "cpu"), (True, "cuda")])
def test_auto_is_cuda_exactly_when_torch_sees_a_gpu(monkeypatch, gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert resolve_device("auto") == expected


def test_named_devices_pass_through_and_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device 'cuda:1' but torch sees no CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_is_half_precision_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_dtype("auto", "cuda") == expected
    assert resolve_dtype("auto", torch.device("cuda", 0)) == expected


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                         (False, False, torch.float32)])
def test_auto_dtype_on_cpu_is_bfloat16_only_where_the_cpu_has_it_natively(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert resolve_dtype("auto", "cpu") == expected


def test_auto_dtype_is_float32_elsewhere_and_names_are_taken_as_given():
    assert resolve_dtype("auto", "mps") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("float32", "cuda") == torch.float32


@pytest.mark.parametrize("make", [lambda: EncoderConfig(dtype="fp8"), lambda: LLMScoringConfig(inference_dtype="fp8"),
                                  lambda: CrossEncoderConfig(inference_dtype="fp8"),
                                  lambda: check_dtype_name("fp8", "dtype")])
def test_unknown_dtype_names_are_rejected_alike(make):
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        make()


def test_autocast_is_off_for_float32_and_on_for_a_half_type():
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_under_a_multi_gpu_launch_each_process_takes_its_own_gpu(name):
    """`mtr encode` under `accelerate launch` on 4 GPUs: the process of local rank 2 encodes on
    cuda:2, not every process on GPU 0."""
    state = SimpleNamespace(num_processes=4, device=torch.device("cuda:2"))
    assert process_device(name, state) == "cuda:2"


def test_a_single_process_or_an_explicit_device_resolves_as_usual(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device("auto", SimpleNamespace(num_processes=1, device=torch.device("cpu"))) == "cpu"
    assert process_device("cpu", SimpleNamespace(num_processes=4, device=torch.device("cuda:2"))) == "cpu"


def test_mtr_encode_puts_the_encoder_on_the_process_device(tiny_bert, mini_kilt, tmp_path, monkeypatch):
    from kilt.passages import write_passages
    from multitask_retriever import devices
    from multitask_retriever.cli import main as mtr
    from multitask_retriever.encoder import DualEncoder

    write_passages(mini_kilt / "knowledge_source.jsonl", tmp_path / "passages.jsonl")
    asked: list[str] = []
    monkeypatch.setattr(devices, "process_device", lambda name="auto", state=None: asked.append(name) or "cpu")
    moved: list = []
    real_to = DualEncoder.to
    monkeypatch.setattr(DualEncoder, "to", lambda self, device: moved.append(device) or real_to(self, device))
    assert mtr(["encode", "--encoder", str(tiny_bert), "--passages", str(tmp_path / "passages.jsonl"),
                "--out-dir", str(tmp_path / "shards")]) == 0
    assert asked == ["auto"] and moved == ["cpu"]


@pytest.mark.parametrize("make", [lambda: EncoderConfig(storage_dtype="auto"),
                                  lambda: CrossEncoderConfig(storage_dtype="int8")])
def test_weights_are_stored_only_in_a_named_float_type(make):
    with pytest.raises(ValueError, match="storage_dtype must be one of float32, bfloat16, float16"):
        make()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_on_cpu_follows_native_bfloat16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolve_mixed_precision("auto", "cpu") == expected
    assert resolve_mixed_precision("fp16", "cpu") == "fp16"


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_mixed_precision_on_cuda_is_half(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert resolve_mixed_precision("auto", "cuda") == expected


def test_an_unknown_mixed_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision must be one of no, fp16, bf16, auto, got 'fp8'"):
        resolve_mixed_precision("fp8", "cpu")

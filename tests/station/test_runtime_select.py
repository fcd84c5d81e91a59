"""Which runtime scores the model (`station.runtime_select`): backend x device x precision on machines with
and without CUDA and GPU execution providers.

The selection is a pure function of what the machine offers (torch's CUDA, onnxruntime's providers), so
every case, GPU ones included, is checked here on a CPU-only machine by passing what a GPU machine would
report; no GPU is emulated or mocked, only the two facts the function reads. The GPU runtimes themselves
run only on a GPU machine (docs/performance.md says what was and was not measured).
"""

from __future__ import annotations

import pytest

from station.artifact import ModelArtifactError
from station.runtime_select import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, Runtime, resolve_runtime

CPU_ONLY = (CPU_PROVIDER,)
ORT_GPU = (TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)
ORT_CUDA = (CUDA_PROVIDER, CPU_PROVIDER)


def pick(backend: str, device: str = "auto", precision: str = "auto", *, cuda: bool = False,
         providers: tuple[str, ...] | None = CPU_ONLY) -> Runtime:
    return resolve_runtime(backend, device, precision, cuda=cuda, ort_providers=providers)


def test_auto_on_a_cpu_machine_is_onnxruntime_fp32_on_the_cpu_else_torch():
    assert pick("auto") == Runtime("onnxruntime", "cpu", "fp32", CPU_ONLY)
    assert pick("auto", providers=None) == Runtime("torch", "cpu", "fp32"), "no onnxruntime installed"
    assert pick("auto", "cpu", cuda=True, providers=ORT_GPU).providers == CPU_ONLY, "device cpu keeps it there"


def test_auto_prefers_onnxruntime_gpu_then_torch_cuda_and_fp16_only_when_asked():
    assert pick("auto", cuda=True, providers=ORT_GPU) == Runtime("onnxruntime", "cuda", "fp32", ORT_GPU)
    assert pick("auto", precision="fp16", cuda=True, providers=ORT_GPU) == Runtime("onnxruntime", "cuda", "fp16",
                                                                                 ORT_GPU)
    assert pick("auto", cuda=True, providers=ORT_CUDA) == Runtime("onnxruntime", "cuda", "fp32", ORT_CUDA)
    assert pick("auto", cuda=True) == Runtime("torch", "cuda", "fp32"), "fp16 only when asked"
    assert pick("auto", "cuda", "fp16", cuda=True) == Runtime("torch", "cuda", "fp16")


def test_int8_is_onnxruntime_on_the_cpu_whatever_gpu_the_machine_has():
    assert pick("auto", precision="int8", cuda=True, providers=ORT_GPU) == Runtime("onnxruntime", "cpu", "int8",
                                                                                     CPU_ONLY)
    assert pick("onnxruntime", "cpu", "int8") == Runtime("onnxruntime", "cpu", "int8", CPU_ONLY)
    for backend, device, providers, words in (("torch", "auto", CPU_ONLY, "use backend onnxruntime"),
                                              ("auto", "cuda", ORT_GPU, "CPU provider"),
                                              ("auto", "auto", None, "needs onnxruntime")):
        with pytest.raises(ModelArtifactError, match=words):
            pick(backend, device, "int8", cuda=True, providers=providers)


@pytest.mark.parametrize("backend, device, precision, cuda, providers, words", [
    ("torch", "cuda", "auto", False, CPU_ONLY, "no CUDA device"),
    ("auto", "cuda", "auto", False, CPU_ONLY, "neither torch nor onnxruntime sees a CUDA device"),
    ("onnxruntime", "cuda", "auto", True, CPU_ONLY, "install onnxruntime-gpu"),
    ("onnxruntime", "auto", "auto", False, None, "not installed"),
    ("torch", "cpu", "fp16", True, CPU_ONLY, "fp16 runs on CUDA only"),
    ("auto", "auto", "fp16", False, CPU_ONLY, "fp16 needs a CUDA device"),
    ("onnxruntime", "cuda", "fp16", True, ORT_CUDA, "TensorRT provider"),
    ("tensorrt", "auto", "auto", False, CPU_ONLY, "unknown inference backend"),
    ("torch", "auto", "bf16", False, CPU_ONLY, "unknown model.precision"),
])
def test_a_choice_this_machine_cannot_run_is_refused_naming_the_fix(backend, device, precision, cuda, providers,
                                                                     words):
    with pytest.raises(ModelArtifactError, match=words):
        pick(backend, device, precision, cuda=cuda, providers=providers)


def test_explicit_choices_are_kept():
    assert pick("torch", "auto", cuda=True) == Runtime("torch", "cuda", "fp32")
    assert pick("torch", "cpu", cuda=True) == Runtime("torch", "cpu", "fp32")
    assert pick("onnxruntime", "auto", cuda=True, providers=ORT_CUDA) == Runtime("onnxruntime", "cuda", "fp32",
                                                                                ORT_CUDA)
    assert pick("onnxruntime", "cpu", cuda=True, providers=ORT_GPU) == Runtime("onnxruntime", "cpu", "fp32", CPU_ONLY)


def test_describe_names_backend_device_and_any_precision_but_fp32():
    assert pick("auto").describe() == "onnxruntime on cpu"
    assert pick("auto", precision="int8").describe() == "onnxruntime on cpu, int8"
    assert pick("auto", "auto", "fp16", cuda=True).describe() == "torch on cuda, fp16"
    assert pick("auto", "auto", "fp16", cuda=True, providers=ORT_GPU).describe() == "onnxruntime on tensorrt+cuda, fp16"

"""Devices and dtypes: the resolver, the study's ``device`` / ``device_map`` keys, signatures and fingerprints, and
(on a GPU only) a tiny study on cuda that agrees with the CPU."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import mlquant as mq
from mlquant._loading import ModelSource, check_device, check_device_map, resolve_device, resolve_dtype
from mlquant._runner import ModelPool
from mlquant.cells import Signature
from mlquant.errors import BackendUnavailableError, ConfigError
from mlquant.models import FakeModel, load_model, model_fingerprint
from mlquant.requests import LoglikelihoodRequest
from mlquant.spec import QuantSpec

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend this machine has ``n`` CUDA devices and / or MPS: ``gpus(cuda=2, mps=False)``."""

    def set_(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_


# ----- the resolver -------------------------------------------------------------------------------------------------
def test_auto_prefers_cuda_then_mps_then_cpu(gpus) -> None:
    gpus(cuda=1, mps=True)
    assert resolve_device("auto") == "cuda"
    gpus(cuda=0, mps=True)
    assert resolve_device("auto") == "mps"
    gpus(cuda=0, mps=False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu" and resolve_device("CPU") == "cpu"


def test_explicit_devices_are_checked_against_the_machine(gpus) -> None:
    gpus(cuda=2)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(BackendUnavailableError, match=r"device 'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(BackendUnavailableError, match="device 'mps': MPS .* is not available"):
        resolve_device("mps")
    gpus(cuda=0)
    with pytest.raises(BackendUnavailableError, match=r"device 'cuda': this machine has no usable CUDA GPU .*device: auto or cpu"):
        resolve_device("cuda")


# ids by position: a test id "gpu" would be taken for the gpu marker by conftest and skipped
@pytest.mark.parametrize("bad", ["gpu", "cdua", "cpu:0", "cuda:", "cuda:-1", "", 3, None], ids=lambda v: f"value-{v!r}")
def test_bad_device_strings_name_the_value_and_the_forms(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^device .* is not a device\..* Expected one of: auto, cpu, cuda, cuda:<index>, mps\.$"):
        check_device(bad)


def test_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'cuda'"):
        check_device("cdua")
    with pytest.raises(ConfigError, match=r"^device_map 'atuo' is not a device map\. Did you mean 'auto'"):
        check_device_map("atuo")
    with pytest.raises(ConfigError, match="device_map"):
        check_device_map({"": "gpu"})
    assert check_device_map({"": "cpu"}) == {"": "cpu"} and check_device_map("auto") == "auto"


def test_dtype_auto(gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cuda") == "float16"  # an explicit dtype is kept, whatever the device
    gpus(cuda=1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "auto") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == "float32"


def test_load_model_refuses_before_loading(tiny_llama_dir: Path, gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlquant.models as models

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_pretrained", no_loading)
    gpus(cuda=0)
    with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU"):
        load_model(str(tiny_llama_dir), device="cuda")
    with pytest.raises(ConfigError, match="device 'tpu' is not a device"):
        load_model(str(tiny_llama_dir), device="tpu")
    with pytest.raises(ConfigError, match="dtype 'float8' is not one of"):
        load_model(str(tiny_llama_dir), dtype="float8")


def test_load_model_auto_on_cpu_and_device_map_score_identically(tiny_llama_dir: Path) -> None:
    reqs = [LoglikelihoodRequest("The capital of France is", c) for c in (" Paris", " Rome", " 東京")]
    plain = load_model(str(tiny_llama_dir))
    ref = [r.logprob for r in plain.loglikelihood(reqs)]
    if not torch.cuda.is_available():
        auto = load_model(str(tiny_llama_dir), device="auto", dtype="auto")
        assert auto.device.type == "cpu" and auto.spec.dtype == "float32"
        assert [r.logprob for r in auto.loglikelihood(reqs)] == ref
        assert auto.fingerprint() == plain.fingerprint()
    for device_map in ({"": "cpu"}, "auto"):
        mapped = load_model(str(tiny_llama_dir), device="cpu", device_map=device_map)
        assert mapped.device.type == "cpu"
        assert [r.logprob for r in mapped.loglikelihood(reqs)] == ref
        assert mapped.fingerprint() == plain.fingerprint()


# ----- signatures and fingerprints ----------------------------------------------------------------------------------
def test_device_enters_fingerprint_and_signature_only_off_the_cpu(tiny_llama_dir: Path) -> None:
    src = ModelSource("org/m", "org/m", revision="abc")
    fp32 = QuantSpec.parse("fp32")
    assert model_fingerprint(src, fp32) == model_fingerprint(src, fp32, "cpu")  # older caches stay valid
    assert model_fingerprint(src, fp32, "cuda") == model_fingerprint(src, fp32, "cuda:1")
    assert model_fingerprint(src, fp32, "cuda") != model_fingerprint(src, fp32)
    assert ModelPool(str(tiny_llama_dir), device="cuda").fingerprint(fp32) != ModelPool(str(tiny_llama_dir)).fingerprint(fp32)

    kw = dict(quant=["fp32", "rtn-w8"], tasks=["xcopa"], languages=["tr"], limit=2)
    cpu, cuda = mq.Study(str(tiny_llama_dir), **kw), mq.Study(str(tiny_llama_dir), device="cuda:1", **kw)
    version = torch.__version__.split("+")[0]
    for c_cpu, c_cuda in zip(cpu.cells, cuda.cells):
        s_cpu, s_cuda = cpu.signature(c_cpu, "model:m").format(), cuda.signature(c_cuda, "model:m").format()
        assert "@cpu" not in s_cpu and "@" not in cpu.signature(c_cpu, "model:m").torch
        plain = cpu.signature(c_cpu, "m").torch
        assert s_cuda == s_cpu.replace(f"|torch:{plain}|", f"|torch:{plain}@cuda|")
        assert cuda.signature(c_cuda, "m").torch.endswith("@cuda")
        assert version in s_cuda
        assert Signature.parse(s_cuda) == cuda.signature(c_cuda, "model:m")
    # A run folder's study.yaml with device: cuda reloads on a machine without CUDA, to the same signatures.
    again = mq.Study(**{**cuda.to_dict(), "model": str(tiny_llama_dir)})
    assert again.device == "cuda:1"
    assert [again.signature(c, "m") for c in again.cells] == [cuda.signature(c, "m") for c in cuda.cells]


def test_auto_is_resolved_for_the_signature_and_recorded(tiny_llama_dir: Path, gpus) -> None:
    gpus(cuda=1)
    study = mq.Study(str(tiny_llama_dir), quant=["bf16"], tasks=["xcopa"], languages=["tr"], device="AUTO")
    assert study.device == "auto" and study.to_dict()["device"] == "auto"
    assert study.device_kind() == "cuda" and study.signature(study.cells[0], "m").torch.endswith("@cuda")
    assert study.resolved_device() == "cuda" and study.to_dict()["device"] == "cuda"
    gpus(cuda=0)
    cpu = mq.Study(str(tiny_llama_dir), quant=["bf16"], tasks=["xcopa"], languages=["tr"], device="auto")
    assert cpu.device_kind() == "cpu" and "@" not in cpu.signature(cpu.cells[0], "m").torch


def test_model_objects_keep_their_device(tiny_llama) -> None:
    with pytest.raises(ConfigError, match=r"^device 'cuda' does not match the model object, which is on 'cpu'"):
        mq.Study(FakeModel(), quant=["fp32"], tasks=["xcopa"], languages=["tr"], device="cuda")
    with pytest.raises(ConfigError, match="device_map: applies to a named model only"):
        mq.Study(tiny_llama, quant=["fp32"], tasks=["xcopa"], languages=["tr"], device_map="auto")
    study = mq.Study(tiny_llama, quant=["fp32"], tasks=["xcopa"], languages=["tr"], device="auto")
    assert study.device == "cpu" and study.resolved_device() == "cpu"


def test_pool_quantizes_each_spec_in_its_own_dtype(tiny_llama) -> None:
    pool = ModelPool(tiny_llama)
    q = pool.get(QuantSpec.parse("rtn-w8", dtype="bfloat16"))
    assert next(q.torch_model.parameters()).dtype == torch.bfloat16 and q.spec.dtype == "bfloat16"
    assert next(tiny_llama.torch_model.parameters()).dtype == torch.float32  # the base model is untouched
    bf = dict(tasks=["xcopa"], languages=["tr"])
    assert mq.Study("x/y", quant=["bf16", {"label": "rtn-w8", "dtype": "bfloat16"}], **bf).base_dtype() == "bfloat16"
    assert mq.Study("x/y", quant=["bf16", "rtn-w8"], **bf).base_dtype() == "float32"
    assert mq.Study("x/y", quant=["fp32"], **bf).base_dtype() == "float32"


# ----- the study YAML -----------------------------------------------------------------------------------------------
def write_study(tmp_path: Path, model: Path, extra: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {model}
        quant: [fp32, rtn-w4g32]
        tasks: [xcopa]
        languages: [tr]
        limit: 3
        """) + extra)
    return path


def test_yaml_device_cpu_runs_and_reloads(tmp_path: Path, tiny_llama_dir: Path) -> None:
    path = write_study(tmp_path, tiny_llama_dir, "device: cpu\n")
    study = mq.Study.from_yaml(path)
    df = study.run(tmp_path / "run", progress=False).frame
    assert len(df) == 6 and study.last_run.models_loaded == 1
    resolved = yaml.safe_load((tmp_path / "run" / "study.yaml").read_text())
    assert resolved["device"] == "cpu" and resolved["device_map"] is None
    again = mq.Study.from_yaml(tmp_path / "run" / "study.yaml")
    assert [c.describe() for c in again.cells] == [c.describe() for c in study.cells]
    assert [again.signature(c, "m") for c in again.cells] == [study.signature(c, "m") for c in study.cells]
    # The stored signatures are those of a CPU run before devices existed: no device in them.
    assert not df.signature.str.contains("@cpu", regex=False).any()
    assert not df.signature.str.contains("@cuda", regex=False).any()
    again.run(tmp_path / "run", progress=False)
    assert again.last_run.cells_skipped == 2 and again.last_run.forward_passes == 0


@NO_CUDA
def test_yaml_device_cuda_is_refused_before_loading(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlquant.models as models

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_pretrained", no_loading)
    study = mq.Study.from_yaml(write_study(tmp_path, tiny_llama_dir, "device: cuda\n"))
    with pytest.raises(BackendUnavailableError, match="device 'cuda': this machine has no usable CUDA GPU"):
        study.run(tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_yaml_bad_device_names_file_line_and_key(tmp_path: Path, tiny_llama_dir: Path) -> None:
    path = write_study(tmp_path, tiny_llama_dir, "seed: 0\ndevice: gpu\n")
    with pytest.raises(ConfigError, match=r"study.yaml, line 7: device 'gpu' is not a device\. .*Expected one of: auto, cpu"):
        mq.Study.from_yaml(path)
    path = write_study(tmp_path, tiny_llama_dir, "device: cuda\ndevice_map: atuo\n")
    with pytest.raises(ConfigError, match=r"study.yaml, line 7: device_map 'atuo' is not a device map\. Did you mean 'auto'"):
        mq.Study.from_yaml(path)
    path = write_study(tmp_path, tiny_llama_dir, "device: cpu\n")
    with pytest.raises(ConfigError, match=r"study.yaml \(overridden device='gpu'\): device 'gpu' is not a device"):
        mq.Study.from_yaml(path, device="gpu")
    assert mq.Study.from_yaml(path, device="cuda").device == "cuda"  # form only; availability is checked by run()
    with pytest.raises(ConfigError, match="cannot override unknown key 'devcie'"):
        mq.Study.from_yaml(path, devcie="cpu")


def test_device_map_study_scores_like_the_cpu_study(tmp_path: Path, tiny_llama_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("device_map=auto would place the model on the GPU here")
    plain = mq.Study.from_yaml(write_study(tmp_path, tiny_llama_dir, "")).run(tmp_path / "a", progress=False).frame
    mapped_study = mq.Study.from_yaml(write_study(tmp_path, tiny_llama_dir, "device_map: auto\n"))
    assert mapped_study.device == "auto"
    mapped = mapped_study.run(tmp_path / "b", progress=False).frame
    cols = ["quant", "task", "lang", "item_id", "output", "extracted", "score", "signature"]
    pd.testing.assert_frame_equal(plain[cols], mapped[cols])
    assert yaml.safe_load((tmp_path / "b" / "study.yaml").read_text())["device_map"] == "auto"


def test_cli_run_device_option(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from typer.testing import CliRunner

    from mlquant.cli import app

    path = write_study(tmp_path, tiny_llama_dir, "device: cpu\n")
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--device", "gpu", "--quiet"])
    assert result.exit_code == 2
    assert "device 'gpu' is not a device" in result.output and "overridden device='gpu'" in result.output
    assert not (tmp_path / "run").exists()
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--device", "cuda", "--quiet"])
        assert result.exit_code == 2 and "no usable CUDA GPU" in result.output


# ----- on a GPU -----------------------------------------------------------------------------------------------------
def tiny_llama_128(folder: Path) -> Path:
    """A tiny random Llama whose layers take 128 or 256 inputs (so that group size 128 divides them)."""
    from conftest import byte_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=259, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=256, eos_token_id=257, pad_token_id=258,
    ))
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.gpu
def test_tiny_study_on_cuda_matches_the_cpu(tmp_path: Path) -> None:
    model = tiny_llama_128(tmp_path / "tiny")
    kw = dict(quant=["bf16", {"label": "rtn-w4g128", "dtype": "bfloat16"}], tasks=["xcopa", "belebele"],
              languages=["en", "tr", "zh"], limit=20)
    cpu = mq.Study(str(model), device="cpu", **kw).run(tmp_path / "cpu", progress=False).frame
    gpu_study = mq.Study(str(model), device="auto", **kw)
    gpu = gpu_study.run(tmp_path / "gpu", progress=False).frame
    assert gpu_study.resolved_device() == "cuda"
    assert gpu.signature.str.contains("@cuda|", regex=False).all()
    assert not cpu.signature.str.contains("@cuda", regex=False).any()
    assert yaml.safe_load((tmp_path / "gpu" / "study.yaml").read_text())["device"] == "cuda"
    keys = ["quant", "task", "lang", "item_id"]
    both = cpu.merge(gpu, on=keys, suffixes=("_cpu", "_gpu"))
    assert len(both) == len(cpu) == len(gpu) and set(both.quant) == {"bf16", "rtn-w4g128"}
    for quant, part in both.groupby("quant"):
        agree = (part.extracted_cpu == part.extracted_gpu).mean()
        assert agree >= 0.95, (quant, agree)

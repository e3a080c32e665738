"""Outcome reward models: a scalar head on a Hugging Face transformer.

Two poolings of the head: ``"last"`` reads it at the last token (the HF sequence-classification
convention); ``"sum"`` adds it up over every token, a dense per-token reward whose total is the
score, which suits rewards that are sums of per-word terms. Either is saved as an HF
sequence-classification directory with one label: ``AutoModelForSequenceClassification`` loads a
"last" model as is and a "sum" model with ``trust_remote_code=True`` (the directory carries the
ten-line pooling class), and both score the same as in rlxf.

``lm_term=True`` (with "sum" pooling) adds a learned multiple of the backbone's own log-likelihood
of the sequence, sum over t of log p(x_t | x_<t), read through the input embeddings that a
tied-embedding causal LM uses as its output layer. Starting from an SFT policy, that is the SFT
log-likelihood: a fluency feature the per-token head would otherwise have to rebuild from a few
thousand comparisons (on the built-in task it closes about 2 of the 7 points between a sum-pooled
reward model and the Bayes rate, docs/reward_models.md). The weight is saved in the config
(``rlxf_lm_weight``) and the saved pooling class applies it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.core.runs import atomic_dir
from rlxf.policies.logprobs import chunks, pad_tokens


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """-log sigma(r_w - r_l) per pair, ``[batch]`` (Bradley-Terry reward modelling)."""
    return -F.logsigmoid(r_chosen - r_rejected)


POOLINGS = ("last", "sum")
# The LM term's weight is stored as a parameter theta with weight = _LM_STEP * theta: Adam moves a
# parameter by about its learning rate per step, and at reward-model rates (1e-4..1e-3) an unscaled
# weight could not reach its useful size (0.1..1) within a few hundred steps.
_LM_STEP = 10.0
_SUM_MODULE = "rlxf_token_sum"
_SUM_SOURCE = '''"""Written by rlxf: the reward is the head summed over every non-padding token, plus
config.rlxf_lm_weight times the backbone's log-likelihood of the sequence when that is set."""
import torch
from transformers import {base} as _Base


class TokenSumForSequenceClassification(_Base):
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if kwargs.pop("labels", None) is not None:
            raise ValueError("this reward model scores only; train it with rlxf")
        kwargs.update(output_hidden_states=True, return_dict=True)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        hidden = out.hidden_states[-1]
        mask = attention_mask.to(hidden.dtype)
        out.logits = (self.{head}(hidden) * mask[..., None]).sum(1)
        weight = getattr(self.config, "rlxf_lm_weight", None)
        if weight is not None:
            logits = hidden[:, :-1] @ self.get_input_embeddings().weight.T
            logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            out.logits = out.logits + weight * (logp * mask[:, 1:] * mask[:, :-1]).sum(1, keepdim=True)
        return out
'''


class RewardModel:
    """Scores (prompt, response) token sequences with a scalar.

    ``pooling``: "last" or "sum" (see the module docstring); None takes the one the model was
    saved with ("last" for a model that is not an rlxf reward model yet). ``lm_term``: add a learned
    multiple of the backbone's log-likelihood (module docstring); None keeps what the model was
    saved with (off for a model that is not an rlxf reward model yet)."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", pooling: str | None = None,
                 lm_term: bool | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("the reward model's tokenizer needs a pad token")
        pooling = pooling or getattr(model.config, "rlxf_pooling", None) or "last"
        if pooling not in POOLINGS:
            raise ValueError(f"reward model pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        saved_weight = getattr(model.config, "rlxf_lm_weight", None)
        self.lm_term = saved_weight is not None if lm_term is None else lm_term
        if self.lm_term:
            if pooling != "sum":
                raise ValueError("the reward model's lm_term needs pooling 'sum' (the LM term is a sum over tokens)")
            if not getattr(model.config, "tie_word_embeddings", False):
                raise ValueError(f"the reward model's lm_term reads the LM through the input embeddings, but "
                                 f"{type(model).__name__}'s config does not tie them to its output layer")
            model.rlxf_lm_theta = torch.nn.Parameter(torch.tensor(float(saved_weight or 0.0) / _LM_STEP))
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", pooling: str | None = None,
                        lm_term: bool | None = None) -> "RewardModel":
        """Load a reward model directory, or start one from a causal LM directory (new head)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} does not exist or has no config.json")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # "newly initialized score head" is expected when starting from an LM
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, local_files_only=True, dtype=torch.float32)
        finally:
            logging.set_verbosity(verbosity)
        return cls(model, tok, device, pooling, lm_term)

    def _head_name(self) -> str:
        """The attribute holding the scalar head (``score`` in most HF causal architectures)."""
        for name in ("score", "classifier"):
            if isinstance(getattr(self.model, name, None), torch.nn.Module):
                return name
        raise TypeError(f"{type(self.model).__name__} has no 'score' or 'classifier' head to read per token")

    def _head(self):
        return getattr(self.model, self._head_name())

    @property
    def lm_weight(self) -> Tensor | None:
        """The learned weight of the LM term (None without one)."""
        return _LM_STEP * self.model.rlxf_lm_theta if self.lm_term else None

    def save_pretrained(self, path: str | Path) -> None:
        config = self.model.config
        if self.pooling == "sum":
            config.rlxf_pooling = "sum"
            config.auto_map = {"AutoModelForSequenceClassification": f"{_SUM_MODULE}.TokenSumForSequenceClassification"}
        stale = ("rlxf_pooling", "auto_map", "rlxf_lm_weight") if self.pooling == "last" else ("rlxf_lm_weight",)
        for key in stale:
            if hasattr(config, key):
                delattr(config, key)
        if self.lm_term:  # a config value, so HF loading needs no extra weight
            config.rlxf_lm_weight = self.lm_weight.item()
        state = {k: v for k, v in self.model.state_dict().items() if k != "rlxf_lm_theta"}
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, state_dict=state)
            self.tokenizer.save_pretrained(tmp)
            if self.pooling == "sum":
                source = _SUM_SOURCE.format(base=type(self.model).__name__, head=self._head_name())
                (Path(tmp) / f"{_SUM_MODULE}.py").write_text(source)

    def right_padded(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Prompt+response token ids right-padded into ``[batch, width]``, and the attention mask."""
        return pad_tokens([p + r for p, r in zip(prompt_ids, response_ids)], self.tokenizer.pad_token_id)

    def forward(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        """Scores with gradient, ``[batch]``. Sequences are right-padded, so each is scored
        exactly as it would be alone."""
        ids, attn = self.right_padded(prompt_ids, response_ids)
        ids, attn = ids.to(self.device), attn.to(self.device)
        if self.pooling == "last":
            return self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, 0].float()
        hidden = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True,
                            use_cache=False).hidden_states[-1]
        scores = (self._head()(hidden).squeeze(-1).float() * attn).sum(1)
        if self.lm_term:
            scores = scores + self.lm_weight * self._log_likelihood(ids, attn, hidden)
        return scores

    def _log_likelihood(self, ids: Tensor, attn: Tensor, hidden: Tensor) -> Tensor:
        """sum_t log p(x_t | x_<t) over real tokens after the first, ``[batch]``: the backbone read
        as the causal LM whose output layer is its (tied) input embeddings."""
        logits = hidden[:, :-1].float() @ self.model.get_input_embeddings().weight.float().T
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (logp * attn[:, 1:] * attn[:, :-1]).sum(1)

    @torch.no_grad()
    def log_likelihood(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        """The backbone's log-likelihood of each prompt+response (what the LM term weighs), ``[batch]``."""
        ids, attn = self.right_padded(prompt_ids, response_ids)
        ids, attn = ids.to(self.device), attn.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True,
                            use_cache=False).hidden_states[-1]
        return self._log_likelihood(ids, attn, hidden)

    def encode_pairs(self, prompts: list[str], responses: list[str], add_eos: bool = True):
        """Token ids of prompts and responses (responses end with EOS, as the policies write them)."""
        enc = lambda t: self.tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
        eos = [self.tokenizer.eos_token_id] if add_eos and self.tokenizer.eos_token_id is not None else []
        return [enc(p) for p in prompts], [enc(r) + eos for r in responses]

    def score_texts(self, prompts: list[str], responses: list[str], add_eos: bool = True) -> Tensor:
        """Scores of (prompt, response) texts, ``[batch]``."""
        return self.score(*self.encode_pairs(prompts, responses, add_eos))

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]], batch_size: int = 512) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        out = torch.cat([self.forward(prompt_ids[part], response_ids[part])
                         for part in chunks(len(prompt_ids), batch_size)])
        self.model.train(was_training)
        return out

"""Outcome reward models: a scalar head on a Hugging Face transformer.

Two poolings of the head: ``"last"`` reads it at the last token (the HF sequence-classification
convention); ``"sum"`` adds it up over every token, a dense per-token reward whose total is the
score, which suits rewards that are sums of per-word terms. Either is saved as an HF
sequence-classification directory with one label: ``AutoModelForSequenceClassification`` loads a
"last" model as is and a "sum" model with ``trust_remote_code=True`` (the directory carries the
ten-line pooling class), and both score the same as in rlxf.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.core.runs import atomic_dir


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """-log sigma(r_w - r_l) per pair, ``[batch]`` (Bradley-Terry reward modelling)."""
    return -F.logsigmoid(r_chosen - r_rejected)


POOLINGS = ("last", "sum")
_SUM_MODULE = "rlxf_token_sum"
_SUM_SOURCE = '''"""Written by rlxf: the reward is the head summed over every non-padding token."""
from transformers import {base} as _Base


class TokenSumForSequenceClassification(_Base):
    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if kwargs.pop("labels", None) is not None:
            raise ValueError("this reward model scores only; train it with rlxf")
        kwargs.update(output_hidden_states=True, return_dict=True)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        per_token = self.{head}(out.hidden_states[-1])
        out.logits = (per_token * attention_mask[..., None].to(per_token.dtype)).sum(1)
        return out
'''


class RewardModel:
    """Scores (prompt, response) token sequences with a scalar.

    ``pooling``: "last" or "sum" (see the module docstring); None takes the one the model was
    saved with ("last" for a model that is not an rlxf reward model yet)."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", pooling: str | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("the reward model's tokenizer needs a pad token")
        pooling = pooling or getattr(model.config, "rlxf_pooling", None) or "last"
        if pooling not in POOLINGS:
            raise ValueError(f"reward model pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", pooling: str | None = None) -> "RewardModel":
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
        return cls(model, tok, device, pooling)

    def _head_name(self) -> str:
        """The attribute holding the scalar head (``score`` in most HF causal architectures)."""
        for name in ("score", "classifier"):
            if isinstance(getattr(self.model, name, None), torch.nn.Module):
                return name
        raise TypeError(f"{type(self.model).__name__} has no 'score' or 'classifier' head to read per token")

    def _head(self):
        return getattr(self.model, self._head_name())

    def save_pretrained(self, path: str | Path) -> None:
        config = self.model.config
        if self.pooling == "sum":
            config.rlxf_pooling = "sum"
            config.auto_map = {"AutoModelForSequenceClassification": f"{_SUM_MODULE}.TokenSumForSequenceClassification"}
        else:
            for key in ("rlxf_pooling", "auto_map"):
                if hasattr(config, key):
                    delattr(config, key)
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.pooling == "sum":
                source = _SUM_SOURCE.format(base=type(self.model).__name__, head=self._head_name())
                (Path(tmp) / f"{_SUM_MODULE}.py").write_text(source)

    def right_padded(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Prompt+response token ids right-padded into ``[batch, width]``, and the attention mask."""
        seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        return ids, attn

    def forward(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        """Scores with gradient, ``[batch]``. Sequences are right-padded, so each is scored
        exactly as it would be alone."""
        ids, attn = self.right_padded(prompt_ids, response_ids)
        ids, attn = ids.to(self.device), attn.to(self.device)
        if self.pooling == "last":
            return self.model(input_ids=ids, attention_mask=attn).logits[:, 0].float()
        hidden = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1]
        return (self._head()(hidden).squeeze(-1).float() * attn).sum(1)

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
        out = torch.cat([
            self.forward(prompt_ids[i : i + batch_size], response_ids[i : i + batch_size])
            for i in range(0, len(prompt_ids), batch_size)
        ])
        self.model.train(was_training)
        return out

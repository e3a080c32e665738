"""Outcome reward models: a scalar head on a Hugging Face transformer.

Saved as an HF sequence-classification directory with one label, so
``AutoModelForSequenceClassification`` loads it and scores the same as rlxf.
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


class RewardModel:
    """Scores (prompt, response) token sequences with a scalar."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        if tokenizer.pad_token_id is None:
            raise ValueError("the reward model's tokenizer needs a pad token")
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "RewardModel":
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
        return cls(model, tok, device)

    def save_pretrained(self, path: str | Path) -> None:
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

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
        out = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device))
        return out.logits[:, 0].float()

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

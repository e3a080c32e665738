"""A soft prompt as a black-box point: n vectors prepended to a frozen language model's input
embeddings, scored by how likely the model then makes a target continuation.

``SoftPromptScore`` is the gold that a ranking oracle sees only through orders: f(x) = the mean
negative log-probability of the target tokens after the soft prompt x (``[n_virtual * n_embd]``),
to be minimised. The default model is a freshly initialised tiny GPT-2 built in-process (no
download), so the score is synthetic; any Hugging Face causal LM with input embeddings works.
"""

from __future__ import annotations

import numpy as np
import torch

from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

WORDS = "the cat dog sat ran on mat log red blue".split()


class SoftPromptScore:
    """f(points ``[n, n_virtual * n_embd]`` or ``[n_virtual * n_embd]``) -> ``[n]`` or a float: the
    frozen ``model``'s mean negative log-probability of ``target_ids`` after each soft prompt."""

    def __init__(self, model, target_ids: list[int], n_virtual: int):
        if n_virtual < 1 or not target_ids:
            raise ValueError(f"SoftPromptScore needs n_virtual >= 1 and a non-empty target; got {n_virtual}, "
                             f"{target_ids}")
        self.model = model.eval()
        self.target = torch.as_tensor(target_ids, dtype=torch.long)
        self.n_virtual = n_virtual
        self.n_embd = model.get_input_embeddings().embedding_dim
        self.dim = n_virtual * self.n_embd

    @torch.no_grad()
    def __call__(self, points) -> np.ndarray | float:
        pts = np.asarray(points, dtype=np.float32)
        if pts.shape[-1] != self.dim:
            raise ValueError(f"soft prompt must have {self.dim} = {self.n_virtual} x {self.n_embd} numbers, "
                             f"got {pts.shape[-1]}")
        soft = torch.from_numpy(np.atleast_2d(pts)).view(-1, self.n_virtual, self.n_embd)
        n, t = len(soft), len(self.target)
        target_emb = self.model.get_input_embeddings()(self.target).expand(n, -1, -1)
        logits = self.model(inputs_embeds=torch.cat([soft, target_emb], 1)).logits[:, -t - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, self.target.expand(n, t).unsqueeze(-1))
        out = (-logp.squeeze(-1).mean(-1)).double().numpy()
        return out if pts.ndim == 2 else float(out[0])


def tiny_soft_prompt_score(n_virtual: int = 4, target: str = "red cat sat", seed: int = 0) -> SoftPromptScore:
    """The built-in case: a 2-layer, 32-wide GPT-2 (initialised with ``seed``) over a 14-token vocabulary,
    and the target continuation ``target``; the soft prompt has ``n_virtual`` x 32 numbers."""
    tok = tiny_tokenizer(WORDS)
    model = tiny_causal_lm(tok, n_layer=2, n_embd=32, n_head=4, seed=seed)
    return SoftPromptScore(model, tok(target)["input_ids"], n_virtual)

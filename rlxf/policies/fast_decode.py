"""A lean KV-cached decoder for GPT-2 models, used by the sampler in place of ``model.forward``.

For the small models of online RL on a CPU, a decoding step costs more in Python dispatch
through the generic Hugging Face forward (cache objects, output dataclasses, hooks, mask
builders) than in arithmetic. This decoder reads the same weights and runs the same
computation (pre-norm blocks, fused QKV projection, scaled dot-product attention, gelu_new
MLP, tied head) with plain tensor operations and a preallocated key/value cache. It is used only
where it is exact for the model's configuration (see :func:`supports`); the sampler checks
its log-probabilities against a fresh scoring pass in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supports(model) -> bool:
    """True for a GPT-2 LM head model (or a bare GPT-2 transformer, decoded to its last hidden states) whose
    configuration this decoder reproduces exactly: in eval mode, or in train mode when every dropout
    probability is zero."""
    from transformers import GPT2LMHeadModel, GPT2Model

    if type(model) not in (GPT2LMHeadModel, GPT2Model) or getattr(model, "peft_config", None) is not None:
        return False  # LoRA layers or another architecture: the HF forward
    c = model.config
    no_dropout = not model.training or (c.resid_pdrop == 0 and c.embd_pdrop == 0 and c.attn_pdrop == 0)
    return (c.activation_function == "gelu_new" and not c.scale_attn_by_inverse_layer_idx
            and not c.reorder_and_upcast_attn and not c.add_cross_attention and c.scale_attn_weights
            and no_dropout)


class GPT2Decoder:
    """``prefill(ids, attn, positions, max_new)`` then ``step(tokens, positions)``; both return the
    last position's logits, ``[B, vocab]`` (float32), or for a bare transformer (``GPT2Model``) its
    last hidden states after the final layer norm, ``[B, n_embd]``. ``score`` runs a whole batch in one
    pass, with gradient when it is enabled."""

    def __init__(self, model):
        self.model = model
        self.hidden_only = not hasattr(model, "transformer")  # a bare GPT2Model: no LM head
        t = model if self.hidden_only else model.transformer
        self.wte, self.wpe, self.blocks, self.ln_f = t.wte.weight, t.wpe.weight, t.h, t.ln_f
        c = model.config
        self.n_head, self.eps = c.n_head, c.layer_norm_epsilon
        self.head_dim = c.n_embd // c.n_head
        self.k = self.v = None  # per-layer key/value caches [B, H, L, hd] while decoding

    def _block(self, i: int, x: Tensor, mask: Tensor, start: int) -> Tensor:
        """One transformer block over new positions ``start..start+T`` (their K/V go to the cache, if any)."""
        blk = self.blocks[i]
        B, T, D = x.shape
        h = F.layer_norm(x, (D,), blk.ln_1.weight, blk.ln_1.bias, self.eps)
        qkv = torch.addmm(blk.attn.c_attn.bias, h.reshape(-1, D), blk.attn.c_attn.weight).view(B, T, 3, self.n_head,
                                                                                                 self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, hd] each
        if self.k is not None:
            end = start + T
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            k, v = self.k[i][:, :, :end], self.v[i][:, :, :end]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(-1, D)
        x = x + torch.addmm(blk.attn.c_proj.bias, a, blk.attn.c_proj.weight).view(B, T, D)
        h = F.layer_norm(x, (D,), blk.ln_2.weight, blk.ln_2.bias, self.eps).reshape(-1, D)
        h = F.gelu(torch.addmm(blk.mlp.c_fc.bias, h, blk.mlp.c_fc.weight), approximate="tanh")
        return x + torch.addmm(blk.mlp.c_proj.bias, h, blk.mlp.c_proj.weight).view(B, T, D)

    def _run(self, ids: Tensor, positions: Tensor, mask: Tensor, start: int, keep_from: int = -1) -> Tensor:
        """Logits (or hidden states) of positions ``keep_from`` onward (default: the last), ``[B, V]`` or
        ``[B, T', V]``."""
        x = self.wte[ids] + self.wpe[positions]
        for i in range(len(self.blocks)):
            x = self._block(i, x, mask, start)
        out = x[:, -1] if keep_from == -1 else x[:, keep_from:]
        out = F.layer_norm(out, (x.shape[-1],), self.ln_f.weight, self.ln_f.bias, self.eps)
        return out if self.hidden_only else (out @ self.wte.T).float()

    @staticmethod
    def _padded_causal_mask(attn: Tensor) -> Tensor:
        """``[B, 1, P, P]``: causal and key-padding; a padding query sees only itself, so no row is
        fully masked (its output is never read)."""
        P = attn.shape[1]
        causal = torch.ones((P, P), dtype=torch.bool, device=attn.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=attn.device)
        return ((causal & attn.bool()[:, None, :]) | eye)[:, None]

    @torch.no_grad()
    def prefill(self, ids: Tensor, attn: Tensor, positions: Tensor, max_new: int, copies: int = 1) -> Tensor:
        """Run the prompts once, then give each ``copies`` rows of cache (row i -> rows i*copies..) to decode
        from; returns the last prompt position's logits, ``[B, V]`` (one row per prompt, not per copy)."""
        B, P = ids.shape
        L = P + max_new
        shape = (B, self.n_head, L, self.head_dim)
        dtype = self.wte.dtype
        self.k = [torch.zeros(shape, dtype=dtype, device=ids.device) for _ in self.blocks]
        self.v = [torch.zeros(shape, dtype=dtype, device=ids.device) for _ in self.blocks]
        self.keep = torch.zeros((B, L), dtype=torch.bool, device=ids.device)
        self.keep[:, :P] = attn.bool()
        self.length = P
        logits = self._run(ids, positions, self._padded_causal_mask(attn), 0)
        if copies > 1:
            self.k, self.v = ([c.repeat_interleave(copies, 0) for c in cache] for cache in (self.k, self.v))
            self.keep = self.keep.repeat_interleave(copies, 0)
        return logits

    @torch.no_grad()
    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        t = self.length
        self.keep[:, t] = True
        self.length = t + 1
        mask = self.keep[:, None, None, : t + 1]
        return self._run(tokens[:, None], positions, mask, t)

    def score(self, ids: Tensor, attn: Tensor, positions: Tensor, keep_from: int) -> Tensor:
        """Logits ``[B, T - keep_from, V]`` of a whole padded batch in one pass, no cache."""
        self.k = self.v = None
        return self._run(ids, positions, self._padded_causal_mask(attn), 0, keep_from)

"""Per-token log-probs of responses under a causal LM, and the one way rlxf batches and pads them.

Every scorer of token sequences (the policy, the pair and KTO trainers, reward models, the PPO
critic) lays out its batch with :func:`token_batch` and walks long inputs with :func:`chunks`.
Two layouts: ``"right"`` puts each prompt + response at the start of its row (positions are
plain 0..L-1), ``"flush"`` left-pads the prompts so every response starts in the same column,
as the sampler lays them out (position ids then count real tokens only). Either way a padded
row scores exactly as it would alone.

Pair scoring goes further: chosen and rejected of many pairs share packed rows, each pair's
prompt computed once, when the model honours that layout (:func:`pair_logps`).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.core.steps import Steps

Pair = tuple[list[int], list[int], list[int]]  # prompt_ids, chosen_ids, rejected_ids


# -- batching and padding -------------------------------------------------------------


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n)``."""
    return (slice(i, i + size) for i in range(0, n, size))


def pad_tokens(seqs: Sequence[list[int]], pad_id: int, left: bool = False, width: int = 0) -> tuple[Tensor, Tensor]:
    """Token rows padded with ``pad_id`` to a common width (at least ``width``): ids and the 0/1
    attention mask, both ``[len(seqs), width]`` long; ``left`` puts the padding first."""
    width = max([width, *map(len, seqs)])
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            cols = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, cols] = torch.tensor(s)
            attn[i, cols] = 1
    return ids, attn


def pad_rows(rows: list[Tensor], width: int) -> Tensor:
    """Right-pad 1-D tensors with zeros to ``width`` and stack them, ``[len(rows), width]``."""
    return torch.stack([F.pad(r, (0, width - r.shape[0])) for r in rows])


def unpadded(steps: Steps) -> list[Tensor]:
    """Each row's log-probs on its real steps (copies): the inverse of :func:`pad_rows`."""
    return [row[:n].clone() for row, n in zip(steps.logps, steps.lengths().long().tolist())]


@dataclass
class TokenBatch:
    """Prompt + response rows for one forward pass, and where to read the response's predictions.

    ``where[i, t]`` is the column whose output predicts response token t of row i; ``targets`` are
    the response tokens (``pad_id`` beyond each response) and ``mask`` marks the real ones, all
    ``[batch, longest response]``. ``positions`` is None in the right layout (0..L-1)."""

    ids: Tensor
    attn: Tensor
    positions: Tensor | None
    where: Tensor
    targets: Tensor
    mask: Tensor

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(None if t is None else t.to(device) for t in
                            (self.ids, self.attn, self.positions, self.where, self.targets, self.mask)))

    def pick(self, out: Tensor) -> Tensor:
        """The rows of a per-column output ``[batch, width, d]`` that predict response tokens, ``[batch, T, d]``."""
        return out.gather(1, self.where[..., None].expand(-1, -1, out.shape[-1]))

    def logps(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Log-softmax of picked logits ``[batch, T, vocab]`` and the targets' log-probs ``[batch, T]``."""
        logp_all = F.log_softmax(logits, -1)
        return logp_all, logp_all.gather(2, self.targets[..., None]).squeeze(-1)


def token_batch(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
                layout: str = "right") -> TokenBatch:
    """Lay out ``prompt + response`` rows in the ``"right"`` or ``"flush"`` layout (module docstring)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    targets, r_attn = pad_tokens(responses, pad_id, width=1)
    steps = torch.arange(targets.shape[1])
    if layout == "right":
        ids, attn = pad_tokens([p + r for p, r in zip(prompts, responses)], pad_id)
        where = (torch.tensor([len(p) - 1 for p in prompts])[:, None] + steps) * r_attn
        return TokenBatch(ids, attn, None, where, targets, r_attn.float())
    if layout == "flush":
        p_ids, p_attn = pad_tokens(prompts, pad_id, left=True)
        ids, attn = torch.cat([p_ids, targets], 1), torch.cat([p_attn, r_attn], 1)
        where = (p_ids.shape[1] - 1 + steps).expand(len(prompts), -1)
        return TokenBatch(ids, attn, (attn.cumsum(-1) - 1).clamp(min=0), where, targets, r_attn.float())
    raise ValueError(f"layout must be 'right' or 'flush', got {layout!r}")


# -- plain scoring ----------------------------------------------------------------------


def _head_is_plain(model) -> bool:
    """True when logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scaled = any(getattr(cfg, k, None) not in (None, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return not scaled and model.get_output_embeddings() is not None and hasattr(model, "base_model")


def response_logps(model, pad_id: int, prompts: list[list[int]], responses: list[list[int]],
                   full_vocab: bool = False) -> tuple[Steps, Tensor | None]:
    """Per-token log-probs of ``responses`` after ``prompts``, as :class:`Steps` ``[batch, max response]``.

    Rows are in the right layout, and the LM head is applied only at the positions that predict a
    response token. With ``full_vocab`` the log-softmax over the vocabulary at those positions is
    returned too, ``[batch, steps, vocab]``.
    """
    if any(not p for p in prompts):
        raise ValueError("response_logps: every prompt needs at least one token (e.g. a BOS token)")
    b = token_batch(prompts, responses, pad_id).to(next(model.parameters()).device)
    if _head_is_plain(model):
        hidden = model.base_model(input_ids=b.ids, attention_mask=b.attn, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(b.pick(hidden)).float()
    else:
        logits = b.pick(model(input_ids=b.ids, attention_mask=b.attn, use_cache=False).logits).float()
    logp_all, logps = b.logps(logits)
    return Steps(logps=logps, mask=b.mask), (logp_all if full_vocab else None)


def score_pairs(model, pad_id: int, rows: list[Pair], full_vocab: bool = False):
    """Chosen and rejected of ``rows`` in one plain forward pass: ``(chosen, rejected)`` Steps, and
    with ``full_vocab`` also their vocabulary log-probs ``(chosen, rejected)``."""
    prompts = [r[0] for r in rows]
    both, vocab = response_logps(model, pad_id, prompts + prompts, [r[1] for r in rows] + [r[2] for r in rows],
                                 full_vocab)
    n = len(rows)
    split = (both[:n], both[n:])
    return split if not full_vocab else (split, (vocab[:n], vocab[n:]))


# -- packed pair scoring ----------------------------------------------------------------


def _first_fit(lengths: list[int], width: int) -> list[list[int]]:
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        j = next((b for b in range(len(bins)) if room[b] >= lengths[i]), None)
        if j is None:
            bins.append([])
            room.append(width)
            j = len(bins) - 1
        bins[j].append(i)
        room[j] -= lengths[i]
    return bins


def _pack(rows: list[Pair], hidden_size: int = 768) -> tuple[list[list[int]], int]:
    """Place each pair's ``prompt + chosen + rejected`` segment in a row (first fit, longest first)
    and return the rows (pair indices in row order) and the row width. The width is picked among
    1-4 times the longest segment to minimise the estimated cost, rows x width x (1 + width /
    (12 hidden)): tokens through the dense layers plus attention, which grows with the width."""
    lengths = [len(p) + len(c) + len(r) for p, c, r in rows]
    best = None
    for width in {max(lengths) * k for k in (1, 2, 3, 4)}:
        bins = _first_fit(lengths, width)
        cost = len(bins) * width * (1 + width / (12 * hidden_size))
        if best is None or cost < best[0]:
            best = (cost, bins, width)
    return best[1], best[2]


def packed_pair_logps(model, pad_id: int, rows: list[Pair], full_vocab: bool = False):
    """Chosen and rejected log-probs of ``rows`` from one packed forward pass (as :func:`score_pairs`:
    with ``full_vocab`` also their vocabulary log-probs ``[pairs, steps, vocab]``).

    Each pair is one segment ``prompt, chosen, rejected`` with position ids restarting after the
    prompt for each response; a block mask lets every token see the earlier tokens of its own
    prompt and response only (rejected never sees chosen, segments never see each other). So
    the prompt is computed once per pair and short pairs share a row: fewer tokens than
    scoring chosen and rejected as separate padded sequences, with the same log-probs.
    """
    bins, width = _pack(rows, model.get_output_embeddings().in_features)
    n_rows = len(bins)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    seg = torch.full((n_rows, width), -1, dtype=torch.long)
    branch = torch.zeros((n_rows, width), dtype=torch.long)
    sizes = (max(1, max(len(r[1]) for r in rows)), max(1, max(len(r[2]) for r in rows)))
    where = [torch.zeros((len(rows), k), dtype=torch.long) for k in sizes]  # flat index predicting token t
    targets = [torch.zeros((len(rows), k), dtype=torch.long) for k in sizes]
    masks = [torch.zeros((len(rows), k)) for k in sizes]
    for b, members in enumerate(bins):
        at = b * width  # flat index of the next free slot
        for i in members:
            p, c, r = rows[i]
            last_prompt = at + len(p) - 1
            for toks, start, kind in ((p, 0, 0), (c, len(p), 1), (r, len(p), 2)):
                k, col = len(toks), at - b * width
                ids[b, col : col + k] = torch.tensor(toks, dtype=torch.long)
                pos[b, col : col + k] = torch.arange(start, start + k)
                seg[b, col : col + k], branch[b, col : col + k] = i, kind
                if kind and k:
                    where[kind - 1][i, :k] = torch.cat([torch.tensor([last_prompt]), torch.arange(at, at + k - 1)])
                    targets[kind - 1][i, :k] = torch.tensor(toks, dtype=torch.long)
                    masks[kind - 1][i, :k] = 1.0
                at += k
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    attn = (same & causal & visible) | torch.eye(width, dtype=torch.bool)  # padding sees itself, never empty
    device = next(model.parameters()).device
    hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn[:, None].to(device),
                              position_ids=pos.to(device), use_cache=False).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    out, vocab = [], []
    for w, t, m in zip(where, targets, masks):
        logp_all = F.log_softmax(model.get_output_embeddings()(flat[w.to(device)]).float(), -1)
        out.append(Steps(logps=logp_all.gather(2, t.to(device)[..., None]).squeeze(-1), mask=m.to(device)))
        vocab.append(logp_all)
    return (out[0], out[1]) if not full_vocab else ((out[0], out[1]), (vocab[0], vocab[1]))


_PACKING_OK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def packing_works(model, pad_id: int) -> bool:
    """Whether ``model`` honours the packed layout (a plain LM head and custom 4-D attention masks):
    checked once per model against the unpacked scoring of two small pairs."""
    if model not in _PACKING_OK:
        ok = _head_is_plain(model)
        if ok:
            rows = [([4, 5], [6, 7, 8], [9]), ([5], [4], [7, 6])]
            vocab = model.get_output_embeddings().out_features
            rows = [tuple([t % vocab for t in part] for part in row) for row in rows]
            with torch.no_grad():
                try:
                    packed, plain = packed_pair_logps(model, pad_id, rows), score_pairs(model, pad_id, rows)
                    ok = all(torch.allclose(a.masked(), b.masked()[:, : a.num_steps], atol=1e-4)
                             for a, b in zip(packed, plain))
                except Exception:  # any model that rejects the layout falls back to plain batches
                    ok = False
        _PACKING_OK[model] = ok
    return _PACKING_OK[model]


def pair_logps(model, pad_id: int, rows: list[Pair], full_vocab: bool = False):
    """``(chosen, rejected)`` log-probs of ``rows`` (and with ``full_vocab`` their vocabulary log-probs,
    as :func:`score_pairs`): packed when the model supports it, else plain."""
    if packing_works(model, pad_id):
        return packed_pair_logps(model, pad_id, rows, full_vocab)
    return score_pairs(model, pad_id, rows, full_vocab)


def logits_chunk_size(model, widest: int, batch_size: int, logits_budget: int = 2**28) -> int:
    """How many rows to score at once so their float32 response logits (``widest`` tokens a row, the
    model's whole vocabulary) stay within about ``logits_budget`` bytes; at most ``batch_size``."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1)
    return max(1, min(batch_size, logits_budget // (4 * vocab * max(1, widest))))


@torch.no_grad()
def reference_logps(model, pad_id: int, pairs: list[Pair], batch_size: int = 256, quiet: bool = True,
                    logits_budget: int = 2**28) -> tuple[list, list]:
    """Per-token log-probs of every chosen and rejected response (lists of unpadded tensors), scored
    once before training so that each step needs no reference forward pass. Chunks hold at most
    ``batch_size`` pairs and about ``logits_budget`` bytes of response logits (a 49k-token vocabulary
    fills memory fast), with a progress bar unless ``quiet``."""
    from tqdm.auto import tqdm

    size = logits_chunk_size(model, max((len(c) + len(r) for _p, c, r in pairs), default=1), batch_size,
                             logits_budget)
    out_w, out_l = [], []
    for part in tqdm(chunks(len(pairs), size), total=-(-len(pairs) // size), desc="reference log-probs",
                     disable=quiet, leave=False, dynamic_ncols=True):
        chosen, rejected = pair_logps(model, pad_id, pairs[part])
        out_w += unpadded(chosen)
        out_l += unpadded(rejected)
    return out_w, out_l


# -- fast kernels ---------------------------------------------------------------------


@contextlib.contextmanager
def fused_activations(model, enabled: bool = True) -> Iterator[None]:
    """Swap Hugging Face's Python-level tanh-GELU (``gelu_new``) for PyTorch's fused kernel of the
    same formula while training, and put the original modules back afterwards (also on error)."""
    from transformers.activations import NewGELUActivation

    swapped = []
    for module in model.modules() if enabled else ():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                swapped.append((module, name, child))
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)

"""Offline preference training: any pair loss from ``rlxf.objectives`` on fixed comparisons.

By default the reference's log-probs are computed once before training, which halves the
forward passes per step; ``precompute_ref=False`` scores each batch under the frozen
reference instead. Chosen and rejected go through the model in one forward pass, laid out
like a single-sequence batch (prompt and response contiguous, right-padded), and the LM
head runs only where a response token is predicted. Each micro-batch returns its share of
the global-batch mean, so gradient accumulation is exact.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from rlxf.algorithms.batching import epoch_batches
from rlxf.algorithms.loop import OptimConfig, train
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.objectives.preference import dpo_margin
from rlxf.policies.language import LanguagePolicy

Pair = tuple[list[int], list[int], list[int]]  # prompt_ids, chosen_ids, rejected_ids


# -- scoring ------------------------------------------------------------------------


def _head_is_plain(model) -> bool:
    """True when logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scaled = any(getattr(cfg, k, None) not in (None, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return not scaled and model.get_output_embeddings() is not None and hasattr(model, "base_model")


def response_logps(model, pad_id: int, prompts: list[list[int]], responses: list[list[int]],
                   full_vocab: bool = False) -> tuple[Steps, torch.Tensor | None]:
    """Per-token log-probs of ``responses`` after ``prompts``, as :class:`Steps` ``[batch, max response]``.

    Rows are ``prompt + response`` right-padded (so positions are plain 0..L-1), and the LM head
    is applied only at the positions that predict a response token. With ``full_vocab`` the
    log-softmax over the vocabulary at those positions is returned too, ``[batch, steps, vocab]``.
    """
    if any(not p for p in prompts):
        raise ValueError("response_logps: every prompt needs at least one token (e.g. a BOS token)")
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width, steps = max(lengths), max(1, max(len(r) for r in responses))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    where = torch.zeros((len(prompts), steps), dtype=torch.long)  # position predicting response token t
    mask = torch.zeros((len(prompts), steps))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : lengths[i]] = torch.tensor(p + r)
        where[i, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        mask[i, : len(r)] = 1.0
    targets = ids.gather(1, (where + 1).clamp(max=width - 1)) * mask.long()
    attn = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids, attn, where, targets, mask = (t.to(device) for t in (ids, attn, where, targets, mask))
    if _head_is_plain(model):
        hidden = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        picked = hidden.gather(1, where[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = model.get_output_embeddings()(picked).float()
    else:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        logits = logits.gather(1, where[..., None].expand(-1, -1, logits.shape[-1])).float()
    logp_all = F.log_softmax(logits, -1)
    logps = logp_all.gather(2, targets[..., None]).squeeze(-1)
    return Steps(logps=logps, mask=mask), (logp_all if full_vocab else None)


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


def packed_pair_logps(model, pad_id: int, rows: list[Pair]) -> tuple[Steps, Steps]:
    """Chosen and rejected log-probs of ``rows`` from one packed forward pass.

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
    out = []
    for w, t, m in zip(where, targets, masks):
        logits = model.get_output_embeddings()(flat[w.to(device)]).float()
        logps = F.log_softmax(logits, -1).gather(2, t.to(device)[..., None]).squeeze(-1)
        out.append(Steps(logps=logps, mask=m.to(device)))
    return out[0], out[1]


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
                    packed, plain = packed_pair_logps(model, pad_id, rows), _score_pairs(model, pad_id, rows)
                    ok = all(torch.allclose(a.masked(), b.masked()[:, : a.num_steps], atol=1e-4)
                             for a, b in zip(packed, plain))
                except Exception:  # any model that rejects the layout falls back to plain batches
                    ok = False
        _PACKING_OK[model] = ok
    return _PACKING_OK[model]


def pair_logps(model, pad_id: int, rows: list[Pair]) -> tuple[Steps, Steps]:
    """``(chosen, rejected)`` log-probs of ``rows``: packed when the model supports it, else plain."""
    if packing_works(model, pad_id):
        return packed_pair_logps(model, pad_id, rows)
    return _score_pairs(model, pad_id, rows)


def _score_pairs(model, pad_id: int, rows: list[Pair], full_vocab: bool = False):
    """Chosen and rejected of ``rows`` in one forward pass: ``(chosen, rejected)`` Steps (+ vocab log-probs)."""
    prompts = [r[0] for r in rows]
    both, vocab = response_logps(model, pad_id, prompts + prompts, [r[1] for r in rows] + [r[2] for r in rows],
                                 full_vocab)
    n = len(rows)
    split = (both[:n], both[n:])
    return split if not full_vocab else (split, (vocab[:n], vocab[n:]))


@torch.no_grad()
def reference_logps(ref: LanguagePolicy, pairs: list[Pair], batch_size: int = 256) -> tuple[list, list]:
    """Per-token reference log-probs of every chosen and rejected response (lists of tensors)."""
    out_w, out_l = [], []
    for i in range(0, len(pairs), batch_size):
        rows = pairs[i : i + batch_size]
        chosen, rejected = pair_logps(ref.model, ref.tokenizer.pad_token_id, rows)
        out_w += [chosen.logps[k, : len(r[1])].clone() for k, r in enumerate(rows)]
        out_l += [rejected.logps[k, : len(r[2])].clone() for k, r in enumerate(rows)]
    return out_w, out_l


def pad_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Right-pad 1-D tensors with zeros to ``width`` and stack them, ``[len(rows), width]``."""
    return torch.stack([F.pad(r, (0, width - r.shape[0])) for r in rows])


# -- fast kernels ---------------------------------------------------------------------


@contextlib.contextmanager
def fused_activations(model) -> Iterator[None]:
    """Swap Hugging Face's Python-level tanh-GELU (``gelu_new``) for PyTorch's fused kernel of the
    same formula while training, and put the original modules back afterwards (also on error)."""
    from transformers.activations import NewGELUActivation

    swapped = []
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                swapped.append((module, name, child))
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


# -- evaluation -------------------------------------------------------------------------


@torch.no_grad()
def evaluate_pairs(policy: LanguagePolicy, ref: LanguagePolicy, pairs: list[Pair], beta: float,
                   batch_size: int = 128) -> dict:
    """Held-out pair metrics: implicit-reward accuracy and margin (TRL's conventions), chosen and
    rejected log-probs, and the exact KL(pi || pi_ref) summed over the response positions (the
    per-position KL over the whole vocabulary), averaged over chosen and rejected responses."""
    was_training = policy.model.training
    policy.model.eval()
    totals = dict.fromkeys(("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "kl"), 0.0)
    pad = policy.tokenizer.pad_token_id
    for i in range(0, len(pairs), batch_size):
        rows = pairs[i : i + batch_size]
        (chosen, rejected), (pv_w, pv_l) = _score_pairs(policy.model, pad, rows, full_vocab=True)
        (ref_w, ref_l), (rv_w, rv_l) = _score_pairs(ref.model, pad, rows, full_vocab=True)
        chosen, rejected = chosen.replace(ref_logps=ref_w.logps), rejected.replace(ref_logps=ref_l.logps)
        margin = dpo_margin(chosen, rejected)
        totals["reward_accuracy"] += float((margin > 0).float().sum())
        totals["reward_margin"] += float((beta * margin).sum())
        totals["logps_chosen"] += float(chosen.sum().sum())
        totals["logps_rejected"] += float(rejected.sum().sum())
        for steps, pv, rv in ((chosen, pv_w, rv_w), (rejected, pv_l, rv_l)):
            kl_t = (pv.exp() * (pv - rv)).sum(-1)
            totals["kl"] += float(steps.sum(kl_t).sum()) / 2
    if was_training:
        policy.model.train()
    return {k: v / len(pairs) for k, v in totals.items()}


# -- training ---------------------------------------------------------------------------


def train_pairs(run: Run, stage: str, policy: LanguagePolicy, ref: LanguagePolicy, pairs: list[Pair],
                loss: Callable[..., torch.Tensor], loss_kwargs: dict, cfg: OptimConfig, seed: int,
                quiet: bool = False, precompute_ref: bool = True, eval_pairs: list[Pair] | None = None,
                fast_kernels: bool = True) -> dict:
    """Minimise ``loss(chosen, rejected, **loss_kwargs)`` averaged over each global batch.

    ``precompute_ref``: score the reference once up front (default) or on every batch.
    ``eval_pairs``: held-out pairs measured before and after training (stage ``<stage>_eval``,
    steps 0 and ``cfg.steps``); the final measurements are returned. ``fast_kernels`` swaps in
    fused activation kernels of identical formula while training.
    """
    if not pairs:
        raise ValueError(f"{stage}: there are no preference pairs to train on")
    beta = loss_kwargs.get("beta", 1.0)
    evals = {r["step"] for r in run.metrics(f"{stage}_eval")}
    if eval_pairs and 0 not in evals:
        run.log(f"{stage}_eval", 0, **evaluate_pairs(policy, ref, eval_pairs, beta))
    pad = policy.tokenizer.pad_token_id
    ref_w, ref_l = reference_logps(ref, pairs) if precompute_ref else (None, None)
    make_batch = epoch_batches(len(pairs), cfg.batch_size, seed)
    global_tokens = "tokens_per_example" in inspect.signature(loss).parameters

    def loss_fn(micro: list[int], batch: list[int]):
        rows = [pairs[i] for i in micro]
        chosen, rejected = pair_logps(policy.model, pad, rows)
        if precompute_ref:
            ref_c = pad_rows([ref_w[i] for i in micro], chosen.num_steps)
            ref_r = pad_rows([ref_l[i] for i in micro], rejected.num_steps)
        else:
            with torch.no_grad():
                ref_c, ref_r = (s.logps for s in pair_logps(ref.model, pad, rows))
        chosen, rejected = chosen.replace(ref_logps=ref_c), rejected.replace(ref_logps=ref_r)
        kwargs = dict(loss_kwargs)
        if global_tokens:
            kwargs["tokens_per_example"] = sum(len(pairs[i][1]) for i in batch) / len(batch)
        per_pair = loss(chosen, rejected, **kwargs)
        value = per_pair.sum() / len(batch)
        with torch.no_grad():
            margin = dpo_margin(chosen, rejected)
            metrics = {
                "loss": value.item(),
                "reward_accuracy": (margin > 0).float().sum().item() / len(batch),
                "reward_margin": (beta * margin).sum().item() / len(batch),
                "logps_chosen": chosen.sum().sum().item() / len(batch),
                "logps_rejected": rejected.sum().sum().item() / len(batch),
            }
        return value, metrics

    with fused_activations(policy.model) if fast_kernels else contextlib.nullcontext():
        train(run, stage, policy.model, cfg, make_batch, loss_fn, quiet=quiet)
    if not eval_pairs:
        return {}
    if cfg.steps not in evals:
        run.log(f"{stage}_eval", cfg.steps, **evaluate_pairs(policy, ref, eval_pairs, beta))
    final = [r for r in run.metrics(f"{stage}_eval") if r["step"] == cfg.steps][-1]
    return {k: v for k, v in final.items() if k not in ("stage", "step")}

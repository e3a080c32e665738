"""Tiny Hugging Face models and tokenizers built in-process, for tests and the quickstart.

Nothing is downloaded: the tokenizer is a word-level ``tokenizers`` model over a given
vocabulary, and the model is a freshly initialised GPT-2 or Llama of a few layers.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# A minimal chat template so conversational datasets can be rendered with tiny tokenizers.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_tokenizer(words: list[str], split: str = "whitespace") -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` plus pad/bos/eos/unk (ids 0..3).

    ``split="whitespace"``: tokens are whitespace-separated words, decoded with spaces.
    ``split="chars"``: every character is a token (give the alphabet as ``words``), decoded
    without spaces; newlines and spaces are ordinary tokens.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if split == "whitespace":
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    elif split == "chars":
        core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        core.decoder = decoders.Fuse()
    else:
        raise ValueError(f"split must be 'whitespace' or 'chars', got {split!r}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(kind: str, tokenizer, n_layer: int, n_embd: int, n_head: int, max_positions: int, num_labels=None):
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    extra = {} if num_labels is None else {"num_labels": num_labels}
    if kind == "gpt2":
        return GPT2Config(vocab_size=len(tokenizer), n_positions=max_positions, n_embd=n_embd, n_layer=n_layer,
                          n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids, **extra)
    if kind == "llama":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=n_embd, intermediate_size=4 * n_embd,
                           num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head,
                           max_position_embeddings=max_positions, tie_word_embeddings=True, **ids, **extra)
    raise ValueError(f"model kind must be 'gpt2' or 'llama', got {kind!r}")


_CAUSAL = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}
_SCORER = {"gpt2": GPT2ForSequenceClassification, "llama": LlamaForSequenceClassification}


def tiny_causal_lm(tokenizer, kind: str = "gpt2", n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                   max_positions: int = 64, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised small causal LM sized to ``tokenizer``'s vocabulary."""
    cfg = _config(kind, tokenizer, n_layer, n_embd, n_head, max_positions)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _CAUSAL[kind](cfg)
    return model.float()


def tiny_scorer(tokenizer, kind: str = "gpt2", n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                max_positions: int = 64, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised small sequence-classification model with one scalar output."""
    cfg = _config(kind, tokenizer, n_layer, n_embd, n_head, max_positions, num_labels=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _SCORER[kind](cfg)
    return model.float()

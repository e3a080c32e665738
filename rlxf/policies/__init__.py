"""Policies: language models wrapped for sampling and scoring, control policies, a tiny model factory."""

from transformers.utils import logging as _hf_logging

# rlxf shows its own progress; the library's per-load bars and notices would drown it.
_hf_logging.disable_progress_bar()
_hf_logging.set_verbosity_error()

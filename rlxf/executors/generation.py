"""Generation backends: the engine a rollout worker samples with.

A backend loads the weights of a policy version and generates responses. Its per-token
log-probs are exact (``exact_logprobs = True``) when they come from the same forward the learner
scores with; an engine with its own kernels (vLLM, or :class:`FakeEngine` in tests) returns
log-probs that differ slightly, so the online controller recomputes the behaviour log-probs with
the learner's policy before any importance ratio is taken.
"""

from __future__ import annotations

import torch

from rlxf.policies.language import LanguagePolicy, Rollout


class GenerationBackend:
    """What a rollout worker needs from an engine. ``policy`` is the worker's own copy."""

    exact_logprobs = True
    in_place = True  # samples with the very policy object it holds: in the driver it needs no weight copies
    needs_gpu = False  # a Ray rollout actor of this backend reserves a GPU (otherwise it samples on its CPUs)

    def __init__(self, policy: LanguagePolicy):
        self.policy = policy

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Take the learner's state dict for a new version."""
        self.policy.model.load_state_dict(state)

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> Rollout:
        """``n`` responses per prompt (grouped by prompt) with finished flags and the engine's log-probs."""
        raise NotImplementedError


class HFBackend(GenerationBackend):
    """The policy's own sampler (:meth:`LanguagePolicy.sample`): exact log-probs."""

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, seed) -> Rollout:
        gen = torch.Generator().manual_seed(seed)
        return self.policy.sample(prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, generator=gen)


class FakeEngine(HFBackend):
    """An in-process stand-in for an external engine, for tests: samples with the plain Hugging Face
    forward (no fast decoder, no shared prefill) and reports log-probs off by up to ``noise`` nats,
    as an engine with other kernels or lower precision would."""

    exact_logprobs = False

    def __init__(self, policy: LanguagePolicy, noise: float = 0.05):
        super().__init__(policy)
        self.noise = noise

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, seed) -> Rollout:
        fast, shared = self.policy.fast_decode, self.policy.share_prefill
        self.policy.fast_decode = self.policy.share_prefill = False
        try:
            ro = super().generate(prompt_ids, n, max_new_tokens, temperature, top_p, seed)
        finally:
            self.policy.fast_decode, self.policy.share_prefill = fast, shared
        gen = torch.Generator().manual_seed(seed + 1)
        jitter = (torch.rand(ro.steps.logps.shape, generator=gen) * 2 - 1) * self.noise
        return Rollout(ro.prompt_ids, ro.response_ids, ro.finished,
                       ro.steps.replace(logps=(ro.steps.logps + jitter) * ro.steps.mask))


class VLLMBackend(GenerationBackend):
    """vLLM on a GPU (``pip install 'rlxf[vllm]'``). Untested here: vLLM does not install on the
    machines this library is developed on. Weights go in through the engine's ``load_weights``;
    vLLM's log-probs come from its own kernels, so they are recomputed by the learner."""

    exact_logprobs = False
    in_place = False
    needs_gpu = True

    def __init__(self, policy: LanguagePolicy, gpu_memory_utilization: float = 0.5):
        super().__init__(policy)
        try:
            import vllm
        except ImportError:
            raise ImportError("run.backend = \"vllm\" needs vLLM on a CUDA machine: pip install 'rlxf[vllm]'") from None
        import tempfile

        self._vllm = vllm
        self._dir = tempfile.mkdtemp(prefix="rlxf-vllm-")
        policy.save_pretrained(self._dir)  # vLLM builds its model from a directory
        self.llm = vllm.LLM(model=self._dir, gpu_memory_utilization=gpu_memory_utilization, dtype="float32")

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        super().load_weights(state)
        self._model().load_weights(weights=list(state.items()))

    def _model(self):
        """The engine's model module, where this process can reach it (vLLM has moved it between versions)."""
        for path in ("model_executor.driver_worker.model_runner.model",
                     "model_executor.driver_worker.worker.model_runner.model"):
            obj = self.llm.llm_engine
            try:
                for name in path.split("."):
                    obj = getattr(obj, name)
                return obj
            except AttributeError:
                continue
        raise RuntimeError("this vLLM version keeps its model in another process, so weights cannot be loaded "
                           "in place; set VLLM_ENABLE_V1_MULTIPROCESSING=0 before the rollout actors start")

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, seed) -> Rollout:
        from rlxf.core.steps import Steps

        params = self._vllm.SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                           seed=seed, logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        eos = self.policy.tokenizer.eos_token_id
        responses, logps = [], []
        for out in outs:
            for c in out.outputs:
                responses.append(list(c.token_ids))
                logps.append([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
        width = max(1, max(len(r) for r in responses))
        lp = torch.zeros(len(responses), width)
        mask = torch.zeros(len(responses), width)
        for i, row in enumerate(logps):
            lp[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1.0
        return Rollout([p for p in prompt_ids for _ in range(n)], responses,
                       [bool(r) and r[-1] == eos for r in responses], Steps(logps=lp, mask=mask))


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend, "fake": FakeEngine}


def backend_class(name: str) -> type[GenerationBackend]:
    if name not in BACKENDS:
        raise ValueError(f"run.backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]

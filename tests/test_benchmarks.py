"""The performance benchmarks (benchmarks/train_step.py, profile_step.py, codec_rtf.py) run for
every stage on tiny configs and report positive, finite figures.

Compiling a train step is what these tests cost; the configs are cut to the fewest layers.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import codec_rtf, profile_step, train_step
from f3_jax.stages.flow.config import defaults as flow_defaults
from f3_jax.stages.representation.config import defaults as representation_defaults
from tests.ae_fixtures import tiny_ae_config
from tests.llm_fixtures import random_params, tiny_config, write_hf_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTED = (
    "step_s",
    "first_step_s",
    "audio_s_per_s_per_device",
    "flops_per_step",
    "achieved_gflops_per_device",
    "peak_memory_gib",
    "params_m",
)


def tiny_ae(**overrides):
    """The tests' tiny autoencoder cut further: two blocks of one residual unit, one scale per
    loss, one discriminator of each kind."""
    base = {
        "model.channel_mults": (1, 2, 2),
        "model.strides": (2, 2),
        "model.hop": 4,
        "model.dilations": (1,),
        "data.crop_seconds": 0.05,
        "loss.mel_window_sizes": (64,),
        "loss.mel_bins": (8,),
        "loss.stft_fft_sizes": (64,),
        "discriminator.mpd_periods": (2,),
        "discriminator.stft_fft_sizes": (64,),
        "discriminator.stft_bands": ((0.0, 1.0),),
        "train.batch_size": 2,
        "data.eval_batch_size": 2,
    }
    return tiny_ae_config(**(base | overrides))


def tiny_repr(llm_dir: str):
    c = representation_defaults()
    c.sample_rate = 8000
    c.autoencoder.workdir = "/replaced/by/a/random/export"
    c.llm.path = llm_dir
    c.llm.instruction = " the"
    c.llm.max_text_tokens = 8
    c.encoder.width = 16
    c.encoder.depth = 1
    c.encoder.num_heads = 2
    c.encoder.num_kv_heads = 2
    c.encoder.head_dim = 8
    c.encoder.mlp_dim = 32
    c.quantizer.codebook_size = 16
    c.quantizer.num_codebooks = 1
    c.quantizer.code_dim = 4
    c.rq_mtp.horizons = 1
    c.adapter.width = 16
    c.adapter.hidden = 16
    c.data.crop_seconds = 0.05  # 100 latent frames, 25 LLM positions
    c.data.eval_batch_size = 2
    c.train.batch_size = 2
    c.mesh.data = 1
    return c


def tiny_flow(llm_dir: str):
    c = flow_defaults()
    c.sample_rate = 8000
    c.autoencoder.workdir = c.representation.workdir = "/replaced/by/a/random/export"
    c.llm.path = llm_dir
    c.llm.instruction = " the"
    c.llm.max_text_tokens = 8
    c.flow_head.width = 16
    c.flow_head.depth = 1
    c.flow_head.time_embed_dim = 8
    c.flow_head.stop_hidden = 0
    c.data.crop_seconds = 0.05
    c.data.eval_batch_size = 2
    c.train.batch_size = 2
    c.mesh.data = 1
    return c


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    config = tiny_config(num_layers=1)
    return write_hf_dir(str(tmp_path_factory.mktemp("llm")), config, random_params(config))


def _check(figures, stage):
    assert figures["stage"] == stage
    for key in REPORTED:
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    assert figures["mfu"] is None  # CPU: no peak in the table
    assert figures["step_min_s"] <= figures["step_s"] <= figures["step_max_s"]
    text = train_step.report(figures)
    for label in ("step time", "compile", "audio-s/s/device", "FLOPs/step", "MFU", "peak memory"):
        assert label in text
    assert figures["temp_gib"] > 0 and figures["argument_gib"] > 0
    assert "compiled step     temporaries" in text


def test_compiled_memory_counts_the_step_buffers():
    """Temporaries grow with what the step keeps alive; arguments are the inputs' bytes."""

    class Stepper:
        def __init__(self, n):
            self.n = n

        def lower_train_step(self, batch, step):
            def loss(w, x):
                for _ in range(self.n):  # n activations kept for the backward pass
                    x = jnp.tanh(x @ w)
                return jnp.sum(x)

            return jax.jit(jax.grad(loss)).lower(batch["w"], batch["x"])

    batch = {"w": jnp.ones((256, 256)), "x": jnp.ones((512, 256))}
    small = train_step.compiled_memory(Stepper(1), batch, 0)
    large = train_step.compiled_memory(Stepper(8), batch, 0)
    assert small["argument_gib"] == pytest.approx((256 + 512) * 256 * 4 / 2**30)
    assert large["temp_gib"] > small["temp_gib"] > 0


# ---- train_step.py --------------------------------------------------------------------
def test_device_peaks_match_by_longest_prefix():
    kind = lambda k: types.SimpleNamespace(device_kind=k)
    assert train_step.device_peak(kind("NVIDIA H100 80GB HBM3")) == 989e12
    assert train_step.device_peak(kind("TPU v5 lite")) == 197e12
    assert train_step.device_peak(kind("TPU v5p")) == 459e12
    assert train_step.device_peak(kind("TPU v4")) == 275e12
    assert train_step.device_peak(kind("cpu")) is None


def test_sibling_configs_exist():
    configs = os.path.join(ROOT, "configs")
    for size in ("demo", "24k"):
        for stage, frozen in (("repr", "ae"), ("flow", "ae"), ("flow", "repr")):
            path = train_step.sibling_config(os.path.join(configs, f"{stage}_{size}.py"), frozen)
            assert path == os.path.join(configs, f"{frozen}_{size}.py")
    with pytest.raises(FileNotFoundError, match="--ae_config"):
        train_step.sibling_config(os.path.join(configs, "nothing_here.py"), "ae")


def test_synthetic_batch_is_the_pipeline_format():
    c = tiny_ae()
    local = train_step.synthetic_local_batch(c)
    assert set(local) == {"audio", "mask", "text", "id", "num_skipped"}
    assert local["audio"].shape == (2, round(c.data.crop_seconds * c.sample_rate))
    assert all(str(t).strip() for t in local["text"])


@pytest.mark.slow  # minutes of XLA:CPU compile on 2 cores
def test_train_step_stage1_generator_only(tmp_path):
    figures = train_step.run(tiny_ae(), steps=1, num_devices=1, adversarial=False)
    _check(figures, "autoencoder")
    assert not figures["adversarial"]
    path = os.path.join(tmp_path, "out", "ae.json")
    train_step.write_json(path, figures)
    with open(path) as f:
        assert json.load(f)["step_s"] == figures["step_s"]


@pytest.mark.slow
def test_train_step_stage1_adversarial():
    """With the discriminators (about 160 s at load 5: two more networks to compile)."""
    figures = train_step.run(tiny_ae(), steps=1, num_devices=1)
    _check(figures, "autoencoder")
    assert figures["adversarial"]


@pytest.mark.slow  # minutes of XLA:CPU compile on 2 cores
def test_train_step_stage2_random_frozen(llm_dir):
    figures = train_step.run(tiny_repr(llm_dir), steps=1, ae_config=tiny_ae(), num_devices=1)
    _check(figures, "representation")


@pytest.mark.slow  # minutes of XLA:CPU compile on 2 cores
def test_train_step_stage3_random_frozen_latents(llm_dir):
    """Stage 3 on batches of cached latents (the latent-cache variant of the step)."""
    figures = train_step.run(
        tiny_flow(llm_dir),
        steps=1,
        latents=True,
        ae_config=tiny_ae(),
        repr_config=tiny_repr(llm_dir),
        num_devices=1,
    )
    _check(figures, "flow")
    assert figures["latents"]


# ---- profile_step.py ------------------------------------------------------------------
def test_profile_summary_of_a_traced_gradient(tmp_path):
    """Trace events of a jitted gradient joined with its optimized HLO: forward and backward
    ops found, self times positive, shares summing to one."""

    @jax.jit
    def grad(w, x):
        return jax.grad(lambda w: jnp.sum(jnp.sin(jnp.tanh(x @ w) @ w.T)))(w)

    w, x = jnp.ones((128, 128)), jnp.ones((64, 128))
    hlo = grad.lower(w, x).compile().as_text()
    jax.block_until_ready(grad(w, x))
    trace = str(tmp_path / "trace")
    with jax.profiler.trace(trace, create_perfetto_trace=True):
        for _ in range(2):
            jax.block_until_ready(grad(w, x))
    events = profile_step.op_events(profile_step.trace_file(trace))
    assert events and all(e["self"] >= 0 for e in events)
    modules = {"jit_grad": profile_step.parse_hlo(hlo)}
    s = profile_step.summarize(events, modules, steps=2, wall_s=0.1, top=5)
    phases = {r["name"] for r in s["phase"]}
    assert {"forward", "backward"} <= phases
    assert s["op_ms_per_step"] > 0
    assert math.isclose(sum(r["share"] for r in s["module"]), 1.0, rel_tol=1e-6)
    assert len(s["op"]) <= 5
    assert "by phase" in profile_step.report(s)


def test_scope_of_strips_transforms_and_primitive():
    name = "jit(_step)/transpose(jvp(Autoencoder))/Autoencoder.decode/decoder/Block_1/conv"
    assert profile_step.scope_of(name) == "Autoencoder/Autoencoder.decode"
    assert profile_step.scope_of("jit(f)/transpose(jvp())/LLM/layers_12/mlp/dot") == "LLM/layers_*"
    assert profile_step.phase_of(name) == "backward"
    assert profile_step.scope_of("jit(f)/jvp()/tanh") == "(no scope)"
    assert profile_step.phase_of("jit(f)/jvp()/tanh") == "forward"
    assert profile_step.phase_of("jit(f)/add") == "other"


@pytest.mark.slow
def test_profile_step_cli_stage1(tmp_path):
    """The script end to end (XLA dump flags set before jax starts, trace, summary, JSON)."""
    config = tmp_path / "ae_tiny.py"
    config.write_text(
        "from tests.test_benchmarks import tiny_ae\n\n\ndef get_config():\n    return tiny_ae()\n"
    )
    out = tmp_path / "prof"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py")]
    cmd += [f"--config={config}", f"--out={out}", "--steps=1", f"--json={tmp_path / 's.json'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top ops by self time" in proc.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["op_ms_per_step"] > 0 and {r["name"] for r in s["phase"]} >= {"forward", "backward"}


# ---- codec_rtf.py ---------------------------------------------------------------------
def test_codec_rtf_tiny():
    tok = codec_rtf.random_tokenizer(tiny_ae(), batch_windows=4, chunk_frames=100)
    f = codec_rtf.run(tok, [1, 2], seconds=0.2, runs=1, modes=("tokenizer", "direct"))
    assert [(r["mode"], r["batch"]) for r in f["rows"]] == [
        ("tokenizer", 1),
        ("tokenizer", 2),
        ("direct", 1),
        ("direct", 2),
    ]
    for row in f["rows"]:
        assert row["latent_frames"] == round(0.2 * 8000 / 4)
        for part in ("encode", "decode", "encode_decode"):
            p = row[part]
            assert np.isfinite(p["audio_s_per_s"]) and p["audio_s_per_s"] > 0
            assert 0 < p["min_s"] <= p["median_s"] <= p["max_s"]
            assert math.isclose(p["rtf"] * p["audio_s_per_s"], 1.0, rel_tol=1e-9)
    assert "encode_decode" in codec_rtf.report("cpu", codec_rtf.describe(f), f["rows"])


# ---- loop_stalls.py -------------------------------------------------------------------
def test_loop_stalls_tiny_autoencoder():
    from benchmarks import loop_stalls

    f = loop_stalls.measure(tiny_ae(), repeats=1, num_devices=1)
    for key in ("checkpoint_sync_blocked_s", "checkpoint_async_blocked_s", "export_sync_s"):
        assert f[key] > 0, key
    # the asynchronous save returns before its files are written
    assert f["checkpoint_async_blocked_s"] <= f["checkpoint_async_total_s"]
    assert f["state_gib"] > 0
    assert "loop waits" in loop_stalls.report(f)


# ---- gpu_suite.sh ---------------------------------------------------------------------
def test_gpu_suite_script_is_valid_and_dry_runs(tmp_path):
    import shutil
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "gpu_suite.sh")
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", script], timeout=60).returncode == 0
    if shutil.which("shellcheck"):
        out = subprocess.run(["shellcheck", "--shell=bash", script], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), BATCH="8")
    out = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert list(lines) == ["codec", "repr", "flow", "ae"]
    assert "--random_llm" in lines["repr"] and "--config.train.batch_size=8" in lines["flow"]
    assert f"--json {tmp_path}/ae.json" in lines["ae"]


# ---- ablations.py ---------------------------------------------------------------------
def test_ablation_groups_name_real_config_fields():
    """Every --config.* override of every group exists in its config (a typo would only show
    after minutes of compiling)."""
    from benchmarks import ablations

    root = os.path.dirname(os.path.dirname(__file__))
    for name, group in ablations.GROUPS.items():
        config = train_step.load_config_file(os.path.join(root, group.config))
        flags_ = [*group.base, *(f for _, fs in group.variants for f in fs)]
        for flag in flags_:
            if flag.startswith("--config."):
                key, _, _ = flag[len("--config.") :].partition("=")
                node = config
                for part in key.split("."):
                    assert part in node, f"{name}: {flag}"
                    node = node[part]


def test_ablation_table_compares_with_the_first_variant():
    from benchmarks import ablations

    group = ablations.GROUPS["repr_remat"]
    base = {"step_s": 2.0, "compile_s": 10.0, "temp_gib": 0.4, "argument_gib": 0.5}
    base |= {"flops_per_step": 1e11, "achieved_gflops_per_device": 50.0, "mfu": None}
    base |= {"devices": 1, "device_kind": "cpu"}
    other = base | {"step_s": 3.0, "temp_gib": 0.1, "mfu": 0.5}
    text = ablations.table(group, [("a", base), ("b", other), ("c", {"error": ["boom"]})])
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    assert rows[1].startswith("| a | 2.00 (1.00x) | 10 | 0.400 (1.00x)")
    assert rows[2].startswith("| b | 3.00 (1.50x) | 10 | 0.100 (0.25x)") and "50.0 %" in rows[2]
    assert rows[3].startswith("| c | failed: boom")
    many = base | {"runs": 3, "step_s_min": 1.5, "step_s_max": 2.5, "load": [1.0, 2.5]}
    many |= {"timed_steps": 2}
    text = ablations.table(group, [("a", many), ("b", other)])
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    assert "min / median / max" in rows[0]
    assert rows[1].startswith("| a | 1.50 / **2.00** / 2.50 (1.00x) | 10 |")
    assert "; 3 run(s) of 2 timed steps per variant; load 1.0-2.5)" in text.splitlines()[0]
    caption = ablations.table(group, [("a", base)], ["--x=1"]).splitlines()[0]
    assert "--config.data.crop_seconds=4.0 --x=1; 1 x cpu)" in caption


def _figures(step_s: float, **more) -> dict:
    """train_step.py's JSON, cut to what the ablation tables read."""
    f = {"step_s": step_s, "compile_s": 10.0, "temp_gib": 0.4, "argument_gib": 0.5}
    f |= {"flops_per_step": 1e11, "achieved_gflops_per_device": 1e2 / step_s, "mfu": None}
    return f | {"devices": 1, "device_kind": "cpu", "timed_steps": 2} | more


def test_ablation_summary_of_runs_is_median_min_max_and_fails_with_any_run():
    from benchmarks import ablations

    runs = [_figures(s, load=[1.0, 2.0 + s]) for s in (3.0, 1.0, 2.0)]
    f = ablations.summarize(runs)
    assert (f["step_s_min"], f["step_s"], f["step_s_max"], f["runs"]) == (1.0, 2.0, 3.0, 3)
    assert f["achieved_gflops_per_device"] == pytest.approx(50.0) and f["load"] == [1.0, 5.0]
    assert ablations.summarize([*runs, {"error": ["killed"]}]) == {"error": ["killed"]}
    assert "error" in ablations.summarize([])


def test_ablation_render_fills_every_table_and_refuses_to_leave_a_placeholder():
    """A table that no measurement fills raises, naming its group; so does any other template
    call left in the text. Nothing of the shape `{name(` survives a rendering."""
    from benchmarks import ablations

    template = 'A\n\n{table("ae_remat")}\n\nB {table("flow_remat")} C\n'
    assert ablations.placeholders(template + '{table("ae_remat")}') == ["ae_remat", "flow_remat"]
    text = ablations.render(template, {"ae_remat": "| x |", "flow_remat": "| y |"})
    x, y = ablations.block("ae_remat", "| x |"), ablations.block("flow_remat", "| y |")
    assert text == f"A\n\n{x}\n\nB {y} C\n" and "\n\n| x |\n\n" in x
    # the rendered text is its own template: a new rendering replaces the tables, nothing else
    assert ablations.placeholders(text) == ["ae_remat", "flow_remat"]
    again = ablations.render(text, {"ae_remat": "| z |", "flow_remat": "| y |"})
    assert again == text.replace("| x |", "| z |")
    with pytest.raises(ValueError, match="without its end marker"):
        ablations.render(text.replace("<!-- end of ablations table ae_remat -->", ""), {})
    with pytest.raises(ablations.MissingMeasurements, match="'flow_remat'"):
        ablations.render(template, {"ae_remat": "| x |"})
    with pytest.raises(ablations.MissingMeasurements, match="'no_such_group'.*not a group"):
        ablations.render('{table("no_such_group")}', {})
    with pytest.raises(ValueError, match="line 2: .*figure"):
        ablations.render('{table("ae_remat")}\nsee {figure("loss")}', {"ae_remat": "| x |"})


def _ablations_cli(*args: str) -> subprocess.CompletedProcess:
    script = os.path.join(ROOT, "benchmarks", "ablations.py")
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_ablations_cli_renders_from_json_and_exits_nonzero_without_measurements(tmp_path):
    """--from_json renders a template from earlier runs' JSON; a group without measurements,
    or with a failed variant, exits non-zero naming it and writes nothing."""
    from benchmarks import ablations

    out, template, written = tmp_path / "runs", tmp_path / "t.md", tmp_path / "o.md"
    out.mkdir()
    template.write_text('# R\n\n{table("flow_remat")}\n')
    name, group = "flow_remat", ablations.GROUPS["flow_remat"]
    record = ablations.group_record(name, group)
    for i, variant in enumerate(record["variants"]):
        variant["runs"] = [_figures(1.0 + i), _figures(1.2 + i)]
    (out / f"{name}.json").write_text(json.dumps(record))
    args = ("--from_json", f"--out={out}", f"--template={template}", f"--write={written}")
    proc = _ablations_cli(*args)
    assert proc.returncode == 0, proc.stderr
    text = written.read_text()
    assert text.startswith("# R\n\n<!-- ablations table flow_remat:")
    assert "-->\n\nstage 3: rematerialization of the flow head" in text
    assert "| flow_head.remat=full | 2.00 / **2.10** / 2.20 (1.91x) |" in text
    assert not ablations.TEMPLATE_CALL.search(text)
    proc = _ablations_cli(*args[:2], f"--template={written}")  # rendered again, in place
    assert proc.returncode == 0, proc.stderr
    assert written.read_text() == text

    written.unlink()
    record["variants"][1]["runs"][1] = {"error": ["out of memory"]}
    (out / f"{name}.json").write_text(json.dumps(record))
    proc = _ablations_cli(*args)
    assert proc.returncode != 0 and "flow_head.remat=full" in proc.stderr
    assert not written.exists()

    template.write_text('{table("flow_remat")}\n{table("ae_remat")}\n')
    proc = _ablations_cli(*args)
    assert proc.returncode != 0 and "group 'ae_remat': no measurements" in proc.stderr
    assert not written.exists()

    record["variants"] = record["variants"][:1]  # measured before a variant was added
    (out / f"{name}.json").write_text(json.dumps(record))
    proc = _ablations_cli("--group=flow_remat", *args[:2])
    assert proc.returncode != 0 and "other variants" in proc.stderr


def test_markdown_has_no_unrendered_template_text():
    """No tracked Markdown file holds template text (`{name(`, the repository's pre-stop check)
    where a table or figure should be."""
    from benchmarks import ablations

    files = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "benchmarks/RESULTS.md" in files
    left = [
        f"{path}:{n}: {line}"
        for path in files
        for n, line in enumerate(open(os.path.join(ROOT, path)).read().splitlines(), 1)
        if ablations.TEMPLATE_CALL.search(line)
    ]
    assert not left, "unrendered template text:\n" + "\n".join(left)


def test_results_tables_are_the_committed_measurements():
    """RESULTS.md's ablation tables are those benchmarks/results/ablations/NAME.json renders, one
    per group measured: an edited figure or a re-measured group not rendered fails here."""
    from benchmarks import ablations

    out = os.path.join(ROOT, "benchmarks", "results", "ablations")
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md")) as f:
        text = f.read()
    names = ablations.placeholders(text)
    assert sorted(names) == sorted(p[: -len(".json")] for p in os.listdir(out))
    tables, failed = ablations.group_tables(names, out, from_json=True)
    assert not failed
    assert ablations.render(text, tables) == text


# ---- peer_codec.py --------------------------------------------------------------------
def test_peer_codec_tiny():
    """The side-by-side benchmark at a tiny size (needs the optional `.[peer]` extra)."""
    pytest.importorskip("torch", reason="torch absent: pip install -e '.[peer]'")
    if importlib.util.find_spec("dac") is None:
        pytest.skip("descript-audio-codec absent: pip install -e '.[peer]'")
    from benchmarks import peer_codec

    f = peer_codec.run("tiny", batch=2, seconds=0.2, clip_seconds=0.4, rounds=1, chunk_frames=50)
    assert set(f["rows"]) == {
        "f3/step",
        "dac/step",
        "f3/encode",
        "dac/encode",
        "f3/decode",
        "dac/decode",
        "f3/tokenizer_encode",
        "f3/tokenizer_decode",
    }
    for row in f["rows"].values():
        assert 0 < row["min"] <= row["median"] <= row["max"] and np.isfinite(row["max"])
    assert all(np.isfinite(v) and v > 0 for v in f["ratios"].values())
    assert 0.5 < f["params_m"]["f3"] / f["params_m"]["dac"] < 2  # the same size
    assert "ratio step: dac / f3" in peer_codec.report(f)


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run's command is the README's "Install and run the tests" line, character for
    character: what CI proves is what a user runs."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_command = f.read().strip().splitlines()[-1]
    section = readme.split("Install and run the tests", 1)[1].split("```bash\n", 1)[1]
    assert section.split("\n", 1)[0] == ci_command

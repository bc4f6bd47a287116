"""Workdirs on object storage, tested against a fake gs:// bucket (no network here).

`fake_gcs` plugs an in-memory object store into etils.epath's fsspec backend, the backend a
real gs:// path uses when TensorFlow is not installed (gcsfs behind it). The fake keeps the
object-store rules that matter: no append, no directories (a prefix exists while an object is
under it), an object appears only when its upload completes, listings return "bucket/key"
names without the scheme (as gcsfs does). Orbax's own gs:// I/O (tensorstore) and real GCS
(credentials, latency, eventual listing) are not covered: see README, "Workdirs on Cloud
Storage".
"""

from __future__ import annotations

import json
import os
import struct
import threading

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from f3_jax import exports, storage
from f3_jax.summary import SummaryWriter


class FakeObjectStore(AbstractFileSystem):
    """gs:// objects in a dict: {"bucket/key": bytes}."""

    protocol = ("gs", "gcs")
    root_marker = ""
    cachable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.objects: dict[str, bytes] = {}
        self.published: list[str] = []  # object names in the order their uploads completed
        self.read_only = False

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.rstrip("/")

    def _entry(self, name: str) -> dict:
        if name in self.objects:
            return {"name": name, "type": "file", "size": len(self.objects[name])}
        return {"name": name, "type": "directory", "size": 0}

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        if path in self.objects:
            entries = [self._entry(path)]
        else:
            prefix = f"{path}/" if path else ""
            names = {
                prefix + n[len(prefix) :].split("/")[0]
                for n in self.objects
                if n.startswith(prefix)
            }
            if not names:
                raise FileNotFoundError(path)
            entries = [self._entry(n) for n in sorted(names)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if path in self.objects or any(n.startswith(f"{path}/") for n in self.objects):
            return self._entry(path)
        raise FileNotFoundError(path)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, **kwargs):
        if "a" in mode or "+" in mode:
            raise NotImplementedError(f"object storage cannot open {path} with mode {mode!r}")
        if "r" not in mode and self.read_only:
            raise PermissionError(f"403: no write access to {path}")
        return _FakeObject(self, path, mode, block_size=block_size or "default")

    def publish(self, name: str, data: bytes) -> None:
        self.objects[name] = data
        self.published.append(name)

    def rm(self, path, recursive=False, maxdepth=None):
        path = self._strip_protocol(path)
        if path in self.objects:
            del self.objects[path]
            return
        under = [n for n in self.objects if n.startswith(f"{path}/")]
        if not under:
            raise FileNotFoundError(path)
        if not recursive:
            raise IsADirectoryError(path)
        for name in under:
            del self.objects[name]

    def rm_file(self, path):
        self.rm(path)

    def cp_file(self, path1, path2, **kwargs):
        self.publish(self._strip_protocol(path2), self.objects[self._strip_protocol(path1)])

    def makedirs(self, path, exist_ok=False):
        pass  # no directories

    def mkdir(self, path, create_parents=True, **kwargs):
        pass

    def rmdir(self, path):
        pass


class _FakeObject(AbstractBufferedFile):
    def _initiate_upload(self):
        self._parts = []

    def _upload_chunk(self, final=False):
        self._parts.append(self.buffer.getvalue())
        if final:
            self.fs.publish(self.path, b"".join(self._parts))
        return True

    def _fetch_range(self, start, end):
        return self.fs.objects[self.path][start:end]


@pytest.fixture
def fake_gcs(monkeypatch) -> FakeObjectStore:
    fs = FakeObjectStore()
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(epath_backend.fsspec_backend, "fs", lambda path: fs)
    return fs


def read_events(data: bytes) -> list:
    """tensorboardX Event protos of one events file (TFRecord framing, CRCs not checked)."""
    from tensorboardX.proto.event_pb2 import Event

    events, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        pos += 12
        events.append(Event.FromString(data[pos : pos + length]))
        pos += length + 4
    assert pos == len(data)
    return events


def remote_scalars(fs: FakeObjectStore, logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} over every events file under logdir, files in name order."""
    out: dict[str, list] = {}
    for name in sorted(fs.objects):
        if name.startswith(f"{logdir}/") and "tfevents" in name:
            for event in read_events(fs.objects[name]):
                for v in event.summary.value:
                    if v.HasField("simple_value"):
                        out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def jsonl(fs: FakeObjectStore, name: str) -> list[dict]:
    return [json.loads(line) for line in fs.objects[name].decode().splitlines()]


# ---- the fake itself ---------------------------------------------------------------------
def test_fake_bucket_behaves_like_object_storage(fake_gcs):
    path = storage.as_path("gs://bucket/run/a.txt")
    path.write_text("x")
    assert path.read_text() == "x" and path.parent.is_dir()
    assert storage.as_path("gs://bucket/run").exists()
    assert not storage.as_path("gs://bucket/other").exists()
    with pytest.raises(NotImplementedError):
        path.open("a")
    assert storage.listdir("gs://bucket/run") == ["a.txt"]
    assert storage.listdir("gs://bucket/missing") == []


# ---- path helpers ------------------------------------------------------------------------
def test_is_remote():
    assert storage.is_remote("gs://b/x") and storage.is_remote("s3://b/x")
    assert not storage.is_remote("runs/x") and not storage.is_remote("/abs/x")
    assert not storage.is_remote("file:///abs/x")


def test_write_bytes_local_is_atomic_and_sets_mode(tmp_path):
    path = tmp_path / "w.bin"
    storage.write_bytes(path, b"one")
    storage.write_bytes(path, b"two", mode=0o640)
    assert path.read_bytes() == b"two" and (path.stat().st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["w.bin"]  # no temporary left behind


def test_write_text_remote_is_one_upload(fake_gcs):
    storage.write_text("gs://bucket/run/config.json", '{"a": 1}')
    assert fake_gcs.published == ["bucket/run/config.json"]  # no temporary object
    assert storage.read_text("gs://bucket/run/config.json") == '{"a": 1}'
    assert storage.read_text("gs://bucket/run/none.json", "dflt") == "dflt"


def _make_tree(root) -> dict[str, bytes]:
    files = {
        "weights.safetensors": b"w" * 1000,
        "config.json": b"{}",
        "autoencoder/weights.safetensors": b"a" * 10,
        "autoencoder/config.json": b'{"ae": 1}',
    }
    for rel, data in files.items():
        storage.ensure_dir(os.path.dirname(os.path.join(root, rel)))
        storage.write_bytes(os.path.join(root, rel), data)
    return files


def test_copy_tree_between_local_and_remote(fake_gcs, tmp_path):
    src = str(tmp_path / "export")
    files = _make_tree(src)
    fake_gcs.publish("bucket/run/export/stale.bin", b"old")
    fake_gcs.published.clear()
    storage.copy_tree(src, "gs://bucket/run/export")
    assert sorted(storage.walk_files("gs://bucket/run/export")) == sorted(files)
    # config.json files last: a reader that waits for them never sees a partial export
    assert [os.path.basename(n) for n in fake_gcs.published[-2:]] == ["config.json"] * 2
    assert "bucket/run/export/stale.bin" not in fake_gcs.objects

    storage.copy_tree("gs://bucket/run/export", "gs://bucket/run2/export")  # remote -> remote
    back = tmp_path / "back"
    _make_tree(back)
    (back / "stale.bin").write_bytes(b"old")
    storage.copy_tree("gs://bucket/run2/export", str(back))  # remote -> local
    assert sorted(storage.walk_files(back)) == sorted(files)
    for rel, data in files.items():
        assert (back / rel).read_bytes() == data
    assert not (tmp_path / "back.tmp").exists()
    digest = storage.file_digest("gs://bucket/run2/export/weights.safetensors")
    assert digest == storage.file_digest(back / "weights.safetensors")


# ---- workdir checks ----------------------------------------------------------------------
def test_check_workdir_writable(fake_gcs, tmp_path):
    storage.check_workdir_writable(tmp_path / "new" / "run")
    storage.check_workdir_writable("gs://bucket/run")
    assert not fake_gcs.objects  # the marker is deleted
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.WorkdirError, match=f"workdir {tmp_path}/file/run is not"):
        storage.check_workdir_writable(tmp_path / "file" / "run")
    fake_gcs.read_only = True
    with pytest.raises(storage.WorkdirError, match="workdir gs://bucket/ro is not writable"):
        storage.check_workdir_writable("gs://bucket/ro")


def _run_processes(workdirs: list, token: str = "run-42") -> list:
    """check_workdir_shared on one thread per 'process'; returns each one's error or None."""
    n = len(workdirs)
    barrier = threading.Barrier(n, timeout=20)
    flags: list = [None] * n
    errors: list = [None] * n

    def gather(i, ok):
        flags[i] = ok
        barrier.wait()
        return list(flags)

    def run(i):
        try:
            storage.check_workdir_shared(
                workdirs[i],
                process_index=i,
                token=token,
                barrier=barrier.wait,
                gather=lambda ok: gather(i, ok),
                timeout_s=0.3,
            )
        except storage.WorkdirError as e:
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_check_workdir_shared(fake_gcs, tmp_path):
    assert _run_processes(["gs://bucket/run"] * 3) == [None] * 3
    assert _run_processes([str(tmp_path / "shared")] * 2) == [None] * 2
    # Each host's own local disk: host 1 has an old run's file, host 2 none. All raise.
    local = [tmp_path / f"host{i}" / "run" for i in range(3)]
    local[1].mkdir(parents=True)
    (local[1] / storage.SHARED_CHECK_NAME).write_text("an-old-run")
    errors = _run_processes([str(p) for p in local], token="run-43")
    assert all(isinstance(e, storage.WorkdirError) for e in errors)
    assert "processes [1, 2] of 3" in str(errors[0]) and str(local[0]) in str(errors[0])
    assert "another run's token" in str(errors[1]) and "does not exist" in str(errors[2])


# ---- TensorBoard and JSONL logs ----------------------------------------------------------
def test_summary_writer_local(tmp_path):
    w = SummaryWriter(str(tmp_path / "train"), enabled=True)
    w.scalars(1, {"loss/a": 1.0})
    w.batch_ids(1, ["x", "y"])
    w.close()
    names = os.listdir(tmp_path / "train")
    assert {"metrics.jsonl", "batch_ids.jsonl"} <= set(names)
    (events,) = [n for n in names if "tfevents" in n]
    got = [
        (e.step, v.tag)
        for e in read_events((tmp_path / "train" / events).read_bytes())
        for v in e.summary.value
    ]
    assert got == [(1, "loss/a")]


def test_summary_writer_remote_mirrors_and_resumes(fake_gcs):
    logdir = "gs://bucket/run/train"
    w = SummaryWriter(logdir, enabled=True, mirror_secs=0.0)
    w.text(0, "config", "c")
    w.scalars(1, {"loss/a": 1.0, "hist": np.arange(4.0)})
    w.batch_ids(1, ["x", "y"])
    w.scalars(2, {"loss/a": 0.5})
    # mirrored while the writer is still open (every scalars call with mirror_secs=0)
    assert remote_scalars(fake_gcs, "bucket/run/train") == {"loss/a": [(1, 1.0), (2, 0.5)]}
    assert [r["step"] for r in jsonl(fake_gcs, "bucket/run/train/metrics.jsonl")] == [1, 2]
    staging = w._local
    w.batch_ids(2, ["z"])
    w.close()
    assert not os.path.exists(staging)
    ids = jsonl(fake_gcs, "bucket/run/train/batch_ids.jsonl")
    assert ids == [{"step": 1, "ids": ["x", "y"]}, {"step": 2, "ids": ["z"]}]

    # A resumed run appends to the JSONL files and adds its own events file.
    w = SummaryWriter(logdir, enabled=True, mirror_secs=3600.0)
    w.scalars(3, {"loss/a": 0.25})
    w.batch_ids(3, ["w"])
    assert [r["step"] for r in jsonl(fake_gcs, "bucket/run/train/metrics.jsonl")] == [1, 2]
    w.close()  # mirrors although mirror_secs has not passed
    assert [r["step"] for r in jsonl(fake_gcs, "bucket/run/train/metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in jsonl(fake_gcs, "bucket/run/train/batch_ids.jsonl")] == [1, 2, 3]
    got = remote_scalars(fake_gcs, "bucket/run/train")["loss/a"]
    assert sorted(got) == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert not any(".tmp" in n for n in fake_gcs.objects)


def test_summary_writer_remote_rolls_events_files(fake_gcs):
    w = SummaryWriter("gs://bucket/r", enabled=True, mirror_secs=0.0, roll_bytes=1)
    for step in range(1, 6):
        w.scalars(step, {"loss/a": float(step)})
    w.flush()
    w.close()
    files = sorted(n for n in fake_gcs.objects if "tfevents" in n)
    assert len(files) >= 5
    # In name order (the order TensorBoard reads them), the steps ascend.
    assert remote_scalars(fake_gcs, "bucket/r")["loss/a"] == [(s, float(s)) for s in range(1, 6)]


def test_summary_writer_survives_a_failed_upload(fake_gcs):
    w = SummaryWriter("gs://bucket/r", enabled=True, mirror_secs=0.0)
    fake_gcs.read_only = True
    w.scalars(1, {"loss/a": 1.0})  # logged, not raised
    fake_gcs.read_only = False
    w.scalars(2, {"loss/a": 2.0})
    w.close()
    assert [r["step"] for r in jsonl(fake_gcs, "bucket/r/metrics.jsonl")] == [1, 2]


# ---- eval files and report ---------------------------------------------------------------
def test_eval_store_and_report_on_remote_workdir(fake_gcs):
    from f3_jax.evaluation import report
    from f3_jax.evaluation.store import EvalStore

    store = EvalStore("gs://bucket/run")
    for step, loss in ((10, 2.0), (20, float("nan"))):
        store.add_metrics(step, {"val/loss": loss, "val/mel": loss / 2})
        panel = {
            "kind": "xy",
            "title": "t",
            "name": "curve",
            "x_label": "x",
            "y_label": "y",
            "series": {"a": {"x": [0, 1], "y": [1.0, 2.0]}},
        }
        store.write_details("val", step, {"headline": [["loss", "lower"]], "panels": [panel]})
        store.mark_evaluated("val", step)
    assert store.evaluated("val") == [10, 20] and store.splits() == ["val"]
    assert sorted(store.details("val")) == [10, 20]
    assert np.isnan(store.metrics()[20]["val/loss"])
    path = report.write_report(store, workdir="gs://bucket/run", stage="autoencoder")
    assert path == "gs://bucket/run/eval/report.md"
    text = storage.read_text(path)
    assert "## Split `val`: latest step 20" in text and "figures/curves_val.png" in text
    for name in ("curves_val.png", "curve_val.png"):
        assert fake_gcs.objects[f"bucket/run/eval/figures/{name}"].startswith(b"\x89PNG")
    assert not any(".tmp" in n for n in fake_gcs.objects)


def test_spectrogram_figures_on_remote_workdir(fake_gcs):
    from f3_jax.evaluation import report
    from f3_jax.evaluation.store import EvalStore

    store = EvalStore("gs://bucket/run")
    wav = np.sin(np.linspace(0, 400, 4000)).astype(np.float32)
    panel = report.save_spectrograms({"clip": {"a": wav, "b": wav}}, 8000, store, "val", 5)
    (rel,) = panel["paths"]
    assert fake_gcs.objects[f"bucket/run/eval/{rel}"].startswith(b"\x89PNG")


# ---- exports (needs the checkpoint.py diff of the gs:// report) --------------------------
def test_tokenizer_from_remote_export(fake_gcs, tmp_path, monkeypatch):
    import jax

    from f3_jax.inference.tokenizer import Tokenizer
    from tests.ae_fixtures import tiny_ae_config
    from tests.test_tokenizer import random_variables

    monkeypatch.chdir(tmp_path)  # a local-only call must not litter the repository
    config = tiny_ae_config()
    variables = random_variables(config, seed=1)
    exports.write("gs://bucket/ae", variables, config, step=5)
    tok = Tokenizer.from_checkpoint("gs://bucket/ae")
    for got, want in zip(jax.tree.leaves(tok.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, want)


def test_frozen_export_found_and_copied_on_remote_workdirs(fake_gcs, tmp_path):
    """A stage-2/3 run reads its frozen stage from gs:// and copies it into its own export."""
    src = "gs://bucket/ae/export"
    files = _make_tree(src)
    assert exports.find("gs://bucket/ae", "autoencoder.workdir", "stage 1") == src
    assert exports.find(src, "autoencoder.workdir", "stage 1") == src  # an export itself
    with pytest.raises(exports.MissingExportError, match="autoencoder.workdir='gs://bucket/none'"):
        exports.find("gs://bucket/none", "autoencoder.workdir", "stage 1")

    dest = "gs://bucket/repr/export/autoencoder"
    exports.copy(src, dest)
    assert sorted(storage.walk_files(dest)) == sorted(files)
    fake_gcs.published.clear()
    exports.copy(src, dest)  # the same weights already there: nothing uploaded
    assert fake_gcs.published == []
    local = tmp_path / "export" / "autoencoder"
    exports.copy(src, str(local))  # remote -> local
    assert (local / "weights.safetensors").read_bytes() == files["weights.safetensors"]

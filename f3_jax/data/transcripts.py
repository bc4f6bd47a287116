"""Where transcripts come from: a manifest, or the LibriSpeech / LibriTTS file layouts.

- Manifest, JSONL: one object per line with "path" and "text" (optional "id"; other numeric
  fields become labels). TSV: `path<TAB>text` per line. Relative paths are relative to the
  manifest's directory.
- LibriSpeech: `<spk>-<chap>.trans.txt` next to the audio, lines `<utt-id> <TEXT>`.
- LibriTTS: `<utt-id>.normalized.txt` next to `<utt-id>.wav`.

Manifests, audio and transcript files may be local or gs:// URLs (data/files.py); a relative
path in a manifest on gs:// is relative to the manifest's folder there.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from f3_jax.data import files
from f3_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Entry:
    text: str = ""
    uid: str | None = None
    labels: tuple[tuple[str, float], ...] = ()


def _manifest_line(line: str, base: str, fmt: str) -> tuple[str, Entry] | None:
    line = line.strip()
    if not line:
        return None
    if fmt == "jsonl":
        obj = json.loads(line)
        labels = tuple(
            (k, float(v))
            for k, v in sorted(obj.items())
            if k not in ("path", "text", "id") and isinstance(v, int | float)
        )
        path, entry = obj["path"], Entry(str(obj.get("text", "")), obj.get("id"), labels)
    else:
        path, _, text = line.partition("\t")
        entry = Entry(text.strip())
    return files.canonical(files.join(base, path)), entry


def read_manifest(path: str) -> dict[str, Entry]:
    """files.canonical(audio path) -> Entry, from a .jsonl/.json or .tsv/.txt manifest."""
    if not files.isfile(path):
        raise DataError(f"manifest not found: {path}")
    fmt = "jsonl" if path.endswith((".jsonl", ".json")) else "tsv"
    base = files.dirname(path if files.is_remote(path) else os.path.abspath(path))
    out = {}
    for n, line in enumerate(files.read_text(path).splitlines(), 1):
        try:
            item = _manifest_line(line, base, fmt)
        except (ValueError, KeyError) as e:
            raise DataError(f"{path}:{n}: bad manifest line ({e})") from e
        if item:
            out[item[0]] = item[1]
    return out


def _transcript_files(directory: str) -> list[str]:
    if files.is_remote(directory):
        return [files.join(directory, n) for n in files.listdir(directory)]
    return glob.glob(os.path.join(glob.escape(directory), "*.txt"))


def _librispeech(names: list[str]) -> dict[str, str]:
    """utt-id -> text from the *.trans.txt files among one directory's files."""
    out = {}
    for trans in (n for n in names if n.endswith(".trans.txt")):
        for line in files.read_text(trans).splitlines():
            uid, _, text = line.strip().partition(" ")
            if uid:
                out[uid] = text.strip()
    return out


class LayoutTranscripts:
    """Finds a file's transcript in the LibriSpeech or LibriTTS layout (cached per directory:
    one listing per directory, which on object storage replaces a request per file)."""

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[set[str], dict[str, str]]] = {}

    def __call__(self, audio_path: str) -> str:
        directory = files.dirname(audio_path)
        stem = os.path.basename(audio_path).rsplit(".", 1)[0]
        if directory not in self._dirs:
            names = _transcript_files(directory)
            self._dirs[directory] = (set(names), _librispeech(names))
        names, librispeech = self._dirs[directory]
        normalized = files.join(directory, stem + ".normalized.txt")
        if normalized in names:
            return files.read_text(normalized).strip()
        return librispeech.get(stem, "")

"""Where transcripts come from: a manifest, or the LibriSpeech / LibriTTS file layouts.

- Manifest, JSONL: one object per line with "path" and "text" (optional "id"; other numeric
  fields become labels). TSV: `path<TAB>text` per line. Relative paths are relative to the
  manifest's directory.
- LibriSpeech: `<spk>-<chap>.trans.txt` next to the audio, lines `<utt-id> <TEXT>`.
- LibriTTS: `<utt-id>.normalized.txt` next to `<utt-id>.wav`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

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
    return os.path.realpath(os.path.join(base, path)), entry


def read_manifest(path: str) -> dict[str, Entry]:
    """Absolute real path -> Entry, from a .jsonl/.json or .tsv/.txt manifest."""
    if not os.path.isfile(path):
        raise DataError(f"manifest not found: {path}")
    fmt = "jsonl" if path.endswith((".jsonl", ".json")) else "tsv"
    base = os.path.dirname(os.path.abspath(path))
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                item = _manifest_line(line, base, fmt)
            except (ValueError, KeyError) as e:
                raise DataError(f"{path}:{n}: bad manifest line ({e})") from e
            if item:
                out[item[0]] = item[1]
    return out


def _librispeech(directory: str) -> dict[str, str]:
    """utt-id -> text from the *.trans.txt files of one directory."""
    out = {}
    for trans in glob.glob(os.path.join(glob.escape(directory), "*.trans.txt")):
        with open(trans, encoding="utf-8") as f:
            for line in f:
                uid, _, text = line.strip().partition(" ")
                if uid:
                    out[uid] = text.strip()
    return out


class LayoutTranscripts:
    """Finds a file's transcript in the LibriSpeech or LibriTTS layout (cached per directory)."""

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, str]] = {}

    def __call__(self, audio_path: str) -> str:
        directory, fname = os.path.split(audio_path)
        stem = fname.rsplit(".", 1)[0]
        normalized = os.path.join(directory, stem + ".normalized.txt")
        if os.path.isfile(normalized):
            with open(normalized, encoding="utf-8") as f:
                return f.read().strip()
        if directory not in self._dirs:
            self._dirs[directory] = _librispeech(directory)
        return self._dirs[directory].get(stem, "")

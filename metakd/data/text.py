"""Decoding a data file's bytes: UTF-8 (a byte-order mark skipped), or the encoding the data spec
names. A file that is not text, or not in that encoding, is one DataError line: the file, the
byte offset, what the bytes look like, and how to convert them."""

from __future__ import annotations

import codecs
from pathlib import Path

from .errors import DataError

_SAMPLE = 1 << 16  # bytes looked at to tell legacy 8-bit text from binary
_CONTROL = frozenset(range(0x00, 0x09)) | {0x0B, 0x0C} | frozenset(range(0x0E, 0x20)) | {0x7F}


def read_text(path: Path, encoding: str | None = None) -> str:
    """The text of ``path``: UTF-8 (a UTF-8 byte-order mark skipped) when ``encoding`` is None,
    else decoded with ``encoding`` (any codec name Python knows: ``latin-1``, ``cp1252``,
    ``utf-16``, ...)."""
    data = path.read_bytes()
    if encoding is not None:
        codec = _codec(encoding, path)
        try:
            return data.decode("utf-8-sig" if codec == "utf-8" else codec)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not {encoding} text: byte {data[exc.start]:#04x} at offset {exc.start:,} "
                            f"({_line(data, exc.start)}) is invalid in {encoding}; name the file's encoding with "
                            "encoding: in the run file") from None
    binary = _binary(data)
    if binary is not None:
        raise DataError(f"{path}: {binary}: a binary file, not text; a data file is UTF-8 text "
                        "(.tsv, .csv, .jsonl, .json, .txt)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; convert it "
                        f"with `iconv -f utf-16 -t utf-8 {path} > {_converted(path)}`, or set encoding: utf-16 "
                        "in the run file (encoding='utf-16' in Python)")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + skip
        raise DataError(_not_utf8(path, data, start)) from None


def _codec(encoding: object, path: Path) -> str:
    if not isinstance(encoding, str) or not encoding.strip():
        raise DataError(f"encoding must be a codec name such as utf-8, latin-1 or cp1252, got {encoding!r}")
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}; name one such as utf-8, latin-1, cp1252 or "
                        "utf-16") from None


def _binary(data: bytes) -> str | None:
    """What a binary file looks like (None for text): an executable, or NUL bytes (text has none,
    except UTF-16, told apart by its byte-order mark)."""
    if data.startswith(b"\x7fELF"):
        return "an ELF executable (it starts with \\x7fELF)"
    if data.startswith((b"MZ", b"PK\x03\x04", b"\x1f\x8b", b"%PDF")):
        return f"a {_MAGIC[data[:2]]} (it starts with {data[:4]!r})"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None
    nul = data.find(b"\x00", 0, _SAMPLE)
    if nul >= 0:
        return f"a NUL byte at offset {nul:,}"
    return None


_MAGIC = {b"MZ": "Windows executable", b"PK": "zip archive (an .xlsx or .docx is one)", b"\x1f\x8b": "gzip file",
          b"%P": "PDF document"}


def _not_utf8(path: Path, data: bytes, start: int) -> str:
    """The line for a file that is not UTF-8: legacy 8-bit text (Latin-1 / Windows-1252), or
    bytes that are no text at all."""
    where = f"byte {data[start]:#04x} at offset {start:,} ({_line(data, start)})"
    sample = data[:_SAMPLE]
    control = sum(1 for b in sample if b in _CONTROL)
    if control > len(sample) // 100:  # text has (almost) no control bytes; random bytes have ~11%
        return (f"{path}: not text: {where} is not UTF-8, and {control:,} of the first {len(sample):,} bytes are "
                "control bytes: a binary file; a data file is UTF-8 text (.tsv, .csv, .jsonl, .json, .txt)")
    windows = any(0x80 <= b <= 0x9F for b in sample)  # C1 bytes: Windows-1252's quotes and dashes
    name, flag = ("Windows-1252", "cp1252") if windows else ("Latin-1 (ISO-8859-1)", "latin1")
    return (f"{path}: not UTF-8: {where}; the bytes look like {name} text; convert the file with "
            f"`iconv -f {flag} -t utf-8 {path} > {_converted(path)}`, or set encoding: {flag} in the run file "
            f"(encoding='{flag}' in Python)")


def _line(data: bytes, offset: int) -> str:
    lines = data.count(b"\n", 0, offset) + 1
    return f"line {lines:,}"


def _converted(path: Path) -> Path:
    return path.with_name(f"{path.stem}.utf8{path.suffix}")

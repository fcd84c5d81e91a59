"""Integrity of a model file: a seal over every byte, and digests of its tensors and its metadata.

`torch.save` writes a zip archive; a zip may end with a comment after its end-of-central-directory
record, and torch's reader (and Python's `zipfile`) ignore it. `seal` writes the sha256 of every byte
before the comment into that comment (`impeller-artifact-seal/1 sha256=<hex>`), so a change anywhere
in the file, in tensor data, metadata, zip headers, padding or timestamps, and any damage to the seal
itself, is found before `torch.load` parses a single record. The payload also records, at export, a
digest of its tensors (name, dtype, shape, bytes) and of its metadata text; `tensor_digest` and
`text_digest` recompute them after loading, so an artifact re-sealed by hand with edited content is
refused too.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

import torch

SEAL_PREFIX = b"impeller-artifact-seal/1 sha256="
SEAL_LENGTH = len(SEAL_PREFIX) + 64
_EOCD_SIGNATURE = b"PK\x05\x06"
_EOCD_SIZE = 22  # the end-of-central-directory record without its comment


class SealError(ValueError):
    """The file cannot be sealed, or its seal is missing, damaged or does not match its bytes."""


def seal(raw: bytes) -> bytes:
    """Return `raw` (a zip archive without a comment, as torch.save writes it) with the seal appended."""
    eocd = len(raw) - _EOCD_SIZE
    if eocd < 0 or raw[eocd:eocd + 4] != _EOCD_SIGNATURE or raw[-2:] != b"\x00\x00":
        raise SealError("not a zip archive ending in an end-of-central-directory record without a comment")
    body = raw[:-2] + struct.pack("<H", SEAL_LENGTH)
    return body + SEAL_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii")


def has_seal(raw: bytes) -> bool:
    """True when the file ends like a sealed artifact (the seal may still not match)."""
    return len(raw) >= SEAL_LENGTH + _EOCD_SIZE and raw[-SEAL_LENGTH:].startswith(SEAL_PREFIX)


def verify_seal(raw: bytes) -> None:
    """Raise SealError unless `raw` ends with an intact seal that matches every byte before it."""
    if not has_seal(raw):
        raise SealError("its integrity seal is missing or damaged (the file was changed or truncated)")
    eocd = len(raw) - SEAL_LENGTH - _EOCD_SIZE
    if raw[eocd:eocd + 4] != _EOCD_SIGNATURE or struct.unpack("<H", raw[eocd + 20:eocd + 22])[0] != SEAL_LENGTH:
        raise SealError("its integrity seal is missing or damaged (zip end record does not frame the seal)")
    recorded = raw[-64:]
    try:
        recorded_hex = recorded.decode("ascii")
        int(recorded_hex, 16)
    except (UnicodeDecodeError, ValueError):
        raise SealError("its integrity seal is damaged (the recorded sha256 is not hexadecimal)") from None
    actual = hashlib.sha256(raw[:len(raw) - SEAL_LENGTH]).hexdigest()
    if actual != recorded_hex:
        raise SealError(f"its bytes do not match its integrity seal (sha256 {actual[:12]}..., sealed "
                        f"{recorded_hex[:12]}...): the file was changed after export")


def tensor_digest(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> str:
    """sha256 over every tensor of every group, in sorted order: group, name, dtype, shape, raw bytes."""
    digest = hashlib.sha256()
    for group in sorted(groups):
        for name in sorted(groups[group]):
            t = groups[group][name].detach().cpu().contiguous()
            digest.update(f"{group}/{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""ZIP and gzip: unpack members for the caller to read, within limits.

Every size is checked before anything is decompressed, and every read is
bounded, so neither a zip bomb nor a header that lies about sizes can take
the worker's memory. Nested archives come back as members; the caller
recurses, counting depth and the bytes unpacked from the whole message.
"""

from __future__ import annotations

import io
import zipfile
import zlib

from smtpguard.parse.extract import Embedded, Extraction, Uninspectable
from smtpguard.parse.model import Limits

_CHUNK = 1024 * 1024


def extract_zip(data: bytes, limits: Limits) -> Extraction:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise Uninspectable("corrupt ZIP archive") from exc
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if len(infos) > limits.max_archive_members:
            raise Uninspectable(
                f"ZIP archive has {len(infos)} files, more than the limit of "
                f"{limits.max_archive_members}"
            )
        encrypted = [info for info in infos if info.flag_bits & 0x1]
        if encrypted:
            raise Uninspectable(
                f"password-protected ZIP archive ({len(encrypted)} of {len(infos)} files encrypted)"
            )
        total = sum(info.file_size for info in infos)
        if total > limits.max_extracted_bytes:
            raise Uninspectable("ZIP archive unpacks to more than the size limit")
        members = []
        for info in infos:
            _check_member(info, limits)
            members.append(Embedded(info.filename, _read_member(archive, info, limits)))
    names = "\n".join(info.filename for info in infos)
    return Extraction(text=names, embedded=tuple(members))


def _check_member(info: zipfile.ZipInfo, limits: Limits) -> None:
    if info.file_size > limits.max_part_bytes:
        raise Uninspectable(f"a file in the ZIP archive is over the size limit ({info.filename})")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _CHUNK and ratio > limits.max_ratio:
        raise Uninspectable(
            f"compression ratio {ratio:.0f}:1 suggests a zip bomb ({info.filename})"
        )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    """Read at most the size the header declares (plus one byte, to catch a lie)."""
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise Uninspectable(f"corrupt file in ZIP archive ({info.filename})") from exc
    except RuntimeError as exc:  # zipfile's "password required"
        raise Uninspectable("password-protected ZIP archive") from exc
    if len(data) > info.file_size or len(data) > limits.max_part_bytes:
        raise Uninspectable(f"a file in the ZIP archive is larger than it claims ({info.filename})")
    return data


def extract_gzip(data: bytes, limits: Limits, name: str = "") -> Extraction:
    inner = name[:-3] if name.lower().endswith(".gz") else (name or "content")
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    out = io.BytesIO()
    pending = data
    try:
        while pending:
            chunk = decompressor.decompress(pending, _CHUNK)
            out.write(chunk)
            if out.tell() > limits.max_part_bytes:
                raise Uninspectable("gzip file unpacks to more than the size limit")
            if out.tell() > _CHUNK and out.tell() / max(len(data), 1) > limits.max_ratio:
                raise Uninspectable("compression ratio suggests a gzip bomb")
            pending = decompressor.unconsumed_tail
            if not chunk and not pending:
                break
            if decompressor.eof:
                break
    except zlib.error as exc:
        raise Uninspectable("corrupt gzip file") from exc
    if not decompressor.eof:
        raise Uninspectable("truncated gzip file")
    return Extraction(text="", embedded=(Embedded(inner, out.getvalue()),))

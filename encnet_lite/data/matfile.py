"""Checked reading of MATLAB ``.mat`` annotation files: sizes come from the headers, before
any array is decoded.

``scipy.io.loadmat`` decodes every array in full. A small compressed file can declare, and
hold as zeros that compress a thousandfold, a 28000 x 28000 label map that takes gigabytes
and a minute to decode. :func:`load_mat` first walks the element headers of the file (the
Level 5 layout of MathWorks' *MAT-File Format*: 8-byte tags, array flags, dimensions,
name; structs and cells hold further arrays) and refuses it, naming the file and the
limit, when

- an array has more elements than the pixel limit
  (:func:`~encnet_lite.data.common.max_image_pixels`), or all arrays together do;
- an array's data are larger than its dimensions allow (a decoder would read them whole);
- it is malformed or uses a MATLAB class no annotation file holds.

Only headers are decompressed, in small pieces: the data of a top-level variable are never
touched, those of an array inside a struct or cell are inflated and dropped piece by piece
to reach the next one. Level 4 files (no compression) are checked with
``scipy.io.whosmat``, which reads their headers only.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Dict, List, Tuple

import numpy as np
import scipy.io

from .common import IMAGE_PIXELS_ENV, DataError, max_image_pixels, too_large

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MX_CELL, MX_STRUCT, MX_OBJECT, MX_SPARSE = 1, 2, 3, 5
MX_LAST_NUMERIC = 15  # classes 4 (char) .. 15 (uint64) hold plain data; 16+ never in labels
HEADER_BYTES = 128
CHUNK = 1 << 16  # decompressed bytes produced per step: the memory a walk needs
MAX_ARRAYS = 4096  # the annotation files hold 1 (PASCAL-Context) to about 25 (SBD) arrays
MAX_DEPTH = 16
MAX_NAME_BYTES = 4096  # a variable name, a class name, or all field names of a struct


def _corrupt(name: object, why: str) -> DataError:
    return DataError(f"corrupt annotation file {name}: {why} (a damaged or hostile file: "
                     "fetch it again from the official source)")


class _Stream:
    """Sequential reads over ``data[start:end]``, inflated (zlib) when it is a compressed
    element; ``pos`` counts the bytes consumed (decompressed ones if so)."""

    def __init__(self, data: bytes, start: int, end: int, compressed: bool, name: object):
        self.data, self.at, self.end, self.name = data, start, end, name
        self.inflate = zlib.decompressobj() if compressed else None
        self.pos = 0

    def _more(self, most: int) -> bytes:
        """The next 1 to ``most`` bytes."""
        if self.inflate is None:
            piece = self.data[self.at : min(self.end, self.at + most)]
            self.at += len(piece)
        else:
            piece = b""
            while not piece:
                source = self.inflate.unconsumed_tail
                if not source and self.at < self.end:
                    # small pieces: zlib copies the input it has not used on every call
                    source = self.data[self.at : min(self.end, self.at + 4096)]
                    self.at += len(source)
                if not source:
                    break
                try:
                    piece = self.inflate.decompress(source, most)
                except zlib.error as err:
                    raise _corrupt(self.name, f"compressed data: {err}") from err
        if not piece:
            raise _corrupt(self.name, "it ends inside an element")
        return piece

    def read(self, n: int) -> bytes:
        pieces, got = [], 0
        while got < n:
            pieces.append(self._more(n - got))
            got += len(pieces[-1])
        self.pos += n
        return b"".join(pieces)

    def skip(self, n: int) -> None:
        """Skip ``n`` bytes: inflated piece by piece and dropped (never held)."""
        self.pos += n
        if self.inflate is None:
            if self.at + n > self.end:
                raise _corrupt(self.name, "it ends inside an element")
            self.at += n
            return
        while n:
            n -= len(self._more(min(n, CHUNK)))


class _Walk:
    """What a walk has seen so far: the byte order, the arrays and their values."""

    def __init__(self, name: object, order: str):
        self.name, self.order, self.limit = name, order, max_image_pixels()
        self.arrays, self.total = 0, 0

    def tag(self, s: _Stream) -> Tuple[int, int, bytes]:
        """``(data type, byte count, small data)`` of the next tag. A small data element
        (4 bytes at most) packs its size into the tag's upper 16 bits and its data into the
        tag's second word: that data is returned, else ``b""``."""
        raw = s.read(8)
        kind, size = struct.unpack(self.order + "II", raw)
        if kind >> 16:
            small = kind >> 16
            if small > 4:
                raise _corrupt(self.name, f"a small data element of {small} bytes")
            return kind & 0xFFFF, small, raw[4 : 4 + small]
        return kind, size, b""

    def payload(self, s: _Stream, most: int, what: str) -> bytes:
        """The data of the next element (at most ``most`` bytes, else an error)."""
        _kind, size, small = self.tag(s)
        if small or not size:
            return small
        if size > most:
            raise _corrupt(self.name, f"its {what} take {size} bytes")
        data = s.read(size)
        s.skip(-size % 8)  # elements are padded to 8 bytes
        return data

    def count(self, label: str, dims: List[int], values: int) -> None:
        """Count one array holding ``values`` values; refuse a label map over the pixel
        limit, or arrays over it together (a decoder would hold them all)."""
        self.arrays += 1
        if self.arrays > MAX_ARRAYS:
            raise _corrupt(self.name, f"more than {MAX_ARRAYS} arrays")
        size = math.prod(dims)
        if size > self.limit:
            raise too_large(f"{self.name}: {label}",
                            f"{'x'.join(map(str, dims))} = {size} pixels",
                            f"{self.limit} pixels", IMAGE_PIXELS_ENV)
        self.total += values
        if self.total > self.limit:
            raise too_large(f"{self.name}: all arrays together", f"{self.total} values or "
                            "more", f"{self.limit} pixels", IMAGE_PIXELS_ENV)


def _matrix(walk: _Walk, s: _Stream, size: int, label: str, depth: int) -> None:
    """Check one ``miMATRIX`` element of ``size`` bytes (its tag already read) and what it
    holds; leaves ``s`` at the element's data when ``depth`` is 0 (the caller jumps to the
    next variable), else at its end (the next element of a cell or struct follows)."""
    start, order = s.pos, walk.order
    if size == 0:  # an empty array
        return
    if depth > MAX_DEPTH:
        raise _corrupt(walk.name, f"arrays nested more than {MAX_DEPTH} deep")
    flags = walk.payload(s, 8, "array flags")
    if len(flags) != 8:
        raise _corrupt(walk.name, f"{label}: array flags of {len(flags)} bytes")
    mclass, nzmax = struct.unpack(order + "II", flags)
    mclass &= 0xFF
    if not MX_CELL <= mclass <= MX_LAST_NUMERIC:
        raise _corrupt(walk.name, f"{label} is of MATLAB class {mclass}, which no "
                                  "annotation file holds")
    raw_dims = walk.payload(s, 4 * 32, "dimensions")
    dims = list(struct.unpack(f"{order}{len(raw_dims) // 4}i", raw_dims[: len(raw_dims) & ~3]))
    name = walk.payload(s, MAX_NAME_BYTES, "name").decode("latin-1")
    label = f"{label}.{name}" if label and name else (name or label or "an array")
    if len(dims) < 2 or min(dims) < 0:
        raise _corrupt(walk.name, f"{label} has dimensions {dims}")
    if mclass in (MX_CELL, MX_STRUCT, MX_OBJECT):
        walk.count(label, dims, 0)
        _children(walk, s, mclass, math.prod(dims), label, depth)
        data_bound = 0
    elif mclass == MX_SPARSE:  # row indices, column starts, values: nzmax values at most
        walk.count(label, dims, nzmax + dims[1])
        data_bound = 24 * nzmax + 4 * dims[1] + 128
    else:  # real and imaginary parts, 8 bytes per value at most
        walk.count(label, dims, math.prod(dims))
        data_bound = 16 * math.prod(dims) + 64
    rest = size - (s.pos - start)
    if rest < 0 or rest > data_bound:
        raise _corrupt(walk.name, f"{label} declares {size} bytes for a "
                                  f"{'x'.join(map(str, dims))} array")
    if depth:
        s.skip(rest)


def _children(walk: _Walk, s: _Stream, mclass: int, n: int, label: str, depth: int) -> None:
    """The arrays inside a cell (one per element) or a struct (one per field and element)."""
    fields = [""]
    if mclass in (MX_STRUCT, MX_OBJECT):
        if mclass == MX_OBJECT:
            walk.payload(s, MAX_NAME_BYTES, "class name")
        (length,) = struct.unpack(walk.order + "i", walk.payload(s, 4, "field name length")
                                  .ljust(4, b"\0"))
        names = walk.payload(s, MAX_NAME_BYTES, "field names")
        if length <= 0 or len(names) % length:
            raise _corrupt(walk.name, f"{label}: field names of {len(names)} bytes in "
                                      f"pieces of {length}")
        fields = [names[i : i + length].split(b"\0")[0].decode("latin-1")
                  for i in range(0, len(names), length)]
    if n * len(fields) > MAX_ARRAYS:
        raise _corrupt(walk.name, f"{label} holds {n * len(fields)} arrays")
    for _ in range(n):
        for field in fields:
            kind, size, _small = walk.tag(s)
            if kind != MI_MATRIX:
                raise _corrupt(walk.name, f"{label}: an element of type {kind} in a "
                                          f"{'cell' if mclass == MX_CELL else 'struct'}")
            _matrix(walk, s, size, f"{label}.{field}" if field else f"{label}{{}}", depth + 1)


def check_v5_sizes(data: bytes, name: object) -> None:
    """Refuse a Level 5 ``.mat`` file (bytes) whose arrays are too large, from the headers
    (see the module docstring); ``name`` names it in errors."""
    if len(data) < HEADER_BYTES:
        raise _corrupt(name, f"{len(data)} bytes, shorter than the 128-byte header")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise _corrupt(name, "no MATLAB 5 endian indicator in the header")
    walk, at = _Walk(name, order), HEADER_BYTES
    while at + 8 <= len(data):
        kind, size = struct.unpack(order + "II", data[at : at + 8])
        end = at + 8 + size
        if end > len(data):
            raise _corrupt(name, f"an element of {size} bytes at byte {at} runs past the end")
        if kind == MI_COMPRESSED:
            s = _Stream(data, at + 8, end, True, name)
            kind, size, _small = walk.tag(s)
        else:
            s = _Stream(data, at + 8, end, False, name)
        if kind == MI_MATRIX:
            _matrix(walk, s, size, "", 0)
        at = end  # as scipy reads it: the next variable starts right after this one


def _check_v4_sizes(data: bytes, name: object) -> None:
    """Level 4 files are never compressed: ``whosmat`` reads their headers and seeks."""
    walk = _Walk(name, "<")
    for label, shape, _kind in scipy.io.whosmat(io.BytesIO(data)):
        walk.count(label, list(shape), math.prod(shape))


def load_mat(data: bytes, name: object, **options) -> Dict[str, np.ndarray]:
    """``scipy.io.loadmat`` of a ``.mat`` file's bytes, once its array sizes are checked
    (:class:`DataError` naming ``name`` for a file too large or damaged); ``options`` go to
    ``loadmat``."""
    try:
        major, _minor = scipy.io.matlab.matfile_version(io.BytesIO(data))
    except Exception as err:  # scipy raises several types for a file that is no .mat
        raise _corrupt(name, str(err)) from err
    if major == 1:
        check_v5_sizes(data, name)
    elif major == 0:
        try:
            _check_v4_sizes(data, name)
        except DataError:
            raise
        except Exception as err:
            raise _corrupt(name, str(err)) from err
    else:
        raise _corrupt(name, "a MATLAB 7.3 (HDF5) file; the annotations are MATLAB 5 files")
    try:
        return scipy.io.loadmat(io.BytesIO(data), **options)
    except Exception as err:
        raise _corrupt(name, str(err)) from err

"""The rows a parquet column chunk holds, counted from its page headers: a footer's row counts are claims (a
footer that declares fewer rows than the pages hold makes pyarrow drop the rest without a word), and pyarrow
does not expose the pages. A page header is a Thrift struct in the compact protocol: only what is needed to
walk the pages is decoded (the page type, its compressed size, and the value count of a data page)."""

from __future__ import annotations

from imagenet_prep.errors import ImgnetError

_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_HEADER_BYTES = (1 << 12, 1 << 16, 1 << 20)  # a page header (with its statistics) is read in one of these


class _Short(Exception):
    """The header runs past the bytes read."""


class _Reader:
    """Thrift compact protocol over bytes: varints, field headers, and skipping any value."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def byte(self) -> int:
        if self.i >= len(self.data):
            raise _Short
        self.i += 1
        return self.data[self.i - 1]

    def varint(self) -> int:
        out, shift = 0, 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 70:
                raise ValueError("a varint over 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def fields(self):
        """Yield (field id, type) of a struct until its stop byte; the caller reads or skips each value."""
        last = 0
        while (head := self.byte()) != 0:
            delta, kind = head >> 4, head & 0x0F
            last = last + delta if delta else self.zigzag()
            yield last, kind

    def skip(self, kind: int, depth: int = 0) -> None:
        if self.i > len(self.data):
            raise _Short
        if depth > 32:  # a page header nests three deep; a crafted one could nest past the stack
            raise ValueError("structs nested over 32 deep")
        if kind in (1, 2):        # bool true / false: in the field header
            return
        if kind == 3:             # byte
            self.byte()
        elif kind in (4, 5, 6):   # i16, i32, i64: varints
            self.varint()
        elif kind == 7:           # double
            self.i += 8
        elif kind == 8:           # binary: its length, then the bytes
            n = self.varint()
            self.i += n
        elif kind in (9, 10):     # list, set
            head = self.byte()
            n = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(n):
                if head & 0x0F in (1, 2):  # a bool element is a byte of its own
                    self.byte()
                else:
                    self.skip(head & 0x0F, depth + 1)
        elif kind == 11:          # map
            n = self.varint()
            if n:
                types = self.byte()
                for _ in range(n):
                    self.skip(types >> 4, depth + 1)
                    self.skip(types & 0x0F, depth + 1)
        elif kind == 12:          # struct
            for _, k in self.fields():
                self.skip(k, depth + 1)
        else:
            raise ValueError(f"thrift type {kind}")
        if self.i > len(self.data):
            raise _Short


def _page_header(r: _Reader) -> tuple[int, int, int]:
    """(page type, compressed size, values) of the page header at r; values 0 for a page without data."""
    kind, size, values = -1, -1, 0
    for fid, t in r.fields():
        if fid in (1, 3) and t == 5:
            v = r.zigzag()
            kind, size = (v, size) if fid == 1 else (kind, v)
        elif fid in (5, 8) and t == 12:  # data_page_header, data_page_header_v2: field 1 is num_values
            for sub, st in r.fields():
                if sub == 1 and st == 5:
                    values = r.zigzag()
                else:
                    r.skip(st)
        else:
            r.skip(t)
    return kind, size, values


def _header_at(f, at: int, end: int, where: str) -> tuple[int, int, int, int]:
    """(page type, compressed size, values, header bytes) of the page header at byte `at`, read in a few KB
    first and in more only where its statistics are longer."""
    for n in _HEADER_BYTES:
        f.seek(at)
        r = _Reader(f.read(min(n, end - at)))
        try:
            return (*_page_header(r), r.i)
        except _Short:
            if n >= end - at:
                break
        except ValueError as e:
            raise ImgnetError(f"{where}: a damaged page header at byte {at} ({e}); expected a complete parquet shard "
                              "(re-download it)") from e
    raise ImgnetError(f"{where}: the page header at byte {at} is cut short or over {_HEADER_BYTES[-1]:,} bytes; "
                      "expected a complete parquet shard (re-download it)")


def chunk_rows(f, start: int, length: int, where: str) -> int:
    """The values the data pages of the column chunk at [start, start + length) of open file `f` hold (of a flat,
    unrepeated column: its rows); a damaged page header is a one-line error naming `where`."""
    held, at, end = 0, start, start + length
    while at < end:
        kind, size, values, used = _header_at(f, at, end, where)
        if size < 0 or kind < 0:
            raise ImgnetError(f"{where}: a page header at byte {at} without its type or size; expected a complete "
                              "parquet shard (re-download it)")
        if kind in (_DATA_PAGE, _DATA_PAGE_V2):
            held += values
        at += used + size
    if at != end:
        raise ImgnetError(f"{where}: its pages end at byte {at}, not at {end} where the footer ends the column chunk; "
                          "expected a complete parquet shard (re-download it)")
    return held

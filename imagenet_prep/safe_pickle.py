"""Read the CIFAR python batches without giving the file the power a pickle has (to call any function).

The C `pickle.Unpickler` (`encoding="bytes"`, as for Python 2's pickles) whose `find_class` admits only what
the format uses ("Restricting Globals" in the Python docs), each as a checker of its arguments: numpy's array
reconstruction (numpy 1 and 2 spellings), `numpy.dtype` of plain numbers, and Python 3's byte strings at
protocol 2 (`_codecs.encode(text, "latin1")`, `bytes()`). Anything else is one ImgnetError line naming the
file and what the pickle asked for (a global's `module.name`), before it could run; after loading, so is
anything but dict, list, tuple, bytes, str, int, float, bool, None and numeric arrays. Damaged pickles are one
line too.
"""

import copyreg
import io
import math
import pickle
import pickletools
import reprlib
import struct

import numpy as np

from imagenet_prep.atomic import read_bounded
from imagenet_prep.errors import ImgnetError

__all__ = ["ADMITTED_GLOBALS", "load_file", "loads"]

_EXPECTED = "expected a CIFAR python batch (dicts, lists, byte strings, numbers and numpy arrays only)"
_DTYPES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}  # no objects, records, strings
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, MemoryError, RecursionError, OverflowError)


class _Refused(Exception):
    """Internal: what the pickle asked for; loads() turns it into one ImgnetError line."""


class _Admitted:
    """What find_class gives for the admitted global `what`: refuses calls other than the format's, and BUILD."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __setstate__(self, state):  # BUILD must not reach the slot
        raise _Refused(f"a state for {self.what}")

    def __call__(self, *args):
        what, first = self.what, args[0] if args else None
        spec = first.decode("latin-1") if isinstance(first, bytes) else first
        if what.endswith("._reconstruct") and args[1:] in (((0,), b"b"), ((0,), "b")) and first is _ADMITTED[_NDARRAY]:
            return _PendingArray()
        if what == "numpy.dtype" and len(args) == 3 and isinstance(spec, str) and spec in _DTYPES:
            return np.dtype(spec, False, True)  # a copy: its BUILD must not change numpy's own
        if what == "_codecs.encode" and len(args) == 2 and isinstance(first, str) and args[1] in ("latin1", "latin-1"):
            return first.encode("latin-1")
        if what.endswith(".bytes") and not args:
            return b""
        raise _Refused(f"a call of {what}{reprlib.repr(args)}, which no CIFAR batch makes")


class _PendingArray:
    """`_reconstruct(ndarray, (0,), b"b")`; its BUILD makes the array by numpy's `ndarray.__setstate__`."""

    array, what = None, "a numpy array without its state"

    def __setstate__(self, state):
        ok = isinstance(state, tuple) and len(state) == 5 and state[0] == 1  # numpy's (1, shape, dtype, F, raw)
        shape, dtype, fortran, raw = state[1:] if ok else (None,) * 4
        if (not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None
                or np.dtype(dtype.str).kind not in "biuf" or fortran not in (0, 1) or not isinstance(raw, bytes)
                or not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape)):
            raise _Refused("a numpy array state other than (1, shape, plain numeric dtype, is_fortran, raw bytes)")
        dtype = np.dtype(dtype.str)  # by name: a pickled dtype state can claim object references or fields
        size = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around for crafted huge dimensions
        if size != len(raw):
            raise _Refused(f"a numpy array of shape {shape} {dtype} with {len(raw):,} data bytes (needs {size:,})")
        self.array = np.ndarray((0,), np.int8)  # as numpy's _reconstruct makes it
        self.array.__setstate__((1, shape, dtype, bool(fortran), raw))


_ADMITTED = {(m, n): _Admitted(f"{m}.{n}") for m, n in (
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"))}
ADMITTED_GLOBALS = frozenset(_ADMITTED)
_NDARRAY = ("numpy", "ndarray")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ADMITTED:
            raise _Refused("the global " + repr(f"{module}.{name}")[1:-1][:120])
        return _ADMITTED[module, name]


def _scan(data: bytes):
    """Refuse persistent ids, out-of-band buffers, extension codes (the C unpickler's cache answers them without
    find_class) and memo indices past the count so far (it would allocate a memo table that large)."""
    memoized = 0
    for op, arg, _ in pickletools.genops(data):
        pair = copyreg._inverted_registry.get(arg) if op.name.startswith("EXT") else None
        if op.name in ("PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"):
            raise _Refused(f"the global {'.'.join(pair)} (extension code {arg})" if pair else f"the opcode {op.name}")
        if op.name.endswith("PUT") and arg > memoized:  # PUT, BINPUT, LONG_BINPUT
            raise _Refused(f"memo index {arg:,} when {memoized:,} objects were memoized")
        memoized += op.name.endswith("PUT") or op.name == "MEMOIZE"


def _settle(obj, done: dict):
    """`obj` with each pending array replaced by its array; anything but the admitted types is refused."""
    if isinstance(obj, (bytes, str, int, float, type(None))) or id(obj) in done:  # (a cycle: RecursionError)
        return done[id(obj)][1] if id(obj) in done else obj
    if type(obj) in (list, dict):
        for k, v in enumerate(obj) if type(obj) is list else obj.items():
            if not isinstance(k, (bytes, str, int)):
                raise _Refused(f"a dict key of type {type(k).__name__}")
            obj[k] = _settle(v, done)
        out = obj
    elif type(obj) is tuple:
        out = tuple(_settle(v, done) for v in obj)
    elif type(obj) is _PendingArray and obj.array is not None:
        out = obj.array
    else:
        raise _Refused(f"{getattr(obj, 'what', 'a ' + type(obj).__name__)} as a value")
    done[id(obj)] = (obj, out)  # the original is kept alive so that its id stays its own
    return out


def loads(data: bytes, origin: str):
    """As `pickle.loads(data, encoding="bytes")` for the admitted content; anything else is an ImgnetError
    naming `origin` (the file, or `archive:member`) and what the pickle asked for."""
    try:
        _scan(data)
        return _settle(_Unpickler(io.BytesIO(data), encoding="bytes").load(), {})
    except _Refused as e:
        raise ImgnetError(f"{origin} is refused: its pickle asks for {e}; {_EXPECTED}") from None
    except _DAMAGED as e:  # truncated, garbage, an unhashable key, ...
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]  # one line
        raise ImgnetError(f"{origin} is not a readable CIFAR batch pickle ({why}); {_EXPECTED}") from None


def load_file(path, limit: int):
    """`loads` of a file read with at most `limit` bytes (a larger file is refused before it is read)."""
    return loads(read_bounded(path, limit, "a CIFAR python batch"), str(path))

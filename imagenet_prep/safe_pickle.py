"""Read the CIFAR python batches without giving the file the power a pickle has (to call any function).

A pickle is a program for a small stack machine whose GLOBAL + REDUCE opcodes import and call anything
(`os.system`, `builtins.eval`, ...). `pickle.load` runs that program; this module interprets it instead,
with the few opcodes and globals the CIFAR batches use, and builds the objects itself:

- the containers and scalars: dict, list, tuple, byte strings (Python 2's `str`, read as with
  `pickle.load(f, encoding="bytes")`), str, int, float, None, True/False;
- numpy arrays as numpy pickles them (`numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")`
  followed by BUILD with the state `(1, shape, dtype, is_fortran, raw bytes)`; numpy 2 spells the module
  `numpy._core.multiarray`), of plain numeric dtypes (`numpy.dtype("u1", 0, 1)` + BUILD with its
  byte-order state); the array is made here with `np.frombuffer` from the raw bytes, so no numpy
  `__setstate__` runs and no array is larger than the bytes the file holds (the arrays are read-only
  views of those bytes: copy one to write into it);
- `_codecs.encode(text, "latin1")` and `bytes()`, the way Python 3 writes a byte string (an empty one) at
  protocol 2.

Any other global (`os.system`, `posix.system`, `subprocess.Popen`, `builtins.eval`, ...) is refused at the
GLOBAL opcode, before anything could call it, with one ImgnetError line naming the file and the
`module.name` it asked for; so is any opcode outside the format (object construction, persistent ids,
extension codes, sets, out-of-band buffers) and any REDUCE or BUILD other than the admitted ones.

Bounds: the input is bytes the caller read with a size limit (`load_file` reads at most `limit`), and the
number of opcodes is capped (`max_ops`), so a small file cannot make millions of objects. The machine is a
loop, not a recursion: nesting depth costs no stack.

Check what a real batch asks for with `python -m pickletools data_batch_1`: PROTO 2, EMPTY_DICT, MARK,
SHORT_BINSTRING/BINSTRING, BINPUT, GLOBAL 'numpy.core.multiarray _reconstruct', GLOBAL 'numpy ndarray',
GLOBAL 'numpy dtype', BININT1/BININT2/BININT, TUPLE1-3, REDUCE, BUILD, NEWFALSE/NEWTRUE, NONE,
EMPTY_LIST, APPENDS, SETITEMS, STOP.
"""

from __future__ import annotations

import math
import re
import struct

import numpy as np

from imagenet_prep.atomic import read_bounded
from imagenet_prep.errors import ImgnetError

__all__ = ["ADMITTED_GLOBALS", "MAX_OPS", "load_file", "loads"]

MAX_OPS = 1_000_000  # a CIFAR-100 train pickle runs about 250,000 opcodes (50,000 x label, label, name, memo)
_EXPECTED = "expected a CIFAR python batch (dicts, lists, byte strings, numbers and numpy arrays only)"

_RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
_RECONSTRUCT2 = ("numpy._core.multiarray", "_reconstruct")
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_ENCODE = ("_codecs", "encode")
_BYTES = (("__builtin__", "bytes"), ("builtins", "bytes"))  # bytes() at protocol 2: the empty byte string
ADMITTED_GLOBALS = frozenset({_RECONSTRUCT, _RECONSTRUCT2, _NDARRAY, _DTYPE, _ENCODE, *_BYTES})
_DTYPE_SPEC = re.compile(r"(b1|[ui][1248]|f[248])")  # plain numbers: no objects, records, void or strings
_BYTE_ORDERS = ("<", ">", "|", "=")


class _Global:
    """An admitted global as the stack holds it: a name, never the real callable."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _PendingArray:
    """`_reconstruct(ndarray, (0,), b"b")`: an array waiting for BUILD to give it its state."""

    __slots__ = ()


class _PendingDtype:
    """`dtype(spec, align, copy)`: a dtype waiting for BUILD to give it its byte order."""

    __slots__ = ("spec",)

    def __init__(self, spec: str):
        self.spec = spec


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class _Refused(Exception):
    """Internal: the reason a pickle is refused; loads() turns it into one ImgnetError line."""


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, str):
        return v
    raise _Refused(f"a {type(v).__name__} where a dtype code or byte order belongs")


def _reduce(func, args):
    """REDUCE for the admitted globals only, each checked against what numpy / Python write."""
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _Refused(f"a call of {type(func).__name__} (REDUCE on anything but an admitted global)")
    key = (func.module, func.name)
    if key in (_RECONSTRUCT, _RECONSTRUCT2):
        if (len(args) == 3 and isinstance(args[0], _Global) and (args[0].module, args[0].name) == _NDARRAY
                and args[1] == (0,) and args[2] in (b"b", "b")):
            return _PendingArray()
        raise _Refused(f"{func.module}.{func.name} with arguments other than numpy's (ndarray, (0,), b'b')")
    if key == _DTYPE:
        if len(args) == 3 and isinstance(args[0], (bytes, str)) and _DTYPE_SPEC.fullmatch(_text(args[0])):
            return _PendingDtype(_text(args[0]))
        raise _Refused(f"numpy.dtype{args!r:.60} (only plain numeric dtypes are admitted)")
    if key == _ENCODE:
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                raise _Refused("_codecs.encode of text outside latin-1") from None
        raise _Refused("_codecs.encode with arguments other than (text, 'latin1')")
    if key in _BYTES:
        if args == ():
            return b""
        raise _Refused(f"{func.module}.bytes with arguments (only bytes() is admitted)")
    raise _Refused(f"a call of {func.module}.{func.name}")  # numpy.ndarray itself is not called


def _build(obj, state):
    """BUILD for the two pending numpy objects: the array from its raw bytes, the dtype's byte order."""
    if isinstance(obj, _PendingDtype):
        # (version 3 or 4, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[2] is None and state[3] is None and state[4] is None):
            raise _Refused("a numpy dtype state with sub-arrays or fields")
        order = _text(state[1])
        if order not in _BYTE_ORDERS:
            raise _Refused(f"numpy dtype byte order {order!r}")
        spec = obj.spec if order in "|=" else order + obj.spec
        return np.dtype(spec)
    if isinstance(obj, _PendingArray):
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused("a numpy array state other than (version, shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape) and len(shape) <= 8):
            raise _Refused(f"a numpy array of shape {shape!r:.60}")
        if not isinstance(dtype, np.dtype) or fortran not in (True, False, 0, 1) or not isinstance(raw, bytes):
            raise _Refused("a numpy array state without a plain dtype and raw bytes")
        size = math.prod(shape)  # Python ints: no wrap-around for crafted huge dimensions
        if size * dtype.itemsize != len(raw):
            raise _Refused(f"a numpy array of shape {shape} {dtype} with {len(raw):,} data bytes "
                           f"(needs {size * dtype.itemsize:,})")
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
    raise _Refused(f"BUILD on a {type(obj).__name__} (only numpy arrays and dtypes take a state)")


class _Machine:
    """The pickle stack machine, restricted: `run` returns the object the pickle describes."""

    def __init__(self, data: bytes, max_ops: int):
        self.mv, self.pos, self.max_ops = memoryview(data), 0, max_ops
        self.stack: list = []
        self.memo: dict = {}

    # ---- argument readers
    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.mv):
            raise _Refused("truncated data (an opcode's argument runs past the end)")
        out = self.mv[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def line(self) -> str:
        end = bytes(self.mv[self.pos:self.pos + 256]).find(b"\n")
        if end < 0:
            raise _Refused("a GLOBAL name that does not end within 256 bytes")
        return _text(bytes(self.take(end + 1)[:-1]))

    def pop_mark(self) -> list:
        """The items above the topmost MARK (which is removed)."""
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise _Refused("an opcode that needs a MARK where there is none")

    def pop(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise _Refused("an opcode with an empty stack")
        return self.stack.pop()

    def top(self):
        if not self.stack or self.stack[-1] is _MARK:
            raise _Refused("an opcode with an empty stack")
        return self.stack[-1]

    def get(self, key: int):
        if key not in self.memo:
            raise _Refused(f"memo entry {key} read before it was written")
        self.stack.append(self.memo[key])

    def put(self, key: int):
        self.memo[key] = self.top()

    def glob(self, module: str, name: str):
        if (module, name) not in ADMITTED_GLOBALS:
            raise _Refused(f"the global {module}.{name}")
        self.stack.append(_Global(module, name))

    # ---- the loop
    def run(self):
        push, ops = self.stack.append, 0
        while True:
            ops += 1
            if ops > self.max_ops:
                raise _Refused(f"more than {self.max_ops:,} opcodes")
            at = self.pos
            code = bytes(self.take(1))
            if code == b"\x80":  # PROTO
                if self.unpack("<B") > 5:
                    raise _Refused("a pickle protocol above 5")
            elif code == b"\x95":  # FRAME (protocol 4): a length prefix, nothing to build
                self.unpack("<Q")
            elif code == b".":  # STOP
                value = self.pop()
                if self.stack:
                    raise _Refused("objects left on the stack at STOP")
                if isinstance(value, (_Global, _PendingArray, _PendingDtype)):
                    raise _Refused("a bare numpy reference as the result")
                return value
            elif code == b"(":
                push(_MARK)
            elif code == b"}":
                push({})
            elif code == b"]":
                push([])
            elif code == b")":
                push(())
            elif code == b"N":
                push(None)
            elif code == b"\x88":
                push(True)
            elif code == b"\x89":
                push(False)
            elif code == b"K":
                push(self.unpack("<B"))
            elif code == b"M":
                push(self.unpack("<H"))
            elif code == b"J":
                push(self.unpack("<i"))
            elif code == b"\x8a":  # LONG1
                push(int.from_bytes(self.take(self.unpack("<B")), "little", signed=True))
            elif code == b"G":  # BINFLOAT
                push(self.unpack(">d"))
            elif code == b"U":  # SHORT_BINSTRING: Python 2 str, bytes as with encoding="bytes"
                push(bytes(self.take(self.unpack("<B"))))
            elif code == b"T":  # BINSTRING
                push(bytes(self.take(self.unpack("<i"))))
            elif code == b"C":  # SHORT_BINBYTES
                push(bytes(self.take(self.unpack("<B"))))
            elif code == b"B":  # BINBYTES
                push(bytes(self.take(self.unpack("<I"))))
            elif code == b"\x8e":  # BINBYTES8
                push(bytes(self.take(self.unpack("<Q"))))
            elif code in (b"X", b"\x8c", b"\x8d"):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                n = self.unpack({b"X": "<I", b"\x8c": "<B", b"\x8d": "<Q"}[code])
                try:
                    push(str(self.take(n), "utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise _Refused("text that is not UTF-8") from None
            elif code == b"q":
                self.put(self.unpack("<B"))
            elif code == b"r":
                self.put(self.unpack("<I"))
            elif code == b"\x94":  # MEMOIZE
                self.put(len(self.memo))
            elif code == b"h":
                self.get(self.unpack("<B"))
            elif code == b"j":
                self.get(self.unpack("<I"))
            elif code == b"t":
                push(tuple(self.pop_mark()))
            elif code in (b"\x85", b"\x86", b"\x87"):  # TUPLE1-3
                n = code[0] - 0x84
                if len(self.stack) < n or any(v is _MARK for v in self.stack[-n:]):
                    raise _Refused("a TUPLE opcode with too few items")
                items = tuple(self.stack[-n:])
                del self.stack[-n:]
                push(items)
            elif code == b"l":
                push(self.pop_mark())
            elif code == b"d":
                items = self.pop_mark()
                push(self.to_dict({}, items))
            elif code == b"a":
                value = self.pop()
                self.as_list(self.top()).append(value)
            elif code == b"e":
                items = self.pop_mark()
                self.as_list(self.top()).extend(items)
            elif code == b"s":
                value, key = self.pop(), self.pop()
                self.to_dict(self.top(), [key, value])
            elif code == b"u":
                items = self.pop_mark()
                self.to_dict(self.top(), items)
            elif code == b"0":  # POP
                self.stack.pop() if self.stack else None
            elif code == b"c":  # GLOBAL
                module = self.line()
                self.glob(module, self.line())
            elif code == b"\x93":  # STACK_GLOBAL (protocol 4)
                name, module = self.pop(), self.pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise _Refused("a STACK_GLOBAL without two names")
                self.glob(module, name)
            elif code == b"R":  # REDUCE
                args = self.pop()
                push(_reduce(self.pop(), args))
            elif code == b"b":  # BUILD
                state = self.pop()
                push(_build(self.pop(), state))
            else:
                raise _Refused(f"opcode {code!r} at byte {at}, which no CIFAR batch uses")

    @staticmethod
    def as_list(obj) -> list:
        if not isinstance(obj, list):
            raise _Refused(f"APPEND to a {type(obj).__name__}")
        return obj

    @staticmethod
    def to_dict(obj, items: list) -> dict:
        if not isinstance(obj, dict) or len(items) % 2:
            raise _Refused(f"SETITEM on a {type(obj).__name__} or with an odd number of items")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, (bytes, str, int)):
                raise _Refused(f"a dict key of type {type(k).__name__}")
            if isinstance(v, (_Global, _PendingArray, _PendingDtype)):
                raise _Refused("a numpy reference stored without being built")
            obj[k] = v
        return obj


def loads(data: bytes, origin: str, max_ops: int = MAX_OPS):
    """The object the pickle `data` describes, built here without calling anything the file names.

    As `pickle.loads(data, encoding="bytes")` for the admitted content; anything else is an ImgnetError
    naming `origin` (the file, or `archive:member`) and what the pickle asked for."""
    try:
        return _Machine(data, max_ops).run()
    except _Refused as e:
        what = e.args[0]
        raise ImgnetError(f"{origin} is refused: its pickle asks for {what}; {_EXPECTED}") from None
    except (ValueError, TypeError, OverflowError, struct.error) as e:  # e.g. an unhashable key, a bad dtype
        raise ImgnetError(f"{origin} is not a readable CIFAR batch pickle ({type(e).__name__}: {e}); "
                          f"{_EXPECTED}") from None


def load_file(path, limit: int, max_ops: int = MAX_OPS):
    """`loads` of a file read with at most `limit` bytes (a larger file is refused before it is read)."""
    return loads(read_bounded(path, limit, "a CIFAR python batch"), str(path), max_ops)

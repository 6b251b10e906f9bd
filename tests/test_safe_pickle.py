"""imagenet_prep.safe_pickle: the CIFAR batch format reads as pickle does; anything else is refused, unrun."""

import copyreg
import pickle
import pickletools

import numpy as np
import pytest

try:
    import numpy._core as np_core
except ImportError:  # numpy 1
    import numpy.core as np_core

from cifar_downloads import py2_pickle
from imagenet_prep.errors import ImgnetError
from imagenet_prep.safe_pickle import ADMITTED_GLOBALS, load_file, loads


def _batch(n=5):
    rng = np.random.default_rng(1)
    return {"batch_label": "training batch 1 of 5", "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"f_{i:06d}.png" for i in range(n)]}


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_a_python_2_batch_reads_as_pickle_load_with_bytes_encoding():
    data = py2_pickle(_batch(1200))  # > 1000 items: Python 2 wrote lists in MARK ... APPENDS chunks
    got = loads(data, "data_batch_1")
    assert _same(got, pickle.loads(data, encoding="bytes"))
    assert set(got) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert got[b"data"].dtype == np.uint8 and got[b"data"].shape == (1200, 3072)
    globals_asked = {tuple(arg.split(" ")) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert globals_asked == {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    assert globals_asked <= ADMITTED_GLOBALS


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_python_3_pickles_of_the_same_content_read_as_pickle_does(protocol):
    obj = {b"data": np.arange(24, dtype="<i4").reshape(2, 3, 4), "x": [1, -5, 2**40, -(2**70), 1.5, None, True, False,
           (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (), b"ab", "\u00e9t\u00e9", [], {}],
           b"f": np.asfortranarray(np.arange(6.0).reshape(3, 2)), b"": b"", b"empty": np.zeros((0, 3072), np.uint8)}
    data = pickle.dumps(obj, protocol=protocol)
    assert _same(loads(data, "x"), pickle.loads(data, encoding="bytes"))


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                                         ("subprocess", "Popen"), ("numpy", "load"), ("__builtin__", "open")])
def test_any_other_global_is_refused_by_name_and_nothing_runs(tmp_path, module, name):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if name in ("system", "Popen") else f"open({str(marker)!r}, 'w')"
    # GLOBAL module name; MARK; the argument; TUPLE; REDUCE; STOP: what pickle.loads would run
    evil = f"c{module}\n{name}\n(S'{arg}'\ntR.".encode()
    with pytest.raises(ImgnetError) as e:
        loads(evil, "cifar-10-batches-py/data_batch_1")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cifar-10-batches-py/data_batch_1 is refused")
    assert f"{module}.{name}" in msg
    assert not marker.exists()


def test_a_reduce_hidden_inside_a_real_batch_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    batch = _batch(3)
    batch["filenames"][1] = Evil()
    data = pickle.dumps(batch, protocol=2)
    with pytest.raises(ImgnetError, match=r"asks for the global (os|posix)\.system"):
        loads(data, "data_batch_2")
    assert not marker.exists()


@pytest.mark.parametrize("payload,what", [
    # numpy's _reconstruct with other arguments than numpy writes
    (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(K\x05tU\x01btR.",
     "a call of numpy.core.multiarray._reconstruct("),
    # an object dtype (would let the array hold arbitrary objects)
    (b"cnumpy\ndtype\n(U\x02O8K\x00K\x01tR.", "a call of numpy.dtype(b'O8', 0, 1)"),
    (b"cnumpy\ndtype\n(U\x02V8K\x00K\x01tR.", "a call of numpy.dtype("),
    # numpy.ndarray called directly, or a numpy global as a value
    (b"cnumpy\nndarray\n(K\x03tR.", "a call of numpy.ndarray(3,)"),
    (b"cnumpy\ndtype\n.", "numpy.dtype as a value"),
    (b"cnumpy._core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x00\x85U\x01btR.", "a numpy array without its state"),
    # object construction through OBJ and INST still asks for the global
    (b"(cos\nsystem\nS'x'\no.", "the global os.system"),
    (b"(U\x01aios\nsystem\n.", "the global os.system"),
    (b"\x80\x02\x82\x01.", "the opcode EXT1"),  # the copyreg extension registry
    (b"P0\n.", "the opcode PERSID"),
    (b"\x80\x02K\x00Q.", "the opcode BINPERSID"),
    (b"\x80\x05\x97.", "the opcode NEXT_BUFFER"),  # a protocol 5 out-of-band buffer
    (b"\x80\x04\x8f.", "a set as a value"),
    (b"c__builtin__\nbytes\n}b.", "a state for __builtin__.bytes"),  # BUILD on an admitted global
    (b"c__builtin__\nbytes\n(U\x01atR.", "a call of __builtin__.bytes(b'a',)"),
    (b"}(K\x01\x85K\x02u.", "a dict key of type tuple"),
])
def test_other_constructs_are_refused(payload, what):
    with pytest.raises(ImgnetError) as e:
        loads(payload, "f")
    assert what in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("f is refused")


def test_an_extension_code_is_refused_by_the_name_it_stands_for_even_once_cached(tmp_path):
    marker = tmp_path / "ran"
    code = 241  # private-use range of the copyreg extension codes
    evil = b"\x80\x02\x82" + bytes([code]) + f"(S'touch {marker}'\ntR.".encode()  # EXT1 os.system, then call it
    copyreg.add_extension("os", "system", code)
    try:
        for _ in range(2):
            with pytest.raises(ImgnetError, match=r"asks for the global os\.system \(extension code 241\)"):
                loads(evil, "f")
            assert not marker.exists()
            pickle.loads(b"\x80\x02\x82" + bytes([code]) + b".")  # an ordinary load puts os.system in its cache
    finally:
        copyreg.remove_extension("os", "system", code)


class _Reduced:
    """Pickles as `func(*args)` followed by BUILD with `state`: a hand-made numpy construct."""

    def __init__(self, func, args, state):
        self.r = (func, args, state)

    def __reduce__(self):
        return self.r


def _array_pickle(dtype_state, raw=b"abc"):
    dtype = _Reduced(np.dtype, ("u1", False, True), dtype_state)
    return pickle.dumps(_Reduced(np_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                                 (1, (len(raw),), dtype, False, raw)), protocol=2)


def test_a_dtype_state_cannot_give_an_array_objects_fields_or_sub_arrays():
    plain = (3, "|", None, None, None, -1, -1, 0)
    got = loads(_array_pickle(plain), "f")
    assert got.dtype == np.uint8 and got.tobytes() == b"abc" and _same(got, pickle.loads(_array_pickle(plain)))
    # flags claiming object references (0x01 NPY_ITEM_REFCOUNT): numpy's own load would then free b"abc" as pointers
    got = loads(_array_pickle((3, "|", None, None, None, -1, -1, 0x01)), "f")
    assert got.dtype == np.uint8 and not got.dtype.hasobject and got.tobytes() == b"abc"
    for state in [(3, "|", None, ("a",), {"a": (np.dtype("u1"), 100)}, 1, 1, 0),
                  (3, "|", (np.dtype("u1"), (1000,)), None, None, 1, 1, 0)]:
        with pytest.raises(ImgnetError, match="other than \\(1, shape, plain numeric dtype"):
            loads(_array_pickle(state), "f")


def test_damaged_pickles_are_one_line():
    good = py2_pickle(_batch(2))
    for bad in (good[:-1], good[: len(good) // 2], b"", b"\x80\x02}(U\x01a]u", b"\x80\x02](K\x01]t}(h\x00K\x01u.",
                b"cnumpy\nndarray\n)\x81.",  # NEWOBJ: the admitted globals are not classes
                b"}(U\x01aK\x01u}b.",  # BUILD on a dict
                b"}q\x00U\x01ah\x00s.",  # a dict that holds itself
                b"(S'a'\ntR.", b"\xff" * 10, b"\x80\x02X\x02\x00\x00\x00\xff\xfe."):  # bad UTF-8
        with pytest.raises(ImgnetError) as e:
            loads(bad, "f")
        assert str(e.value).startswith("f ") and "\n" not in str(e.value)


def test_array_data_must_match_its_shape():
    arr = np.zeros((4, 3072), np.uint8)
    data = py2_pickle({"data": arr}).replace(b"M\x00\x0c", b"M\x00\x18")  # claim 6144 columns, keep 12,288 bytes
    with pytest.raises(ImgnetError, match=r"shape \(4, 6144\) uint8 with 12,288 data bytes"):
        loads(data, "f")


def test_memo_file_size_and_shared_references_are_bounded(tmp_path):
    with pytest.raises(ImgnetError, match="memo index 2,147,483,647 when 0 objects were memoized"):
        loads(b"\x80\x02Nr\xff\xff\xff\x7f.", "f")  # the C unpickler would allocate a 32 GiB memo table
    nested = []
    for _ in range(80):
        nested = [nested, (nested, np.zeros(2, np.uint8))]  # 2**80 paths, 160 containers: each is checked once
    got = loads(pickle.dumps(nested, protocol=2), "f")
    for _ in range(80):
        assert got[1][0] is got[0] and got[1][1].dtype == np.uint8
        got = got[0]
    many = b"\x80\x02]" + b"K\x01a" * 1000 + b"."
    path = tmp_path / "batch"
    path.write_bytes(many)
    assert load_file(path, limit=len(many)) == [1] * 1000
    with pytest.raises(ImgnetError, match=f"{len(many):,} bytes, more than the 100"):
        load_file(path, limit=100)

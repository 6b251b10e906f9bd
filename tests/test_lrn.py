"""LocalResponseNorm: the paper's formula, its groups, and the Triton kernels against the plain path.

The Triton kernels run on CPU through triton's interpreter, which needs TRITON_INTERPRET=1 before
triton is imported: `test_triton_kernels_in_interpreter` reruns this file's `interp` tests in a
child process with that variable set, so it never leaks into the other tests.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imagenet_prep.errors import ImgnetError
from trainer import lrn as lrn_mod
from trainer.lrn import LocalResponseNorm, effective_alpha, lrn_fused, lrn_plain

INTERPRETER_CHILD = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
in_child_only = pytest.mark.skipif(not INTERPRETER_CHILD, reason="runs in test_triton_kernels_in_interpreter's child process")
needs_triton = pytest.mark.skipif(not lrn_mod.triton_available(), reason="triton is not importable")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def lrn_loop(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The paper's formula written out map by map (float64)."""
    x = x.double()
    n, c, h, w = x.shape
    cg = c // groups
    out = torch.empty_like(x)
    for ch in range(c):
        lo, hi = (ch // cg) * cg, (ch // cg) * cg + cg - 1
        window = range(max(lo, ch - size // 2), min(hi, ch + size // 2) + 1)
        s = sum(x[:, j] ** 2 for j in window)
        out[:, ch] = x[:, ch] / (k + alpha * s) ** beta
    return out


def lrn_grad_loop(x, g, size, alpha, beta, k, groups):
    """Closed-form input gradient, the formula the Triton backward implements (float64):
    grad a_i = g_i d_i^-beta - 2 alpha beta a_i sum_{c: i in window(c)} g_c a_c d_c^(-beta-1)."""
    x, g = x.double(), g.double()
    n, c, h, w = x.shape
    cg = c // groups

    def window(ch):
        lo, hi = (ch // cg) * cg, (ch // cg) * cg + cg - 1
        return range(max(lo, ch - size // 2), min(hi, ch + size // 2) + 1)

    d = torch.stack([k + alpha * sum(x[:, j] ** 2 for j in window(ch)) for ch in range(c)], 1)
    out = torch.empty_like(x)
    for i in range(c):
        cs = [ch for ch in range(c) if i in window(ch)]
        cross = sum(g[:, ch] * x[:, ch] * d[:, ch] ** (-beta - 1) for ch in cs)
        out[:, i] = g[:, i] * d[:, i] ** -beta - 2 * alpha * beta * x[:, i] * cross
    return out


# ------------------------------------------------------------------------------ the plain path
@pytest.mark.parametrize("convention, expected", [("paper", 1.78271), ("caffe", 1.78359)])
def test_worked_example_tells_the_conventions_apart(convention, expected):
    x = torch.tensor([1.0, 2.0, 3.0, 1.5, 0.5], dtype=torch.float64).view(1, 5, 1, 1)
    y = LocalResponseNorm(convention=convention)(x)
    assert abs(y[0, 2, 0, 0].item() - expected) < 1e-5


def test_paper_constants_and_alpha_conventions():
    m = LocalResponseNorm()
    assert (m.size, m.alpha, m.beta, m.k, m.convention, m.groups) == (5, 1e-4, 0.75, 2.0, "paper", 1)
    assert effective_alpha(1e-4, 5, "paper") == 1e-4
    assert effective_alpha(1e-4, 5, "caffe") == pytest.approx(2e-5)


def test_caffe_convention_equals_torch_lrn():
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64) * 20
    ours = LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention="caffe")(x)
    theirs = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 3, 5, 7])
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_plain_matches_direct_loop(size, groups):
    torch.manual_seed(size * 10 + groups)
    x = torch.randn(2, 12, 3, 4, dtype=torch.float64) * 30  # activations of the 0-255 input scale
    for alpha in (1e-4, 1e-2):
        y = lrn_plain(x, size, alpha, 0.75, 2.0, groups)
        torch.testing.assert_close(y, lrn_loop(x, size, alpha, 0.75, 2.0, groups), rtol=1e-12, atol=1e-12)


def test_plain_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    # a large alpha makes the cross-map terms of the gradient matter
    assert torch.autograd.gradcheck(lambda t: lrn_plain(t, 5, 0.5, 0.75, 1.0, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: lrn_plain(t, 3, 0.5, 0.75, 1.0, 1), (x,))


def test_closed_form_backward_matches_autograd():
    torch.manual_seed(1)
    x = (torch.randn(2, 16, 2, 3, dtype=torch.float64) * 10).requires_grad_()
    g = torch.randn(2, 16, 2, 3, dtype=torch.float64)
    lrn_plain(x, 5, 1e-2, 0.75, 2.0, 2).backward(g)
    torch.testing.assert_close(x.grad, lrn_grad_loop(x.detach(), g, 5, 1e-2, 0.75, 2.0, 2), rtol=1e-10, atol=1e-12)


def test_groups_never_mix():
    torch.manual_seed(2)
    x = torch.randn(2, 96, 3, 3) * 30
    x2 = x.clone()
    x2[:, 47] += 100.0  # last map of tower 0 (conv1: maps 0-47 and 48-95)
    grouped = LocalResponseNorm(groups=2)
    y, y2 = grouped(x), grouped(x2)
    assert torch.equal(y[:, 48:], y2[:, 48:])
    assert not torch.allclose(y[:, 45:47], y2[:, 45:47])  # the perturbation does reach its own tower
    plain = LocalResponseNorm(groups=1)
    assert not torch.allclose(plain(x)[:, 48:50], plain(x2)[:, 48:50])  # without groups it crosses


def test_half_precision_plain_path_computes_in_float32():
    x = torch.randn(2, 16, 3, 3) * 30
    y = lrn_plain(x.bfloat16(), 5, 1e-4, 0.75, 2.0, 2)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), lrn_plain(x.bfloat16().float(), 5, 1e-4, 0.75, 2.0, 2), rtol=1e-2, atol=1e-2)


def test_channels_last_input_keeps_its_layout_on_the_plain_path():
    x = torch.randn(2, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    assert LocalResponseNorm(groups=2)(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kwargs", [dict(size=4), dict(size=0), dict(convention="cuda-convnet"), dict(groups=0)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ImgnetError):
        LocalResponseNorm(**kwargs)


def test_channels_not_divisible_by_groups_raise():
    with pytest.raises(ImgnetError, match="groups=2"):
        LocalResponseNorm(groups=2)(torch.randn(1, 5, 2, 2))


def test_cpu_tensors_take_the_plain_path():
    m = LocalResponseNorm(groups=2)
    assert not m.fused(torch.randn(1, 96, 2, 2))


def test_fused_rejects_unsupported_shapes():
    with pytest.raises(ImgnetError, match="multiple of 8"):
        lrn_fused(torch.randn(1, 12, 2, 2), 5, 1e-4, 0.75, 2.0, 1)
    assert not lrn_mod.fused_supported(torch.randn(1, 96, 2, 2), 11, 2)
    assert lrn_mod.fused_supported(torch.randn(1, 96, 2, 2), 5, 2)


@pytest.mark.parametrize("size", [2, 4, 6])
def test_fused_refuses_even_sizes(size):
    # an even size has no centred window: the kernels' 2 * (size // 2) + 1 maps would be size + 1
    x = torch.randn(1, 16, 2, 2)
    assert not lrn_mod.fused_supported(x, size, 2)
    with pytest.raises(ImgnetError, match=f"size {size} is not valid; expected an odd"):
        lrn_fused(x, size, 1e-4, 0.75, 2.0, 2)


# ------------------------------------------------- the imgnet::lrn_fused operator (plain CPU kernel)
OP_CASES = [((2, 16, 3, 4), 5, 2), ((2, 24, 2, 3), 3, 1), ((1, 16, 2, 2), 9, 2), ((2, 8, 3, 3), 1, 1)]


def _op_input(shape, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return (torch.randn(*shape, dtype=dtype) * 30), torch.randn(*shape, dtype=dtype)


@pytest.mark.skipif(INTERPRETER_CHILD, reason="the parent tests the plain CPU kernel")
@pytest.mark.parametrize("shape, size, groups", OP_CASES)
def test_op_cpu_kernel_matches_float64_reference(shape, size, groups):
    x, g = _op_input(shape, seed=size)
    xr = x.clone().requires_grad_()
    y = lrn_fused(xr, size, 1e-2, 0.75, 2.0, groups)  # a large alpha makes the cross-map terms matter
    y.backward(g)
    assert y.is_contiguous(memory_format=torch.channels_last) and xr.grad.dtype == x.dtype
    torch.testing.assert_close(y.double(), lrn_loop(x, size, 1e-2, 0.75, 2.0, groups), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xr.grad.double(), lrn_grad_loop(x, g, size, 1e-2, 0.75, 2.0, groups), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(INTERPRETER_CHILD, reason="the parent tests the plain CPU kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_forward_and_backward_operators(dtype):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of both operators."""
    x, g = _op_input((2, 16, 3, 3), dtype)
    torch.library.opcheck(torch.ops.imgnet.lrn_fused.default, (x.requires_grad_(), 5, 1e-4, 0.75, 2.0, 2))
    torch.library.opcheck(torch.ops.imgnet.lrn_fused_backward.default, (x.detach(), g, 5, 1e-4, 0.75, 2.0, 2))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.imgnet.lrn_fused.default, (xc, 3, 1e-2, 0.75, 1.0, 1))


@pytest.mark.skipif(INTERPRETER_CHILD, reason="the parent tests the plain CPU kernel")
def test_op_compiles_in_one_graph_with_aot_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def f(t):  # the op between ordinary ops, as in the network (ReLU -> LRN -> pool)
        return F.max_pool2d(lrn_fused(torch.relu(t), 5, 1e-2, 0.75, 2.0, 2), 3, 2)

    compiled = torch.compile(f, fullgraph=True, backend=counter)
    x, _ = _op_input((2, 16, 7, 7), seed=4)
    xc, xe = x.clone().requires_grad_(), x.double().requires_grad_()
    y = compiled(xc)
    y.sum().backward()
    F.max_pool2d(lrn_loop(torch.relu(xe), 5, 1e-2, 0.75, 2.0, 2), 3, 2).sum().backward()
    assert counter.frame_count == 1  # one graph, no break at the LRN
    ops = {n.target for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.imgnet.lrn_fused.default in ops
    torch.testing.assert_close(y.double(), F.max_pool2d(lrn_loop(torch.relu(x), 5, 1e-2, 0.75, 2.0, 2), 3, 2),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad.double(), xe.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(INTERPRETER_CHILD, reason="the parent tests the plain CPU kernel")
def test_alexnet_with_the_fused_op_has_no_graph_break(monkeypatch):
    """The model's own LRN modules routed through the operator (on CPU the plain kernel): one graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from trainer.model import AlexNet

    monkeypatch.setenv("IMGNET_LRN", "fused")
    assert LocalResponseNorm(groups=2).fused(torch.randn(1, 96, 2, 2))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")  # graph capture only: what fullgraph is about
    model = AlexNet(num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224) * 60
    with torch.no_grad():
        y = torch.compile(model, fullgraph=True, backend=counter)(x)
        monkeypatch.undo()
        ref = model(x)  # plain path
    assert counter.frame_count == 1
    ops = [n.target for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.imgnet.lrn_fused.default) == 2
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------- Triton kernels, interpreted on CPU
def _compare_fused(shape, groups, size=5, alpha=1e-4, channels_last=True, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(*shape) * 30
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape)
    xf, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf = lrn_fused(xf, size, alpha, 0.75, 2.0, groups)
    yp = lrn_plain(xp, size, alpha, 0.75, 2.0, groups)
    yf.backward(g)
    yp.backward(g)
    torch.testing.assert_close(yf, yp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf.grad, xp.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf.grad.double(), lrn_grad_loop(x, g, size, alpha, 0.75, 2.0, groups), rtol=1e-4, atol=1e-5)
    return yf


@in_child_only
@pytest.mark.parametrize("shape, groups", [((2, 96, 3, 5), 2), ((2, 256, 3, 3), 1), ((3, 16, 2, 3), 2), ((1, 8, 1, 1), 1)])
def test_interp_fused_matches_plain(shape, groups):
    y = _compare_fused(shape, groups)
    assert y.is_contiguous(memory_format=torch.channels_last)


@in_child_only
@pytest.mark.parametrize("size", [1, 3, 9])
def test_interp_fused_other_sizes(size):
    _compare_fused((2, 48, 2, 3), 2, size=size, alpha=1e-2, seed=size)


@in_child_only
def test_interp_fused_caffe_alpha_and_nchw_input():
    _compare_fused((2, 96, 2, 3), 2, alpha=effective_alpha(1e-4, 5, "caffe"), channels_last=False)


@in_child_only
@pytest.mark.parametrize("dtype, ulp", [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
def test_interp_fused_half_precision_in_and_out(dtype, ulp):
    torch.manual_seed(3)
    x = (torch.randn(2, 96, 3, 3) * 30).to(dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 96, 3, 3).to(dtype)
    xf = x.clone().requires_grad_()
    y = lrn_fused(xf, 5, 1e-4, 0.75, 2.0, 2)
    y.backward(g)
    xp = x.float().requires_grad_()  # float32 on the same rounded values: the kernels accumulate in float32
    yp = lrn_plain(xp, 5, 1e-4, 0.75, 2.0, 2)
    yp.backward(g.float())
    assert y.dtype == dtype and xf.grad.dtype == dtype
    torch.testing.assert_close(y.float(), yp, rtol=ulp, atol=ulp)  # within one storage ulp
    torch.testing.assert_close(xf.grad.float(), xp.grad, rtol=ulp, atol=ulp)


@in_child_only
def test_interp_fused_keeps_tower_boundary():
    x = torch.randn(2, 96, 2, 2) * 30
    x2 = x.clone()
    x2[:, 47] += 100.0
    y, y2 = lrn_fused(x, 5, 1e-4, 0.75, 2.0, 2), lrn_fused(x2, 5, 1e-4, 0.75, 2.0, 2)
    assert torch.equal(y[:, 48:], y2[:, 48:])
    assert not torch.allclose(y[:, 45:47], y2[:, 45:47])


@in_child_only
def test_interp_fused_saves_only_its_input():
    x = (torch.randn(2, 16, 2, 2) * 30).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = lrn_fused(x, 5, 1e-4, 0.75, 2.0, 2)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


@needs_triton
@pytest.mark.skipif(INTERPRETER_CHILD, reason="this is the parent")
def test_triton_kernels_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interp_",
                        str(Path(__file__))], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) == 12, r.stdout[-2000:]


# ------------------------------------------------- Triton kernels, compiled for an H100 (no GPU needed)
@needs_triton
@pytest.mark.skipif(INTERPRETER_CHILD, reason="the interpreter does not compile")
def test_kernels_compile_for_sm90_with_one_vector_pass():
    """bf16 kernels for sm_90: 16-byte vector loads of the activation (the 8-map row and its two
    neighbour rows, which come from cache), one 16-byte store, no register spills."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"triton's compiler API is not available: {e}")

    def compile_kernel(fn, n_ptr):
        sig = {}
        for i, name in enumerate(fn.arg_names):
            sig[name] = ("*bf16" if i < n_ptr else "fp32" if name in ("alpha", "beta", "k")
                         else "i32" if name == "T" else "constexpr")
        consts = dict(QC=12, QG=6, HALF=2, BLOCK_R=128, FAST=True)  # conv1, two towers
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(n_ptr)}
        try:
            return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "enable_fp_fusion": True})
        except (TypeError, AttributeError) as e:  # an internal API that moved between triton versions
            pytest.skip(f"triton.compile API differs: {e}")

    for fn, n_ptr, loads in ((lrn_mod._lrn_fwd, 2, 3), (lrn_mod._lrn_bwd, 3, 6)):
        ptx = compile_kernel(fn, n_ptr).asm["ptx"]
        assert len(re.findall(r"ld\.global\.v4\.b32", ptx)) == loads, fn
        assert not re.findall(r"ld\.global\.(?!v4)", ptx), fn  # no scalar (unaligned) loads
        assert len(re.findall(r"st\.global\.v4\.b32", ptx)) == 1, fn
        assert ".local" not in ptx and "ld.shared" not in ptx, fn  # registers only


# --------------------------------------------------------------------------------------- on a GPU
@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape, groups", [((16, 96, 55, 55), 2), ((16, 256, 27, 27), 2), ((4, 48, 7, 7), 1)])
def test_gpu_fused_matches_float64(dtype, shape, groups):
    torch.manual_seed(0)
    x = (torch.randn(*shape, device="cuda") * 30).to(dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    m = LocalResponseNorm(groups=groups)
    xr = x.detach().requires_grad_()
    assert m.fused(xr)
    y = m(xr)
    y.backward(g)
    x64 = x.double().requires_grad_()
    y64 = lrn_plain(x64, 5, 1e-4, 0.75, 2.0, groups)
    y64.backward(g.double())
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]  # a few storage ulps
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), y64, rtol=tol, atol=tol)
    torch.testing.assert_close(xr.grad.double(), x64.grad, rtol=tol, atol=tol)


@gpu
@needs_cuda
@needs_triton
def test_gpu_plain_path_can_be_forced(monkeypatch):
    x = torch.randn(2, 96, 5, 5, device="cuda")
    m = LocalResponseNorm(groups=2)
    assert m.fused(x)
    monkeypatch.setenv("IMGNET_LRN", "plain")
    assert not m.fused(x)
    monkeypatch.delenv("IMGNET_LRN")
    m.use_triton = False
    assert not m.fused(x)


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_opcheck_with_the_triton_kernels(dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 96, 13, 13, device="cuda") * 30).to(dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.imgnet.lrn_fused.default, (x.clone().requires_grad_(), 5, 1e-4, 0.75, 2.0, 2))
    torch.library.opcheck(torch.ops.imgnet.lrn_fused_backward.default, (x, g, 5, 1e-4, 0.75, 2.0, 2))


@gpu
@needs_cuda
@needs_triton
def test_gpu_compiled_alexnet_keeps_the_fused_lrn_in_one_graph():
    from torch._dynamo.testing import CompileCounterWithBackend

    from trainer.model import AlexNet

    torch.manual_seed(0)
    torch._dynamo.reset()
    model = AlexNet(num_classes=10, dropout=0.0).cuda().to(memory_format=torch.channels_last)
    x = (torch.randn(8, 3, 224, 224, device="cuda") * 60).contiguous(memory_format=torch.channels_last)
    assert model.features.lrn1.fused(torch.empty(1, 96, 1, 1, device="cuda").contiguous(memory_format=torch.channels_last))
    counter = CompileCounterWithBackend("aot_eager")  # the real Triton kernels inside an AOT-traced graph
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = torch.compile(model, fullgraph=True, backend=counter)(x)
        ref = model(x)
    y.float().sum().backward()
    assert counter.frame_count == 1
    ops = [n.target for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.imgnet.lrn_fused.default) == 2
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert model.features.conv1.weight.grad is not None

"""Local response normalisation, Krizhevsky et al. (2012) section 3.3.

    b_c = a_c / (k + alpha' * sum_{j in window(c)} a_j^2)^beta

window(c) = maps max(lo, c - n//2) .. min(hi, c + n//2) of the same group (tower), where lo..hi are
that group's maps; alpha' = alpha for the paper's formula, alpha / n for Caffe, cuda-convnet2 and
`torch.nn.LocalResponseNorm`.

Two implementations of one function:
- `lrn_plain`: a few PyTorch ops; any device and dtype; the reference and the CPU path.
- `lrn_fused`: Triton kernels behind the custom operator `imgnet::lrn_fused` (torch.library, with its
  autograd formula and a fake implementation, so torch.compile keeps it in one graph), for CUDA. The forward reads the
  activation once and writes the output once; the backward recomputes the window sums from the saved
  input (nothing else is saved: the ReLU in front of the LRN already keeps that tensor alive) and
  reads the input and the incoming gradient once, writing the input gradient once. Accumulation is
  float32 whatever the storage dtype (bf16, fp16 or fp32).

`LocalResponseNorm` picks the fused path for CUDA tensors when triton imports; the attribute
`use_triton = False` or the environment variable IMGNET_LRN=plain forces the plain path, and
IMGNET_LRN=fused the operator (on CPU its plain kernel: compiled graphs can be checked anywhere).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from imagenet_prep.errors import ImgnetError

try:  # optional: the plain path needs no triton. TRITON_INTERPRET=1 must be set before this import.
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception:
    triton = None

CONVENTIONS = ("paper", "caffe")


def effective_alpha(alpha: float, size: int, convention: str) -> float:
    """The factor in front of the plain window sum of squares."""
    return alpha if convention == "paper" else alpha / size


def lrn_plain(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN in plain PyTorch; `alpha` multiplies the plain sum (pass `effective_alpha(...)`).

    x: (N, C, H, W), C divisible by groups. Half-precision inputs are computed in float32 and the
    result is returned in the input dtype.
    """
    n, c, h, w = x.shape
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    cg = c // groups
    # (N*G, C/G + size - 1, H, W): the squares of each group with zero maps around them, so a window
    # clips at the group's first and last maps and never leaves its group; the window sum is a sum of
    # `size` shifted slices (plain ops that torch.compile handles too)
    sq = F.pad(xf.square().reshape(n * groups, cg, h, w), (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window = sum(sq[:, j:j + cg] for j in range(size))
    d = window.reshape(n, c, h, w).mul(alpha).add(k)  # k + alpha * window sum
    return (xf * d.pow(-beta)).to(x.dtype)


# ------------------------------------------------------------------------------------ Triton path
# The kernels see a channels_last activation as a flat array of 8-map blocks ("rows": one pixel's
# maps 8q..8q+7). A program loads a tile of rows plus the row before and the row after each (the
# maps 8q-8..8q+15, 16-byte vector loads; the neighbours come from L1/L2), splits the tile into its
# 8 columns in registers and forms every window from those 24 columns. Tower boundaries fall on
# block boundaries (maps per tower divisible by 8), so a neighbour row of another tower (or of the
# next pixel) is masked out as a whole and windows never cross towers.
BLOCK_MAPS = 8
MAX_FUSED_SIZE = 9  # the backward needs squares up to 2 * (size // 2) maps away: within one neighbour block


if triton is not None:
    @triton.jit
    def _columns(x):
        # (R, 8) -> the 8 columns (R,), map 8q + i in column i; register moves only
        a, b = tl.split(tl.reshape(x, (x.shape[0], 2, 2, 2)))  # split the last factor first: i = 4 i2 + 2 i1 + i0
        a0, a1 = tl.split(a)
        b0, b1 = tl.split(b)
        c0, c4 = tl.split(a0)
        c2, c6 = tl.split(a1)
        c1, c5 = tl.split(b0)
        c3, c7 = tl.split(b1)
        return c0, c1, c2, c3, c4, c5, c6, c7

    @triton.jit
    def _rows(c):
        # inverse of _columns: 8 columns (R,) -> (R, 8)
        a = tl.join(tl.join(c[0], c[4]), tl.join(c[2], c[6]))
        b = tl.join(tl.join(c[1], c[5]), tl.join(c[3], c[7]))
        z = tl.join(a, b)
        return tl.reshape(z, (z.shape[0], 8))

    @triton.jit
    def _load_window(ptr, T, QC: tl.constexpr, QG: tl.constexpr, BLOCK_R: tl.constexpr):
        # 24 float32 columns (R,): maps 8q-8 .. 8q+15 of each row, zero outside the row's tower.
        # QC: rows per pixel (C / 8); QG: rows per tower (C / groups / 8).
        t = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row index (int32: rows < 2^31)
        ok = t < T
        q = (t % QC) % QG  # row within its tower
        offs = (t.to(tl.int64) * 8)[:, None] + tl.arange(0, 8)[None, :]
        mid = tl.load(ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
        left = tl.load(ptr + offs - 8, mask=(ok & (q != 0))[:, None], other=0.0).to(tl.float32)
        right = tl.load(ptr + offs + 8, mask=(ok & (q != QG - 1))[:, None], other=0.0).to(tl.float32)
        return _columns(left) + _columns(mid) + _columns(right), offs, ok

    @triton.jit
    def _window_sum(v, m, HALF: tl.constexpr):
        s = v[m]
        for o in tl.static_range(1, HALF + 1):
            s += v[m - o] + v[m + o]
        return s

    @triton.jit
    def _log2(d, FAST: tl.constexpr):
        # d >= k > 0; the MUFU approximation (abs. error about 2^-22) instead of libdevice's
        # accurate log2f, which costs some 20 instructions per value in a memory-bound kernel
        if FAST:
            return libdevice.fast_log2f(d)
        else:
            return tl.log2(d)

    @triton.jit
    def _lrn_fwd(x_ptr, y_ptr, T, alpha, beta, k, QC: tl.constexpr, QG: tl.constexpr,
                 HALF: tl.constexpr, BLOCK_R: tl.constexpr, FAST: tl.constexpr):
        x, offs, ok = _load_window(x_ptr, T, QC, QG, BLOCK_R)
        sq = ()
        for m in tl.static_range(24):
            sq = sq + (x[m] * x[m],)
        y = ()
        for i in tl.static_range(8):
            d = k + alpha * _window_sum(sq, 8 + i, HALF)
            y = y + (x[8 + i] * tl.exp2(-beta * _log2(d, FAST)),)  # a d^-beta
        tl.store(y_ptr + offs, _rows(y).to(y_ptr.dtype.element_ty), mask=ok[:, None])

    @triton.jit
    def _lrn_bwd(x_ptr, g_ptr, gx_ptr, T, alpha, beta, k, QC: tl.constexpr, QG: tl.constexpr,
                 HALF: tl.constexpr, BLOCK_R: tl.constexpr, FAST: tl.constexpr):
        # grad a_i = g_i d_i^-beta - 2 alpha beta a_i sum_{c: i in window(c)} g_c a_c d_c^(-beta-1);
        # the window is symmetric, so the c are window(i) itself.
        x, offs, ok = _load_window(x_ptr, T, QC, QG, BLOCK_R)
        g, _, _ = _load_window(g_ptr, T, QC, QG, BLOCK_R)
        sq = ()
        for m in tl.static_range(24):
            sq = sq + (x[m] * x[m],)
        # maps 8-HALF .. 15+HALF of the 24: every c that some map of the row needs
        d_pow = ()  # d_c^-beta
        t = ()  # g_c a_c d_c^(-beta-1)
        for m in tl.static_range(8 - HALF, 16 + HALF):
            log_d = _log2(k + alpha * _window_sum(sq, m, HALF), FAST)
            d_pow = d_pow + (tl.exp2(-beta * log_d),)
            t = t + (g[m] * x[m] * tl.exp2((-beta - 1.0) * log_d),)
        gx = ()
        for i in tl.static_range(8):
            cross = _window_sum(t, HALF + i, HALF)
            gx = gx + (g[8 + i] * d_pow[HALF + i] - 2.0 * alpha * beta * x[8 + i] * cross,)
        tl.store(gx_ptr + offs, _rows(gx).to(gx_ptr.dtype.element_ty), mask=ok[:, None])


def triton_available() -> bool:
    """True when triton imported (the fused path also needs the tensor on CUDA, or TRITON_INTERPRET=1)."""
    return triton is not None


def fused_supported(x: torch.Tensor, size: int, groups: int) -> bool:
    """Whether `lrn_fused` takes this input: 4-D, maps per tower a multiple of 8, odd size <= 9, a float dtype."""
    return (x.dim() == 4 and x.shape[1] % groups == 0 and (x.shape[1] // groups) % BLOCK_MAPS == 0
            and size % 2 == 1 and size <= MAX_FUSED_SIZE and x.dtype in (torch.float32, torch.float16, torch.bfloat16))


def _launch(kernel, tensors, x: torch.Tensor, size, alpha, beta, k, groups):
    c = x.shape[1]
    rows = x.numel() // BLOCK_MAPS
    assert rows < 2**31, "row index is int32 in the kernels"
    block_r = 128  # 4 warps, one 8-map row per thread
    grid = (-(-rows // block_r),)
    # Triton launches on the current device: make it the tensor's (model parallel: tower 1 on cuda:1)
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        kernel[grid](*tensors, rows, float(alpha), float(beta), float(k),
                     QC=c // BLOCK_MAPS, QG=c // groups // BLOCK_MAPS, HALF=size // 2, BLOCK_R=block_r,
                     FAST=not _interpreting(), num_warps=4, enable_fp_fusion=True)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels_for(x: torch.Tensor) -> bool:
    """Whether the operator runs the Triton kernels on x (else the plain formulas, on any device)."""
    return triton is not None and (x.is_cuda or _interpreting())


# ------------------------------------------------------------------------- the custom operator
# `imgnet::lrn_fused` and its backward are torch.library operators (torch >= 2.4), so torch.compile
# keeps them as one opaque node with a known output (the fake implementations) instead of breaking
# the graph at a Python autograd.Function around a Triton launch. CUDA runs the Triton kernels; on
# CPU they run in triton's interpreter under TRITON_INTERPRET=1, and otherwise (or without triton)
# the same formulas run in plain PyTorch, so the operator can be checked and compiled anywhere.
def _plain_window_sum(v: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """sum over the `size` maps centred on each map (odd size), clipped at the tower edges; float (N, C, H, W)."""
    n, c, h, w = v.shape
    cg = c // groups
    pad = F.pad(v.reshape(n * groups, cg, h, w), (0, 0, 0, 0, size // 2, size // 2))
    return sum(pad[:, j:j + cg] for j in range(size)).reshape(n, c, h, w)


def _cl_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)  # the kernels' layout, x's dtype


@torch.library.custom_op("imgnet::lrn_fused", mutates_args=())
def lrn_fused_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """LRN forward: x (N, C, H, W) float/half -> channels_last output of x's dtype."""
    y = _cl_like(x)
    if not x.numel():
        return y
    if _kernels_for(x):
        _launch(_lrn_fwd, (x.contiguous(memory_format=torch.channels_last), y), x, size, alpha, beta, k, groups)
    else:
        y.copy_(lrn_plain(x, size, alpha, beta, k, groups))
    return y


@torch.library.custom_op("imgnet::lrn_fused_backward", mutates_args=())
def lrn_fused_backward_op(x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                          groups: int) -> torch.Tensor:
    """Input gradient of `lrn_fused_op` from its input x and the output gradient g (channels_last, x's dtype).

    grad a_i = g_i d_i^-beta - 2 alpha beta a_i sum_{c: i in window(c)} g_c a_c d_c^(-beta-1), where
    d = k + alpha * window sum of a^2; the window is symmetric, so the c are window(i) itself."""
    gx = _cl_like(x)
    if not x.numel():
        return gx
    if _kernels_for(x):
        cl = torch.channels_last
        _launch(_lrn_bwd, (x.contiguous(memory_format=cl), g.contiguous(memory_format=cl), gx), x,
                size, alpha, beta, k, groups)
        return gx
    xf, gf = x.float(), g.float()  # float32 accumulation, as in the kernels
    d = _plain_window_sum(xf.square(), size, groups).mul(alpha).add(k)
    t = gf * xf * d.pow(-beta - 1.0)
    gx.copy_(gf * d.pow(-beta) - 2.0 * alpha * beta * xf * _plain_window_sum(t, size, groups))
    return gx


@lrn_fused_op.register_fake
def _(x, size, alpha, beta, k, groups):
    return _cl_like(x)


@lrn_fused_backward_op.register_fake
def _(x, g, size, alpha, beta, k, groups):
    return _cl_like(x)


def _setup_context(ctx, inputs, output):
    x, size, alpha, beta, k, groups = inputs
    ctx.save_for_backward(x)  # only the input: the ReLU in front of the LRN keeps it alive anyway
    ctx.params = (size, alpha, beta, k, groups)


def _backward(ctx, g):
    (x,) = ctx.saved_tensors
    return lrn_fused_backward_op(x, g, *ctx.params), None, None, None, None, None


lrn_fused_op.register_autograd(_backward, setup_context=_setup_context)


def lrn_fused(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN through the `imgnet::lrn_fused` operator: the Triton kernels on CUDA (or on CPU under
    TRITON_INTERPRET=1), the same formulas in plain PyTorch on CPU otherwise.

    Same arguments and result as `lrn_plain` for inputs where `fused_supported` holds (odd size, as
    the window is centred). Input in any memory format (other than channels_last it is copied to
    channels_last first); the output and the input gradient are channels_last.
    """
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise ImgnetError(f"fused LRN size {size!r} is not valid; expected an odd positive integer (a window "
                          f"centred on its map: the paper uses 5)")
    if not fused_supported(x, size, groups):
        raise ImgnetError(f"fused LRN does not take input {tuple(x.shape)} {x.dtype} with size={size}, "
                          f"groups={groups}; expected (N, C, H, W) float with C/groups a multiple of "
                          f"{BLOCK_MAPS} and size <= {MAX_FUSED_SIZE}")
    return lrn_fused_op(x, size, float(alpha), float(beta), float(k), groups)


# ----------------------------------------------------------------------------------------- module
class LocalResponseNorm(nn.Module):
    """LRN across maps within each of `groups` towers (section 3.3; paper constants as defaults).

    convention="paper": alpha multiplies the plain window sum; "caffe": alpha / size does
    (Caffe, cuda-convnet2, torch.nn.LocalResponseNorm).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "paper", groups: int = 1):
        super().__init__()
        if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
            raise ImgnetError(f"LRN size {size!r} is not valid; expected an odd positive integer (the paper uses 5)")
        if convention not in CONVENTIONS:
            raise ImgnetError(f"LRN convention {convention!r} is not known; expected one of {', '.join(CONVENTIONS)}")
        if not (isinstance(groups, int) and groups >= 1):
            raise ImgnetError(f"LRN groups {groups!r} is not valid; expected a positive integer")
        self.size, self.alpha, self.beta, self.k = size, float(alpha), float(beta), float(k)
        self.convention, self.groups = convention, groups
        self.use_triton = True  # False forces the plain path (as does IMGNET_LRN=plain)

    def fused(self, x: torch.Tensor) -> bool:
        """Whether forward(x) takes the `imgnet::lrn_fused` operator: CUDA, channels_last (the kernels'
        layout; an NCHW input would cost a copy each way, so it takes the plain path), a supported
        shape. IMGNET_LRN=fused takes the operator for any supported shape on any device (on CPU its
        plain kernel), to check compiled graphs on a machine without a GPU."""
        mode = os.environ.get("IMGNET_LRN", "")
        if not self.use_triton or mode == "plain" or not fused_supported(x, self.size, self.groups):
            return False
        if mode == "fused":
            return True
        return x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) and triton_available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] % self.groups:
            raise ImgnetError(f"LRN input of shape {tuple(x.shape)} is not valid; expected (N, C, H, W) "
                              f"with C divisible by groups={self.groups}")
        alpha = effective_alpha(self.alpha, self.size, self.convention)
        fn = lrn_fused if self.fused(x) else lrn_plain
        return fn(x, self.size, alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, k={self.k:g}, "
                f"convention={self.convention!r}, groups={self.groups}")

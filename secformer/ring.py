"""Local arithmetic in Z_2^64 on uint64 arrays (Numba kernels, cached on disk).

numpy already wraps uint64 ``+ - *`` mod 2^64, so elementwise ops use numpy directly. What numpy
lacks is a fast ring matmul: its uint64 matmul has no BLAS. :func:`matmul` splits each operand
into three balanced limbs (22, 21, 21 bits, shifts 0, 22, 43) held exactly in float64 and
computes the limb products whose shift is below 64 with float64 BLAS:

    A @ B = A0B0 + 2^22 (A0B1 + A1B0) + 2^43 (A0B2 + A2B0 + 2 A1B1)   (mod 2^64)

the middle term by Karatsuba's identity, A0B1 + A1B0 = (A0 + A1)(B0 + B1) - A0B0 - A1B1: five
products instead of six (for sums of up to 4096 terms; longer ones, such as a vocabulary-wide
embedding product, keep the six). Each limb product over a chunk of at most 896 terms (2048
without the sums of limbs) is below 2^53 in magnitude, so BLAS computes it exactly; the
products are converted to int64 and summed in the ring.
Small products go to a Numba integer kernel instead (BLAS set-up does not pay off there).
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np

_U = np.uint64
K_CHUNK = 2048  # |limb| <= 2^21 -> |limb product| <= 2^42 -> 2048 terms <= 2^53: exact
SMALL_MATMUL = 64 * 64 * 64  # below this many multiply-adds the Numba kernel is faster


@nb.njit(parallel=True, cache=True)
def _split3(x: np.ndarray) -> np.ndarray:
    """Balanced limbs of each element: out[0] in [-2^21, 2^21), out[1], out[2] in [-2^20, 2^20)."""
    n = x.size
    flat = x.ravel()
    out = np.empty((3, n), np.float64)
    for i in nb.prange(n):
        v = flat[i]
        l0 = np.int64((v + _U(1 << 21)) & _U((1 << 22) - 1)) - (1 << 21)
        r = (v - _U(l0)) >> _U(22)
        l1 = np.int64((r + _U(1 << 20)) & _U((1 << 21) - 1)) - (1 << 20)
        r2 = (r - _U(l1)) >> _U(21)
        l2 = np.int64((r2 + _U(1 << 20)) & _U((1 << 21) - 1)) - (1 << 20)
        out[0, i] = l0
        out[1, i] = l1
        out[2, i] = l2
    return out


@nb.njit(cache=True)
def _combine(out, t00, t01, t10, t02, t20, t11):
    """out += t00 + 2^22 (t01 + t10) + 2^43 (t02 + t20 + 2 t11), each term exact in int64."""
    o = out.ravel()
    a, b, c = t00.ravel(), t01.ravel(), t10.ravel()
    d, e, f = t02.ravel(), t20.ravel(), t11.ravel()
    for i in range(o.size):
        lo = _U(np.int64(a[i]))
        mid = _U(np.int64(b[i])) + _U(np.int64(c[i]))
        hi = _U(np.int64(d[i])) + _U(np.int64(e[i])) + _U(2) * _U(np.int64(f[i]))
        o[i] += lo + (mid << _U(22)) + (hi << _U(43))


@nb.njit(parallel=True, cache=True)
def _matmul_int(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    M, K = a.shape
    N = b.shape[1]
    c = np.zeros((M, N), np.uint64)
    for i in nb.prange(M):
        for k in range(K):
            aik = a[i, k]
            for j in range(N):
                c[i, j] += aik * b[k, j]
    return c


class Limbs:
    """A matrix pre-split into float64 limbs; reuse it when one operand is fixed (weights).

    A matrix whose values (read as signed) lie in [-2^21, 2^21), such as fixed-point weights of
    magnitude below 32, keeps one limb: its products need 3 BLAS calls instead of 5."""

    __slots__ = ("limbs", "lsum", "shape")

    def __init__(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.uint64)
        self.shape = x.shape
        limbs = _split3(x).reshape((3, *x.shape))
        if not limbs[1].any() and not limbs[2].any():
            limbs = limbs[:1].copy()
        self.limbs = limbs
        self.lsum: np.ndarray | None = None  # limbs[0] + limbs[1], once keep_sum() formed it

    def keep_sum(self) -> Limbs:
        """Form and keep :attr:`lsum`, Karatsuba's middle operand (8 B more per element; a product
        with this matrix as its right operand then skips that pass). A no-op where no product uses
        it (one limb, or more rows than :func:`uses_limb_sum` allows). Returns self."""
        if self.uses_sum and self.lsum is None:
            self.lsum = self.limbs[0] + self.limbs[1]
        return self

    @property
    def uses_sum(self) -> bool:
        """Whether a product with this matrix as its right operand uses :attr:`lsum`."""
        return self.limbs.shape[0] == 3 and len(self.shape) == 2 and uses_limb_sum(self.shape[0])

    @property
    def nbytes(self) -> int:
        return self.limbs.nbytes + (0 if self.lsum is None else self.lsum.nbytes)


_WORKSPACE: dict[tuple[int, ...], np.ndarray] = {}


def _workspace(shape: tuple[int, ...]) -> np.ndarray:
    """A float64 buffer of ``shape`` reused across calls (the limb products): fresh temporaries
    cost page faults comparable to the BLAS work itself (measured: 6 dgemm 7.8x -> 5.9x of one)."""
    w = _WORKSPACE.get(shape)
    if w is None:
        if len(_WORKSPACE) > 32:
            _WORKSPACE.clear()
        w = _WORKSPACE[shape] = np.empty(shape, np.float64)
    return w


@nb.njit(cache=True)
def _combine3(out, t0, t1, t2):
    """out += t0 + 2^22 t1 + 2^43 t2 (the products of a three-limb matrix with a one-limb one)."""
    o = out.ravel()
    a, b, c = t0.ravel(), t1.ravel(), t2.ravel()
    for i in range(o.size):
        o[i] += _U(np.int64(a[i])) + (_U(np.int64(b[i])) << _U(22)) + (_U(np.int64(c[i])) << _U(43))


THREADED_MATMUL = 1 << 24  # multiply-adds from which a one-limb product runs on two threads
_POOL: list[Any] = []


def _pool() -> Any:
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(2, thread_name_prefix="ring-matmul"))
    return _POOL[0]


def _matmul_one_limb(A: Limbs, B: Limbs) -> np.ndarray:
    """A (three limbs) @ B (one limb): the three limb products as one dgemm of the stacked limbs
    (3M x K @ K x N), its rows split over two threads when large (BLAS releases the GIL: the
    other core is idle while the peer waits for this product)."""
    M, K = A.shape
    N = B.shape[1]
    out = np.zeros((M, N), np.uint64)
    stacked = A.limbs.reshape(3 * M, K)
    t = _workspace((3 * M, N))
    half = (3 * M + 1) // 2
    threaded = M * K * N >= THREADED_MATMUL
    for k0 in range(0, K, K_CHUNK):
        s = slice(k0, min(K, k0 + K_CHUNK))
        if threaded:
            top = _pool().submit(np.matmul, stacked[:half, s], B.limbs[0][s], out=t[:half])
            np.matmul(stacked[half:, s], B.limbs[0][s], out=t[half:])
            top.result()
        else:
            np.matmul(stacked[:, s], B.limbs[0][s], out=t)
        _combine3(out, t[:M], t[M : 2 * M], t[2 * M :])
    return out


_LIMB_PAIRS = ((0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1))  # limb products below 2^64
# |l0 + l1| <= 1.5 * 2^21 -> |(a0 + a1)(b0 + b1)| <= 2.25 * 2^42 -> at most 910 terms stay below 2^53
KARATSUBA_CHUNK = 896
# beyond this many terms the six products in chunks of 2048 are as fast (measured on a vocabulary-
# sized sum, 30522 terms: five products in 35 chunks took 4-10% longer than six in 15)
KARATSUBA_MAX_K = 4096


def uses_limb_sum(terms: int) -> bool:
    """Whether a product of three-limb operands summing ``terms`` terms takes Karatsuba's path."""
    return terms <= KARATSUBA_MAX_K


@nb.njit(cache=True)
def _combine5(out, p00, p11, pm, p02, p20):
    """out += p00 + 2^22 (pm - p00 - p11) + 2^43 (p02 + p20 + 2 p11): Karatsuba's five products of
    three-limb operands (each an exact integer below 2^53, so exact in int64)."""
    o = out.ravel()
    a, b, m = p00.ravel(), p11.ravel(), pm.ravel()
    d, e = p02.ravel(), p20.ravel()
    for i in range(o.size):
        lo = np.int64(a[i])
        hi1 = np.int64(b[i])
        mid = np.int64(m[i]) - lo - hi1
        hi = np.int64(d[i]) + np.int64(e[i]) + 2 * hi1
        o[i] += _U(lo) + (_U(mid) << _U(22)) + (_U(hi) << _U(43))


def _karatsuba_products(al: np.ndarray, bl: np.ndarray, bsum: np.ndarray | None = None) -> np.ndarray:
    """The product of three-limb operands al (3, ..., M, K) and bl (3, ..., K, N) from five limb
    products, combined mod 2^64 (``bsum``: bl[0] + bl[1] if already formed, e.g. for weights).
    Large products split their rows over two threads, each doing all five products on its rows
    (BLAS releases the GIL)."""
    *lead, M, K = al.shape[1:]
    N = bl.shape[-1]
    out = np.zeros((*lead, M, N), np.uint64)
    asum = al[0] + al[1]
    if bsum is None:
        bsum = bl[0] + bl[1]
    t = _workspace((5, *lead, M, N))
    threaded = math.prod(lead) * M * K * N >= THREADED_MATMUL and M >= 2
    chunks = -(-K // KARATSUBA_CHUNK)
    step = -(-K // chunks)
    half = M // 2
    for k0 in range(0, K, step):
        s = slice(k0, min(K, k0 + step))

        def products(r: slice, s: slice = s) -> None:
            np.matmul(al[0][..., r, s], bl[0][..., s, :], out=t[0][..., r, :])
            np.matmul(al[1][..., r, s], bl[1][..., s, :], out=t[1][..., r, :])
            np.matmul(asum[..., r, s], bsum[..., s, :], out=t[2][..., r, :])
            np.matmul(al[0][..., r, s], bl[2][..., s, :], out=t[3][..., r, :])
            np.matmul(al[2][..., r, s], bl[0][..., s, :], out=t[4][..., r, :])

        if threaded:
            other = _pool().submit(products, slice(0, half))
            products(slice(half, M))
            other.result()
        else:
            products(slice(0, M))
        _combine5(out, t[0], t[1], t[2], t[3], t[4])
    return out


def _matmul_limbs(A: Limbs, B: Limbs) -> np.ndarray:
    if B.limbs.shape[0] == 1 and A.limbs.shape[0] == 3:
        return _matmul_one_limb(A, B)
    return _limb_products(A.limbs, B.limbs, B.lsum)


def _limb_products(al: np.ndarray, bl: np.ndarray, bsum: np.ndarray | None = None) -> np.ndarray:
    """The limb products below 2^64 of limbs al (na, ..., M, K) and bl (nb, ..., K, N), a batch
    of leading dimensions or none, combined mod 2^64: Karatsuba's five for three-limb operands
    and sums of up to KARATSUBA_MAX_K terms (``bsum``: bl[0] + bl[1] if kept), else the six, of
    which large products run three on a second thread (BLAS releases the GIL)."""
    na, nb = al.shape[0], bl.shape[0]
    if na == nb == 3 and uses_limb_sum(al.shape[-1]):
        return _karatsuba_products(al, bl, bsum)
    *lead, M, K = al.shape[1:]
    N = bl.shape[-1]
    out = np.zeros((*lead, M, N), np.uint64)
    t = _workspace((6, *lead, M, N))
    threaded = math.prod(lead) * M * K * N >= THREADED_MATMUL
    for k0 in range(0, K, K_CHUNK):
        s = slice(k0, min(K, k0 + K_CHUNK))

        def products(js: tuple[int, ...], s: slice = s) -> None:
            for j in js:
                ia, ib = _LIMB_PAIRS[j]
                if ia < na and ib < nb:  # a one-limb operand has no products with its limbs 1, 2
                    np.matmul(al[ia][..., s], bl[ib][..., s, :], out=t[j])
                else:
                    t[j].fill(0.0)

        if threaded:
            other = _pool().submit(products, (3, 4, 5))
            products((0, 1, 2))
            other.result()
        else:
            products((0, 1, 2, 3, 4, 5))
        _combine(out, t[0], t[1], t[2], t[3], t[4], t[5])
    return out


def matmul(a: np.ndarray | Limbs, b: np.ndarray | Limbs) -> np.ndarray:
    """Exact product of uint64 matrices mod 2^64; batched over leading dimensions like numpy.

    Either operand may be a :class:`Limbs` (pre-split) when it is reused across calls.
    """
    if isinstance(a, Limbs) or isinstance(b, Limbs):
        A = a if isinstance(a, Limbs) else Limbs(a)
        B = b if isinstance(b, Limbs) else Limbs(b)
        if len(A.shape) != 2 or len(B.shape) != 2:
            raise ValueError("Limbs operands must be 2-D")
        _check_inner(A.shape, B.shape)
        return _matmul_limbs(A, B)
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if a.ndim == 1 or b.ndim == 1:
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        out = matmul(a2, b2)
        if a.ndim == 1:
            out = out[..., 0, :]
        if b.ndim == 1:
            out = out[..., 0]
        return out
    _check_inner(a.shape, b.shape)
    if a.ndim == 2 and b.ndim == 2:
        M, K = a.shape
        N = b.shape[1]
        if M * K * N <= SMALL_MATMUL or K == 0:
            return _matmul_int(np.ascontiguousarray(a), np.ascontiguousarray(b))
        return _matmul_limbs(Limbs(a), Limbs(b))
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_b = np.broadcast_to(a, (*batch, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
    b_b = np.broadcast_to(b, (*batch, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
    M, K = a.shape[-2:]
    N = b.shape[-1]
    if M * K * N <= SMALL_MATMUL or K == 0:
        out = np.empty((a_b.shape[0], M, N), np.uint64)
        for i in range(a_b.shape[0]):
            out[i] = matmul(a_b[i], b_b[i])
    else:
        out = _matmul_batched(a_b, b_b)
    return out.reshape(*batch, M, N)


def _matmul_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (B, M, K) @ b (B, K, N) mod 2^64: each operand split once and the six limb products run
    as stacked matmuls (numpy loops over the batch in C): the attention's per-head products cost
    a few calls instead of a few per head."""
    al = _split3(np.ascontiguousarray(a)).reshape(3, *a.shape)
    bl = _split3(np.ascontiguousarray(b)).reshape(3, *b.shape)
    return _limb_products(al, bl)


def _check_inner(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    if sa[-1] != sb[-2]:
        raise ValueError(f"matmul shape mismatch: {sa} @ {sb}")


def matmul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Slow, obviously correct ring matmul (Python ints via object arrays) for tests."""
    ao = np.asarray(a, dtype=np.uint64).astype(object)
    bo = np.asarray(b, dtype=np.uint64).astype(object)
    return (np.matmul(ao, bo) % (1 << 64)).astype(np.uint64)


def warmup() -> None:
    """Load every kernel (from Numba's disk cache, or compile once) before timing starts."""
    a = np.ones((70, 70), np.uint64)
    matmul(a, a)
    matmul(a[:8, :8], a[:8, :8])
    w = a.ravel()
    unpack_bits(pack_bits(w, 3), w.size, 3)


def tune_malloc() -> bool:
    """Keep freed large blocks in glibc's heap instead of unmapping them.

    Shares are large short-lived arrays; by default glibc maps each one fresh and the kernel
    zero-fills every page on first touch, which on this VM costs as much as the arithmetic.
    Called once at party start. Returns False where mallopt is unavailable (non-glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30)
        ok &= libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        ok &= libc.mallopt(m_top_pad, 256 << 20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def no_huge_pages() -> bool:
    """Stop numpy from asking the kernel for transparent huge pages for its large arrays.

    numpy marks every array of 4 MB or more ``MADV_HUGEPAGE``. On a host whose memory is
    fragmented the kernel then compacts memory inside the page fault: measured on our 2-core VM,
    filling a fresh 86 MB array took 0.65-1.1 s that way against 0.06 s with ordinary pages, and
    a received 86 MB frame went at 92-103 MB/s instead of 750 MB/s. Called once at role start
    (with :func:`tune_malloc`); it affects this process only. Returns False where this numpy
    has no such switch."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # type: ignore[no-redef]
        except ImportError:
            return False
    _set_madvise_hugepage(False)
    return True


# ---------------------------------------------------------------- truncation (local, 0 rounds)


def truncate_share(share: np.ndarray, bits: int, party: int) -> np.ndarray:
    """SecureML local truncation of one party's share by 2^bits (no communication).

    P0 computes floor(x0 / 2^d) on x0 read as signed; P1 computes -floor(-x1 / 2^d).
    If x = x0 + x1 with |x| < 2^62, the reconstruction is floor(x / 2^d) + {0, 1}, i.e. the
    error is at most 1 unit in the last place, except with probability at most |x| / 2^63
    (the shares wrap around 2^63), when the result is off by about 2^(64 - d). See
    docs/PROTOCOLS.md for the derivation; tests check both rates statistically.
    """
    s = share.view(np.int64)
    if party == 0:
        return (s >> bits).view(np.uint64)
    return (-((-s) >> bits)).view(np.uint64)


# ---------------------------------------------------------------- bit packing for binary shares


@nb.njit(cache=True)
def pack_bits(words: np.ndarray, nbits: int) -> np.ndarray:
    """Pack the low ``nbits`` (1..64) of each word densely into bytes (wire form of bit shares)."""
    n = words.size
    total = n * nbits
    nwords = (total + 63) // 64
    buf = np.zeros(nwords + 1, np.uint64)
    mask = _U(0xFFFFFFFFFFFFFFFF) if nbits == 64 else (_U(1) << _U(nbits)) - _U(1)
    pos = 0
    for i in range(n):
        w = words[i] & mask
        q = pos >> 6
        r = pos & 63
        buf[q] |= w << _U(r)
        if r + nbits > 64:
            buf[q + 1] |= w >> _U(64 - r)
        pos += nbits
    return buf.view(np.uint8)[: (total + 7) // 8].copy()


@nb.njit(cache=True)
def unpack_bits(data: np.ndarray, n: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`."""
    total = n * nbits
    nwords = (total + 63) // 64
    buf = np.zeros((nwords + 1) * 8, np.uint8)
    buf[: data.size] = data
    b = buf.view(np.uint64)
    out = np.empty(n, np.uint64)
    mask = _U(0xFFFFFFFFFFFFFFFF) if nbits == 64 else (_U(1) << _U(nbits)) - _U(1)
    pos = 0
    for i in range(n):
        q = pos >> 6
        r = pos & 63
        w = b[q] >> _U(r)
        if r + nbits > 64:
            w |= b[q + 1] << _U(64 - r)
        out[i] = w & mask
        pos += nbits
    return out


# ---------------------------------------------------------------- comparison tree kernels


@nb.njit(inline="always")
def _even(w):
    """Bits 0, 2, 4, ... of w gathered into bits 0, 1, 2, ... (parallel bit extract)."""
    w &= _U(0x5555555555555555)
    w = (w | (w >> _U(1))) & _U(0x3333333333333333)
    w = (w | (w >> _U(2))) & _U(0x0F0F0F0F0F0F0F0F)
    w = (w | (w >> _U(4))) & _U(0x00FF00FF00FF00FF)
    w = (w | (w >> _U(8))) & _U(0x0000FFFF0000FFFF)
    w = (w | (w >> _U(16))) & _U(0x00000000FFFFFFFF)
    return w


@nb.njit(parallel=True, cache=True)
def ltz_mask_low(x, r, add, drop, nbits):
    """((x + add + r) >> drop) mod 2^nbits per element: a comparison's masked share, cut to the
    bits it opens (flat)."""
    n = x.size
    xf = x.ravel()
    rf = r.ravel()
    lo = (_U(1) << _U(nbits)) - _U(1)
    out = np.empty(n, np.uint64)
    for i in nb.prange(n):
        out[i] = ((xf[i] + add + rf[i]) >> _U(drop)) & lo
    return out


@nb.njit(parallel=True, cache=True)
def ltz_leaves(c, R, k, fill, party):
    """The carry tree's leaves for public c against shared r (bits XOR-shared in R) on the low
    k bits: g = ~c & r, p = ~c ^ r (party 0 holds the public part), with party 0 setting the
    neutral leaves ``fill`` in p."""
    n = c.size
    lo = (_U(1) << _U(k)) - _U(1)
    G = np.empty(n, np.uint64)
    P = np.empty(n, np.uint64)
    for i in nb.prange(n):
        nc = ~c[i]
        G[i] = nc & R[i] & lo
        if party == 0:
            P[i] = ((nc ^ R[i]) & lo) | fill
        else:
            P[i] = R[i] & lo
    return G, P


@nb.njit(parallel=True, cache=True)
def ltz_root(G, R, c, top, flip, party):
    """XOR share of the comparison's bit: the root carry G ^ r_top, with party 0 adding c_top
    (and 1 when ``flip``)."""
    n = G.size
    t = _U(top)
    bit = np.empty(n, np.uint64)
    for i in nb.prange(n):
        b = (G[i] ^ (R[i] >> t)) & _U(1)
        if party == 0:
            b ^= ((c[i] >> t) & _U(1)) ^ _U(flip)
        bit[i] = b
    return bit


def level_plane_bytes(n: int, pairs: int) -> int:
    """Bytes of one packed plane of a carry-tree level (n fields of ``pairs`` bits)."""
    return (n * pairs + 7) // 8


@nb.njit(parallel=True, cache=True)
def ltz_level_send(G, P, ta, tb1, tb2, off, pairs):
    """One carry-tree level, before opening: Gh and the masked operands e = Ph^a, f1 = Gl^b1,
    f2 = Pl^b2 already in wire form: three planes (3, words) of ``pairs``-bit fields, element i at
    bit pairs*i of its plane (``pairs``, a power of two, divides 64: no field straddles a word;
    each word is gathered in registers, so the planes cost no pass of their own). Bits of G and
    P above the level's 2 ``pairs`` leaves are ignored."""
    n = G.size
    lo = _U(0xFFFFFFFFFFFFFFFF) if pairs == 64 else (_U(1) << _U(pairs)) - _U(1)
    sh = _U(off)
    per = 64 // pairs
    nw = (n + per - 1) // per
    Gh = np.empty(n, np.uint64)
    planes = np.empty((3, nw), np.uint64)
    for q in nb.prange(nw):
        w0 = _U(0)
        w1 = _U(0)
        w2 = _U(0)
        i0 = q * per
        for j in range(min(per, n - i0)):
            i = i0 + j
            g = G[i]
            p = P[i]
            Gh[i] = _even(g >> _U(1)) & lo
            at = _U(j * pairs)
            w0 |= ((_even(p >> _U(1)) ^ (ta[i] >> sh)) & lo) << at
            w1 |= ((_even(g) ^ (tb1[i] >> sh)) & lo) << at
            w2 |= ((_even(p) ^ (tb2[i] >> sh)) & lo) << at
        planes[0, q] = w0
        planes[1, q] = w1
        planes[2, q] = w2
    return Gh, planes


@nb.njit(parallel=True, cache=True)
def ltz_level_recv(Gh, opened, ta, tb1, tb2, tc1, tc2, off, pairs, party):
    """One carry-tree level, after opening: new (G, P) = (Gh ^ Ph&Gl, Ph&Pl) by Beaver AND, where
    ``opened`` holds the opened planes (E, F1, F2): the XOR of both parties' planes from
    :func:`ltz_level_send`."""
    n = Gh.size
    lo = _U(0xFFFFFFFFFFFFFFFF) if pairs == 64 else (_U(1) << _U(pairs)) - _U(1)
    sh = _U(off)
    per = 64 // pairs
    G = np.empty(n, np.uint64)
    P = np.empty(n, np.uint64)
    for q in nb.prange((n + per - 1) // per):
        we = opened[0, q]
        w1 = opened[1, q]
        w2 = opened[2, q]
        i0 = q * per
        for j in range(min(per, n - i0)):
            i = i0 + j
            at = _U(j * pairs)
            E = (we >> at) & lo
            F1 = (w1 >> at) & lo
            F2 = (w2 >> at) & lo
            a = (ta[i] >> sh) & lo
            z1 = (E & ((tb1[i] >> sh) & lo)) ^ (F1 & a) ^ ((tc1[i] >> sh) & lo)
            z2 = (E & ((tb2[i] >> sh) & lo)) ^ (F2 & a) ^ ((tc2[i] >> sh) & lo)
            if party == 0:
                z1 ^= E & F1
                z2 ^= E & F2
            G[i] = Gh[i] ^ z1
            P[i] = z2
    return G, P


@nb.njit(inline="always")
def _every4(w):
    """Bits 0, 4, 8, ... of w gathered into bits 0, 1, 2, ... (16 groups at most)."""
    w &= _U(0x1111111111111111)
    w = (w | (w >> _U(3))) & _U(0x0303030303030303)
    w = (w | (w >> _U(6))) & _U(0x000F000F000F000F)
    w = (w | (w >> _U(12))) & _U(0x000000FF000000FF)
    return (w | (w >> _U(24))) & _U(0x000000000000FFFF)


# the seven operands of a radix-4 node, as (leaf offset in the group, from G?) in the order of
# secformer.material.FAN4_VARS: P3, P2, P1, P0, G2, G1, G0
_FAN4_SHIFT = (3, 2, 1, 0, 2, 1, 0)


@nb.njit(parallel=True, cache=True)
def fan4_level_send(G, P, Q, off, groups):
    """One radix-4 level, before opening: the top children's G3 and the seven masked operands
    (P3, P2, P1, P0, G2, G1, G0 of every group of four leaves, XOR the masks Q[0..6] at bit
    ``off``) in wire form: planes (7, words) of ``groups``-bit fields (a power of two).
    ``Q``: as in :func:`fan4_level_recv`."""
    n = G.size
    lo = (_U(1) << _U(groups)) - _U(1)
    sh = _U(off)
    per = 64 // groups
    nw = (n + per - 1) // per
    G3 = np.empty(n, np.uint64)
    planes = np.zeros((7, nw), np.uint64)
    for q in nb.prange(nw):
        i0 = q * per
        for j in range(min(per, n - i0)):
            i = i0 + j
            g = G[i]
            p = P[i]
            G3[i] = _every4(g >> _U(3)) & lo
            at = _U(j * groups)
            for v in range(7):
                w = p if v < 4 else g
                node = _every4(w >> _U(_FAN4_SHIFT[v]))
                planes[v, q] |= ((node ^ (Q[v][i] >> sh)) & lo) << at
    return G3, planes


@nb.njit(parallel=True, cache=True)
def fan4_level_recv(G3, opened, Q, off, groups, sub_term, sub_vars, sub_field, party):
    """One radix-4 level, after opening: G = G3 ^ P3 G2 ^ P3 P2 G1 ^ P3 P2 P1 G0, P = P3 P2 P1 P0.

    ``opened`` holds the opened operands E (planes of :func:`fan4_level_send`, XOR of both
    parties'). Term t is the XOR over the subsets S of its operands (one row each of
    ``sub_term``/``sub_vars``/``sub_field``) of (AND of E over the operands outside S: four
    indices into ``FAN4_VARS``, 7 for none) AND (this party's share of the product of the masks
    in S: ``Q[sub_field]``; -1 for S empty, which party 0 alone adds). ``Q``: a tuple of the
    seven masks and the mask products, each a flat array."""
    n = G3.size
    lo = (_U(1) << _U(groups)) - _U(1)
    sh = _U(off)
    per = 64 // groups
    G = np.empty(n, np.uint64)
    P = np.empty(n, np.uint64)
    B = 256  # elements per block: each subset loops over a block (vectorised); E and t stay in cache
    for blk in nb.prange((n + B - 1) // B):
        i0 = blk * B
        m = min(n, i0 + B) - i0
        E = np.empty((8, B), np.uint64)
        E[7, :] = lo  # "no operand"
        t = np.zeros((4, B), np.uint64)
        for j in range(m):
            q = (i0 + j) // per
            at = _U((i0 + j - q * per) * groups)
            for v in range(7):
                E[v, j] = (opened[v, q] >> at) & lo
        for s in range(sub_term.size):
            f = sub_field[s]
            if f < 0 and party != 0:
                continue
            a, b, c, d = sub_vars[s, 0], sub_vars[s, 1], sub_vars[s, 2], sub_vars[s, 3]
            ts = sub_term[s]
            if f >= 0:
                qf = Q[f]
                for j in range(m):
                    t[ts, j] ^= E[a, j] & E[b, j] & E[c, j] & E[d, j] & (qf[i0 + j] >> sh)
            else:
                for j in range(m):
                    t[ts, j] ^= E[a, j] & E[b, j] & E[c, j] & E[d, j]
        for j in range(m):
            G[i0 + j] = G3[i0 + j] ^ t[0, j] ^ t[1, j] ^ t[2, j]
            P[i0 + j] = t[3, j]
    return G, P


@nb.njit(parallel=True, cache=True)
def ltz_lin_finish(mine, theirs, cg, gbits, mg, Rg, h, eh, sa, smg, sRg, sah, alpha, beta, party):
    """The local end of :func:`secformer.protocols.base.ltz_mul_lin`, fused (one pass instead of
    about fifteen numpy passes over J n elements): with t = bit ^ s opened (``mine``, one bit per
    word, XOR ``theirs``, packed little-endian), c = g + 2^62 + r opened (``cg``) and e = h - a
    opened (``eh``), per block j and element i

        G = W mg - Rg (+ P at P0),  P = (c >> b) - 2^(62 - b),  W = (1 - msb(c)) 2^(64 - b)
        prod = t (alpha_j G + beta_j h) + (1 - 2t) (alpha_j (P sa + W smg - sRg) + beta_j (e sa + sah))
        out = (1 - 2t) sa (+ t at P0)

    ``sa``, ``smg``, ``sRg``, ``sah``: flat (J n); the rest flat (n). Returns (out, prod), flat."""
    n = cg.size
    J = alpha.size
    b = _U(gbits)
    off = _U(1 << (62 - gbits))
    out = np.empty(J * n, np.uint64)
    prod = np.empty(J * n, np.uint64)
    for i in nb.prange(n):
        c = cg[i]
        P = (c >> b) - off
        W = (_U(1) - (c >> _U(63))) << (_U(64) - b)
        G = W * mg[i] - Rg[i]
        if party == 0:
            G += P
        H = h[i]
        E = eh[i]
        for j in range(J):
            k = j * n + i
            t = mine[k] ^ _U((theirs[k >> 3] >> (k & 7)) & 1)
            sign = _U(1) - _U(2) * t
            s_a = sa[k]
            a = alpha[j]
            bb = beta[j]
            sG = P * s_a + W * smg[k] - sRg[k]
            sH = E * s_a + sah[k]
            prod[k] = t * (a * G + bb * H) + sign * (a * sG + bb * sH)
            o = s_a * sign
            if party == 0:
                o += t
            out[k] = o
    return out, prod


# ---------------------------------------------------------------- Fourier series kernels


TRIG_BLOCK = 256  # elements per block: the angle recurrence runs across a block, not per element


@nb.njit(inline="always")
def _phases(t, i0, m, bits):
    """sin and cos of the phases 2 pi (t mod 2^bits) / 2^bits of elements i0 .. i0 + m - 1."""
    mask = (_U(1) << _U(bits)) - _U(1)
    w = 2.0 * np.pi / float(_U(1) << _U(bits))
    s1 = np.empty(m)
    c1 = np.empty(m)
    for j in range(m):
        a = float(t[i0 + j] & mask) * w
        s1[j] = np.sin(a)
        c1[j] = np.cos(a)
    return s1, c1


@nb.njit(inline="always")
def _rotate(sk, ck, s1, c1, j):
    """Element j of (sin, cos)(k a) becomes that of (k + 1) a (angle addition with sin, cos a)."""
    s, c = sk[j], ck[j]
    sk[j] = s * c1[j] + c * s1[j]
    ck[j] = c * c1[j] - s * s1[j]


@nb.njit(parallel=True, cache=True)
def fourier_combine(delta, bits, beta, gamma, sin_t, cos_t, frac_bits):
    """sum_k enc(beta_k sin(k d) + gamma_k cos(k d)) cos(k t) + enc(beta_k cos(k d) - gamma_k sin(k d)) sin(k t)

    per element, with d = 2 pi (delta mod 2^bits) / 2^bits public and sin/cos(k t) shared
    (shape (K, n)); the result has scale 2^(2f) (truncate once afterwards). sin/cos(k d) come
    from the angle-addition recurrence (float error ~1e-15 after 64 steps), stepped for a block
    of elements at a time so that the compiler vectorises it (1.6x faster than per element).
    """
    n = delta.size
    K = beta.size
    out = np.empty(n, np.uint64)
    scale = float(1 << frac_bits)
    for blk in nb.prange((n + TRIG_BLOCK - 1) // TRIG_BLOCK):
        i0 = blk * TRIG_BLOCK
        m = min(n, i0 + TRIG_BLOCK) - i0
        s1, c1 = _phases(delta, i0, m, bits)
        sk = s1.copy()
        ck = c1.copy()
        acc = np.zeros(m, np.uint64)
        for k in range(K):
            b = beta[k]
            g = gamma[k]
            for j in range(m):
                u = (b * sk[j] + g * ck[j]) * scale
                v = (b * ck[j] - g * sk[j]) * scale
                acc[j] += _U(np.int64(np.rint(u))) * cos_t[k, i0 + j] + _U(np.int64(np.rint(v))) * sin_t[k, i0 + j]
                _rotate(sk, ck, s1, c1, j)
        out[i0 : i0 + m] = acc
    return out


@nb.njit(parallel=True, cache=True)
def trig_table(t, bits, K, frac_bits, minus_s, minus_c):
    """Fixed-point sin(k phi) - minus_s[k], cos(k phi) - minus_c[k], k = 1..K, phi = 2 pi (t mod
    2^bits) / 2^bits: (K, n) each (the recurrence of :func:`fourier_combine`, a block of elements
    at a time). The dealer passes P0's seeded shares as ``minus_*`` and gets P1's corrections in
    one pass, with no table of its own in memory."""
    n = t.size
    s_out = np.empty((K, n), np.uint64)
    c_out = np.empty((K, n), np.uint64)
    scale = float(1 << frac_bits)
    for blk in nb.prange((n + TRIG_BLOCK - 1) // TRIG_BLOCK):
        i0 = blk * TRIG_BLOCK
        m = min(n, i0 + TRIG_BLOCK) - i0
        s1, c1 = _phases(t, i0, m, bits)
        sk = s1.copy()
        ck = c1.copy()
        for k in range(K):
            for j in range(m):
                s_out[k, i0 + j] = _U(np.int64(np.rint(sk[j] * scale))) - minus_s[k, i0 + j]
                c_out[k, i0 + j] = _U(np.int64(np.rint(ck[j] * scale))) - minus_c[k, i0 + j]
                _rotate(sk, ck, s1, c1, j)
    return s_out, c_out

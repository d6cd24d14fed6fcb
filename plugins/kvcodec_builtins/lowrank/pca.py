"""Per-head principal component analysis of keys or values (a low-rank projection).

Keys and values of one KV head occupy a low-dimensional subspace of head_dim: a few
principal directions hold most of their variance, which low-rank KV compression exploits
(e.g. Saxena et al., 2024, "Eigen Attention: Attention in Low-Rank Space for KV Cache
Compression", arXiv:2408.05646; Chang et al., 2024, "Palu: Compressing KV-Cache with
Low-Rank Projection", arXiv:2407.21118). This stage fits the PCA on the tensor it sends
(Pearson, 1901; the eigenvectors of the per-head covariance), transmits the mean and the
basis as side information, and outputs the coefficients, which a quantizer may follow
(``pca:rank=16+int8:axis=channel``). Arithmetic and layouts in ``specs/transforms.md`` §5.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import torch

from kvcodec.codec import Form, TensorStage, side_tensor
from kvcodec.errors import CodecError, DecodeError

SIDE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
MAX_HEAD_DIM = 65535


DEFAULT_ENERGY = 0.99


def _check_energy(inst, attr, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"'energy' must be a fraction in (0, 1] (got {value})", attr)
    if inst.rank > 0 and value != DEFAULT_ENERGY:
        raise ValueError("pca takes rank=R or energy=F, not both", attr)


def components(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of symmetric ``[H, D, D]`` float64 matrices: (eigenvalues
    ``[H, D]`` in descending order, clamped at 0; eigenvectors as rows ``[H, D, D]``, each
    signed so that its entry of largest magnitude (the first such) is positive)."""
    lam, vec = torch.linalg.eigh(c)
    lam, vec = lam.flip(-1).clamp_min(0.0), vec.flip(-1).transpose(-1, -2)
    pivot = vec.abs().argmax(-1, keepdim=True)
    sign = torch.where(torch.gather(vec, -1, pivot) < 0, -1.0, 1.0).to(vec.dtype)
    return lam, vec * sign


def rank_for_energy(lam: torch.Tensor, energy: float) -> int:
    """Smallest r such that, in every head, the r largest eigenvalues hold at least
    ``energy`` of the head's total (r ≥ 1; heads with zero variance need 1)."""
    total = lam.sum(-1, keepdim=True)
    kept = lam.cumsum(-1)
    enough = kept >= energy * total
    enough[..., -1] = True  # float64 rounding must never leave a head without an answer
    return max(1, int((enough.int().argmax(-1) + 1).max()))


def coefficients(centred: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients of centred samples ``[H, N, D]`` (float64) on the rows of
    ``basis`` ``[H, r, D]`` (as transmitted): ``(x − μ) Bᵀ (B Bᵀ)⁻¹``, float64 ``[H, N, r]``.

    Raises:
        RuntimeError: if ``B Bᵀ`` is singular.
    """
    bt = basis.double()
    gram = bt @ bt.transpose(1, 2)  # [H, r, r]
    return torch.linalg.solve(gram, bt @ centred.transpose(1, 2)).transpose(1, 2)


@attrs.frozen
class PCA(TensorStage):
    """FLOAT → FLOAT: per-head PCA; sends ``rank`` coefficients per token instead of D values.

    Parameters:
        rank: number of principal components kept (≥ 1; larger than head_dim means
            head_dim); 0 (default) chooses the rank by ``energy``.
        energy: with ``rank=0``, keep the fewest components that hold at least this
            fraction of the variance in **every** head of the tensor (0 < energy ≤ 1,
            default 0.99). Give ``rank`` or ``energy``, not both.
        dtype: ``"float16"`` (default) or ``"float32"``: the dtype of the mean and basis
            sent as side information.

    encode: float ``[B,H,T,D]`` → float32 coefficients ``[B,H,T,r]`` and side information
    ``mean`` ``[H,D]`` and ``basis`` ``[H,r,D]`` (rows are the components) in ``dtype``.
    The basis is fitted per KV head over all batch rows and tokens; the coefficients are
    the least-squares fit against the *transmitted* (rounded) basis and mean, so at full
    rank the tensor is reconstructed to float rounding even with a float16 basis.
    decode: coefficients ``[B,H,T,r]`` (any float dtype) → float32 ``[B,H,T,D]``,
    ``coefficients @ basis + mean``. At rank r the squared error summed over a head is the
    sum of its discarded eigenvalues (plus rounding).

    Raises:
        ValueError: at construction, for a negative rank, an energy outside (0, 1], or both
            a rank and a non-default energy.
        CodecError: on encode, for input that is not a finite ``[B,H,T,D]`` float tensor,
            or a mean that float16 cannot hold.
        DecodeError: on decode, for coefficients or side information of the wrong shape,
            dtype, or with non-finite values.
    """

    name = "pca"
    family = "transform"
    accepts = Form.FLOAT
    produces = Form.FLOAT

    rank: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    energy: float = attrs.field(default=DEFAULT_ENERGY, validator=_check_energy)
    dtype: str = attrs.field(default="float16", validator=attrs.validators.in_(tuple(SIDE_DTYPES)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise CodecError(f"{self}: expected a [batch, kv_heads, seq_len, head_dim] float tensor")
        if not bool(torch.isfinite(x).all()):
            raise CodecError(f"{self}: cannot fit a PCA to a tensor holding inf or nan; send it with identity or fp16")
        b, h, t, d = x.shape
        side_dtype = SIDE_DTYPES[self.dtype]
        samples = x.double().permute(1, 0, 2, 3).reshape(h, b * t, d)  # [H, N, D]
        mean = samples.mean(1).to(side_dtype)  # [H, D] as sent
        if not bool(torch.isfinite(mean).all()):
            raise CodecError(f"{self}: a head's mean exceeds {self.dtype}; use dtype=float32")
        centred = samples - mean.double().unsqueeze(1)
        lam, vec = components(centred.transpose(1, 2) @ centred)
        r = min(self.rank, d) if self.rank else rank_for_energy(lam, self.energy)
        basis = vec[:, :r, :].to(side_dtype)  # [H, r, D] as sent
        try:
            coef = coefficients(centred, basis)
        except RuntimeError as exc:  # a singular Gram matrix: cannot happen for an orthonormal basis
            raise CodecError(f"{self}: the rounded basis is degenerate: {exc}") from None
        y = coef.reshape(h, b, t, r).permute(1, 0, 2, 3).float().contiguous()
        return y, {"mean": mean, "basis": basis}

    def error_bound(self, x: torch.Tensor, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per element (float64, ``[B,H,T,D]``): ``|x − (μ + c·B)|``, the part of ``x`` outside
        the transmitted basis (the discarded components, computed in float64), plus float32
        rounding of the coefficients and of the decoder's product and sum:
        ``(r + 3) · 2^-23 · (Σ_k |c_k·B_kd| + |μ_d| + |x|) + 2^-140``.
        """
        b, h, t, d = x.shape
        mean, basis = side["mean"], side["basis"]
        r = basis.shape[1]
        samples = x.double().permute(1, 0, 2, 3).reshape(h, b * t, d)
        centred = samples - mean.double().unsqueeze(1)
        coef = coefficients(centred, basis)  # [H, N, r]
        bt = basis.double()
        residual = (centred - coef @ bt).abs()
        size = coef.abs() @ bt.abs() + mean.double().abs().unsqueeze(1) + samples.abs()
        bound = residual + (r + 3) * 2.0**-23 * size + 2.0**-140
        return bound.reshape(h, b, t, d).permute(1, 0, 2, 3)

    def decode(self, y, side: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() != 4 or y.shape[3] < 1:
            raise DecodeError(f"{self}: expected [batch, kv_heads, seq_len, rank ≥ 1] float coefficients")
        _, h, _, r = y.shape
        dtypes = (torch.float16, torch.float32)
        basis = side_tensor(side, "basis", dtypes=dtypes, stage=self.name)
        if basis.dim() != 3 or tuple(basis.shape[:2]) != (h, r) or not 1 <= basis.shape[2] <= MAX_HEAD_DIM:
            raise DecodeError(f"{self}: basis has shape {tuple(basis.shape)}, expected ({h}, {r}, head_dim)")
        d = basis.shape[2]
        mean = side_tensor(side, "mean", shape=(h, d), dtypes=dtypes, stage=self.name)
        if not bool(torch.isfinite(basis).all()) or not bool(torch.isfinite(mean).all()):
            raise DecodeError(f"{self}: basis or mean holds non-finite values")
        if self.rank and r != min(self.rank, d):
            raise DecodeError(f"{self}: {r} coefficients per token, the stage keeps {min(self.rank, d)}")
        if not self.rank and r > d:
            raise DecodeError(f"{self}: {r} coefficients per token for head_dim {d}")
        # [B,H,T,r] @ [H,r,D] → [B,H,T,D], then + mean per head; float32 throughout
        return torch.matmul(y.float(), basis.float()) + mean.float()[None, :, None, :]

"""The token matrix every decomposition reads, and its streamed PCA (public helpers of the base estimator).

Input everywhere: one array ``[tokens, neurons]`` (numpy, numpy memmap or torch; float16 accepted) or a
list/tuple of such arrays of equal width, read as if stacked along tokens. The torch estimators never
concatenate a list: they stream row blocks through one reusable buffer of the compute dtype
(:class:`TokenMatrix`). :func:`principal_axes` keeps the K leading axes, by a randomized range finder (a handful
of passes of ``block @ [neurons, K + oversamples]`` matmuls) or exactly. :class:`fnet.decompose.base.BaseDecomposition`
uses them for whitening; ``bench/bench_ica.py`` uses them to check the randomized subspace.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "TokenMatrix",
    "PrincipalAxes",
    "column_stats",
    "project",
    "back_project",
    "resolve_solver",
    "principal_axes",
    "to_numpy",
]

# A streamed row block (or, for the exact wide solver, a column chunk) is sized to about this many bytes.
_BLOCK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------------------------------------------
# Input: one or many [tokens_i, neurons] arrays, read as row blocks in the compute dtype.
# ----------------------------------------------------------------------------------------------------------------


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _as_parts(X: Any) -> list:
    """Normalise the input into a list of 2-D arrays (numpy or torch), one per text, without copying."""
    if _is_array(X):
        parts = [X]
    elif isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("empty input: got an empty list of arrays (need at least one [tokens, neurons] array)")
        parts = list(X) if all(_is_array(x) for x in X) else [np.asarray(X)]
    else:  # pandas DataFrame, nested lists, ...
        parts = [np.asarray(X)]
    for index, part in enumerate(parts):
        where = f"array {index} of the list" if len(parts) > 1 else "X"
        if part.ndim != 2:
            raise ValueError(f"{where} must be 2-D [tokens, neurons]; got shape {tuple(part.shape)}")
        if isinstance(part, np.ndarray):
            if not (np.issubdtype(part.dtype, np.number) or part.dtype == np.bool_) or np.iscomplexobj(part):
                raise ValueError(f"{where} must hold real numbers; got dtype {part.dtype}")
        elif part.is_complex():
            raise ValueError(f"{where} must hold real numbers; got dtype {part.dtype}")
    widths = {int(p.shape[1]) for p in parts}
    if len(widths) > 1:
        shapes = ", ".join(f"{i}: {tuple(p.shape)}" for i, p in enumerate(parts[:8]))
        raise ValueError(f"all arrays must have the same number of neurons (columns); got shapes {shapes}")
    if widths == {0}:
        raise ValueError("empty input: X has 0 neurons (columns)")
    if sum(int(p.shape[0]) for p in parts) == 0:
        raise ValueError("empty input: X has 0 tokens (rows)")
    return parts


def _to_torch_view(rows: Any) -> torch.Tensor:
    """A torch view of a numpy/torch slice (no copy where possible); conversion happens in ``buffer.copy_``."""
    if isinstance(rows, torch.Tensor):
        return rows.detach()
    try:
        with warnings.catch_warnings():
            # memory-maps opened read-only are not writable; we only read from the view
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(rows)
    except (TypeError, ValueError):  # negative strides, non-native byte order, bool, ...
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))


class TokenMatrix:
    """One or many ``[tokens_i, neurons]`` arrays viewed as a single matrix stacked along tokens.

    Nothing is concatenated. :meth:`row_blocks` copies row blocks, converted to the compute dtype and optionally
    centred/scaled, into one reusable buffer; :meth:`column_chunks` does the same for column chunks of all rows.

    Parameters
    ----------
    X : array or list of arrays
        ``[tokens, neurons]`` (numpy, memmap or torch, any real dtype) or a list of such arrays of equal width.

    Attributes
    ----------
    parts : list
        The arrays, uncopied. part_tokens : list of int, tokens of each. n_tokens, n_neurons : int.

    Raises
    ------
    ValueError
        For empty input, arrays that are not 2-D or not real, or arrays of different widths.
    """

    def __init__(self, X: Any):
        self.parts = _as_parts(X)
        self.part_tokens = [int(p.shape[0]) for p in self.parts]
        self.n_tokens = sum(self.part_tokens)
        self.n_neurons = int(self.parts[0].shape[1])

    def _block_rows(self, dtype: torch.dtype, block_rows: int | None) -> int:
        if block_rows is not None:
            return max(1, int(block_rows))
        itemsize = torch.empty((), dtype=dtype).element_size()
        return max(1, min(self.n_tokens, _BLOCK_BYTES // (itemsize * self.n_neurons)))

    def row_blocks(
        self,
        dtype: torch.dtype,
        device: torch.device,
        block_rows: int | None = None,
        mean: torch.Tensor | None = None,  # [neurons]
        scale: torch.Tensor | None = None,  # [neurons]
    ) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """Yield ``(part_index, start, stop, block)``; ``block  # [rows, neurons]`` (rows ``start:stop`` of the
        stacked matrix), a view into a buffer that is overwritten by the next block."""
        rows_per_block = self._block_rows(dtype, block_rows)
        buffer = torch.empty((min(rows_per_block, self.n_tokens), self.n_neurons), dtype=dtype, device=device)
        offset = 0
        for part_index, part in enumerate(self.parts):
            n_part = int(part.shape[0])
            for r0 in range(0, n_part, rows_per_block):
                r1 = min(r0 + rows_per_block, n_part)
                block = buffer[: r1 - r0]
                block.copy_(_to_torch_view(part[r0:r1]))
                if mean is not None:
                    block.sub_(mean)
                if scale is not None:
                    block.div_(scale)
                yield part_index, offset + r0, offset + r1, block
            offset += n_part

    def column_chunks(
        self,
        dtype: torch.dtype,
        device: torch.device,
        mean: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``chunk  # [tokens, cols]``: all tokens of a range of neurons (for the exact Gram of a wide matrix)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        cols = max(1, min(self.n_neurons, _BLOCK_BYTES // (itemsize * self.n_tokens)))
        buffer = torch.empty((self.n_tokens, cols), dtype=dtype, device=device)
        for c0 in range(0, self.n_neurons, cols):
            c1 = min(c0 + cols, self.n_neurons)
            chunk = buffer[:, : c1 - c0]
            offset = 0
            for part in self.parts:
                n_part = int(part.shape[0])
                chunk[offset : offset + n_part].copy_(_to_torch_view(part[:, c0:c1]))
                offset += n_part
            if mean is not None:
                chunk.sub_(mean[c0:c1])
            if scale is not None:
                chunk.div_(scale[c0:c1])
            yield chunk


def column_stats(
    data: TokenMatrix, dtype: torch.dtype, device: torch.device, block_rows: int | None, with_std: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass: ``mean  # [neurons]`` (and the population std if asked, a second pass).

    Parameters
    ----------
    data : TokenMatrix
    dtype, device : the compute dtype and device. block_rows : rows per streamed block (None: ~256 MiB).
    with_std : bool
        Also return ``std  # [neurons]`` (population, around the mean).

    Returns
    -------
    (mean, std) : ``std`` is None unless asked.

    Raises
    ------
    ValueError
        On a NaN or infinity, naming the first stacked row (and the array of the list) holding one.
    """
    total = torch.zeros(data.n_neurons, dtype=torch.float64, device=device)
    for part_index, start, stop, block in data.row_blocks(dtype, device, block_rows):
        block_sum = block.sum(dim=0, dtype=torch.float64)  # [neurons]
        # a NaN/inf anywhere makes its column sum non-finite (float64 sums of finite inputs do not overflow),
        # so the full-size isfinite mask is only built to locate the culprit
        if not bool(torch.isfinite(block_sum).all()):
            bad_row = int(torch.nonzero(~torch.isfinite(block).all(dim=1))[0, 0]) + start
            where = f" (array {part_index} of the list)" if len(data.parts) > 1 else ""
            raise ValueError(
                f"X contains NaN or infinity: first non-finite value in stacked row {bad_row}{where}. "
                "Decompositions need finite activations (float16 overflows above 65504)."
            )
        total += block_sum
    mean = (total / data.n_tokens).to(dtype)
    if not with_std:
        return mean, None
    squares = torch.zeros(data.n_neurons, dtype=torch.float64, device=device)
    for _, _, _, block in data.row_blocks(dtype, device, block_rows, mean=mean):
        squares += (block.to(torch.float64) ** 2).sum(dim=0)
    std = torch.sqrt(squares / data.n_tokens).to(dtype)
    return mean, std


def project(data: TokenMatrix, basis: torch.Tensor, *, mean, scale, block_rows) -> torch.Tensor:
    """``scores  # [tokens, l] = Xc @ basis`` with ``basis  # [neurons, l]``, streamed over row blocks.

    Parameters
    ----------
    data : TokenMatrix
    basis : torch.Tensor
        ``[neurons, l]``; its dtype and device are the computation's.
    mean, scale : ``[neurons]`` or None
        ``Xc = (X - mean) / scale``.
    block_rows : int or None
        Rows per streamed block.

    Returns
    -------
    torch.Tensor
        ``scores  # [tokens, l]``.
    """
    scores = torch.empty((data.n_tokens, basis.shape[1]), dtype=basis.dtype, device=basis.device)
    for _, start, stop, block in data.row_blocks(basis.dtype, basis.device, block_rows, mean, scale):
        torch.matmul(block, basis, out=scores[start:stop])
    return scores


def back_project(data: TokenMatrix, scores: torch.Tensor, *, mean, scale, block_rows) -> torch.Tensor:
    """``basis  # [neurons, l] = Xc.T @ scores`` with ``scores  # [tokens, l]``, streamed over row blocks.

    Parameters
    ----------
    data : TokenMatrix
    scores : torch.Tensor
        ``[tokens, l]``; its dtype and device are the computation's.
    mean, scale, block_rows
        As in :func:`project`.

    Returns
    -------
    torch.Tensor
        ``basis  # [neurons, l]``.
    """
    basis = torch.zeros((data.n_neurons, scores.shape[1]), dtype=scores.dtype, device=scores.device)
    for _, start, stop, block in data.row_blocks(scores.dtype, scores.device, block_rows, mean, scale):
        basis.addmm_(block.T, scores[start:stop])
    return basis


# ----------------------------------------------------------------------------------------------------------------
# PCA of the (centred) token matrix: the K leading principal axes, randomized or exact.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PrincipalAxes:
    """The K leading principal axes of a centred token matrix ``Xc = U diag(s) V^T`` (:func:`principal_axes`).

    Attributes
    ----------
    neuron_axes : torch.Tensor
        ``[neurons, K]`` orthonormal columns, V.
    singular_values : torch.Tensor
        ``[K]`` descending, s.
    token_axes : torch.Tensor
        ``[tokens, K]`` orthonormal columns, U.
    """

    neuron_axes: torch.Tensor  # [neurons, K] orthonormal columns (right singular vectors of Xc)
    singular_values: torch.Tensor  # [K] descending
    token_axes: torch.Tensor  # [tokens, K] orthonormal columns (left singular vectors of Xc)


def _oversamples(n_oversamples: int | None, n_keep: int) -> int:
    """Extra sketch columns; None -> max(10, K).

    Why K and not a constant 10: the spectrum of real activations is flat around K = 64 (SmolLM2 mlp_out,
    9,547 tokens: sigma_64 / sigma_74 = 1.07), and with only 10 extra columns four subspace iterations leave one
    direction of the top-64 subspace at a principal cosine of 0.37 to the exact one; with 64 extra columns it is
    0.999 (bench/results_ica.md). For small K the two rules coincide.
    """
    return max(10, n_keep) if n_oversamples is None else int(n_oversamples)


def resolve_solver(solver: str, n_keep: int, n_oversamples: int | None, n_tokens: int, n_neurons: int) -> str:
    """The PCA solver to use: ``solver`` itself unless it is ``auto``.

    ``auto`` means randomized when the sketch width K + oversamples is at most a quarter of min(tokens, neurons),
    else the exact ``eigh``.

    Parameters
    ----------
    solver : {"auto", "randomized", "eigh"}
    n_keep : int
        K, the axes kept. n_oversamples : int or None, extra sketch columns (None: max(10, K)).
    n_tokens, n_neurons : int
        The matrix's shape.

    Returns
    -------
    str
        ``"randomized"`` or ``"eigh"``.
    """
    if solver != "auto":
        return solver
    sketch_width = n_keep + _oversamples(n_oversamples, n_keep)
    return "randomized" if 4 * sketch_width <= min(n_tokens, n_neurons) else "eigh"


def _randomized_pca(
    data: TokenMatrix,
    n_keep: int,
    *,
    mean,
    scale,
    n_oversamples: int | None,
    n_power_iter: int,
    rng: np.random.RandomState,
    dtype: torch.dtype,
    device: torch.device,
    block_rows: int | None,
    sketch_dtype: torch.dtype | None = None,
) -> PrincipalAxes:
    """Randomized range finder over the neuron space (Halko, Martinsson & Tropp 2011), streamed.

    The basis of ``l = K + oversamples`` neuron directions is refined by ``n_power_iter`` subspace iterations
    (each one pass for ``Xc @ basis`` and one for ``Xc.T @ scores``, QR after each), then a Rayleigh-Ritz step
    takes the exact SVD of the projection ``Xc @ basis  # [tokens, l]``. That last step makes the returned axes
    exact *within* the sketched subspace, so the whitened data below is exactly white.

    The subspace iterations run in ``sketch_dtype`` (float32 by default): they only have to find a subspace, and
    float32 rounding (~1e-7) is far below the sketch's own error (measured on SmolLM2 activations: the same
    principal angles to the exact subspace in float32 and float64, at 2.5x less time). The Rayleigh-Ritz pass and
    everything after run in ``dtype``.
    """
    sketch_dtype = dtype if sketch_dtype is None else sketch_dtype
    sketch_width = min(n_keep + _oversamples(n_oversamples, n_keep), data.n_tokens, data.n_neurons)
    gaussian = rng.standard_normal(size=(data.n_neurons, sketch_width))  # [neurons, l]
    basis = torch.linalg.qr(torch.as_tensor(gaussian, dtype=sketch_dtype, device=device)).Q  # [neurons, l]
    sketch_stream = dict(
        mean=None if mean is None else mean.to(sketch_dtype),
        scale=None if scale is None else scale.to(sketch_dtype),
        block_rows=block_rows,
    )
    for _ in range(n_power_iter):
        scores = torch.linalg.qr(project(data, basis, **sketch_stream)).Q  # [tokens, l]
        basis = torch.linalg.qr(back_project(data, scores, **sketch_stream)).Q  # [neurons, l]
    basis = torch.linalg.qr(basis.to(dtype)).Q  # re-orthonormalised in the compute dtype
    projection = project(data, basis, mean=mean, scale=scale, block_rows=block_rows)  # [tokens, l]
    left, singular_values, right_h = torch.linalg.svd(projection, full_matrices=False)
    return PrincipalAxes(
        neuron_axes=basis @ right_h[:n_keep].T,
        singular_values=singular_values[:n_keep],
        token_axes=left[:, :n_keep],
    )


def _exact_pca(
    data: TokenMatrix, n_keep: int, *, mean, scale, dtype: torch.dtype, device: torch.device, block_rows
) -> PrincipalAxes:
    """Exact PCA via ``eigh`` of the smaller Gram matrix, streamed.

    Tall data (tokens >= neurons): covariance ``Xc.T @ Xc  # [neurons, neurons]`` accumulated over row blocks.
    Wide data: ``Xc @ Xc.T  # [tokens, tokens]`` accumulated over column chunks of all texts.
    """
    stream = dict(mean=mean, scale=scale, block_rows=block_rows)
    if data.n_tokens >= data.n_neurons:
        gram = torch.zeros((data.n_neurons, data.n_neurons), dtype=dtype, device=device)
        for _, _, _, block in data.row_blocks(dtype, device, block_rows, mean, scale):
            gram.addmm_(block.T, block)
    else:
        gram = torch.zeros((data.n_tokens, data.n_tokens), dtype=dtype, device=device)
        for chunk in data.column_chunks(dtype, device, mean, scale):
            gram.addmm_(chunk, chunk.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    order = torch.argsort(eigenvalues, descending=True)[:n_keep]
    _check_rank(eigenvalues[order], n_keep, data, dtype)  # on eigenvalues: their error is eps * largest
    singular_values = eigenvalues[order].clamp_min(0).sqrt()
    if data.n_tokens >= data.n_neurons:
        neuron_axes = eigenvectors[:, order]
        token_axes = project(data, neuron_axes, **stream) / singular_values
    else:
        token_axes = eigenvectors[:, order]
        neuron_axes = back_project(data, token_axes, **stream) / singular_values
    return PrincipalAxes(neuron_axes=neuron_axes, singular_values=singular_values, token_axes=token_axes)


def _check_rank(spectrum: torch.Tensor, n_keep: int, data: TokenMatrix, dtype: torch.dtype) -> None:
    """Whitening divides by the singular values: refuse a K beyond the data's numerical rank.

    ``spectrum  # [K]`` descending: singular values (randomized path, from an SVD) or Gram eigenvalues (exact
    path, whose rounding error is eps * largest eigenvalue); either way, values below
    ``largest * max(tokens, neurons) * eps`` are numerically zero.
    """
    largest = float(spectrum[0])
    cutoff = largest * max(data.n_tokens, data.n_neurons) * torch.finfo(dtype).eps
    rank = int((spectrum > cutoff).sum()) if largest > 0 else 0
    if rank < n_keep:
        raise ValueError(
            f"the centred data has numerical rank {rank} (within the {n_keep} leading components), fewer than "
            f"n_components={n_keep}: lower n_components or check for constant/duplicated neurons and tokens"
        )


def principal_axes(
    data: TokenMatrix,
    n_keep: int,
    solver: str,
    *,
    mean,
    scale,
    n_oversamples,
    n_power_iter,
    rng,
    dtype,
    device,
    block_rows,
    sketch_dtype=None,
) -> PrincipalAxes:
    """The ``n_keep`` leading principal axes of ``Xc = (X - mean) / scale``, streamed.

    Parameters
    ----------
    data : TokenMatrix
    n_keep : int
        K.
    solver : {"randomized", "eigh"}
        Randomized range finder with a Rayleigh-Ritz step, or exact (``eigh`` of the smaller Gram matrix); see
        :func:`resolve_solver`.
    mean, scale : ``[neurons]`` tensors or None
    n_oversamples, n_power_iter : int
        Extra sketch columns (None: max(10, K)) and subspace iterations of the randomized solver.
    rng : numpy.random.RandomState
        Draws the randomized solver's Gaussian sketch.
    dtype, device, block_rows : the computation's dtype, device and rows per block.
    sketch_dtype : torch.dtype, optional
        Precision of the subspace iterations only (default ``dtype``).

    Returns
    -------
    PrincipalAxes
        Signed by scikit-learn's convention: the first neuron loads positively on every axis.

    Raises
    ------
    ValueError
        When the data's numerical rank is below ``n_keep``.
    """
    if solver == "randomized":
        result = _randomized_pca(
            data,
            n_keep,
            mean=mean,
            scale=scale,
            n_oversamples=n_oversamples,
            n_power_iter=n_power_iter,
            rng=rng,
            dtype=dtype,
            device=device,
            block_rows=block_rows,
            sketch_dtype=sketch_dtype,
        )
        _check_rank(result.singular_values, n_keep, data, dtype)
    else:
        result = _exact_pca(data, n_keep, mean=mean, scale=scale, dtype=dtype, device=device, block_rows=block_rows)
    # scikit-learn's sign convention (u *= sign(u[0])): the first neuron loads positively on every axis, so that a
    # given w_init means the same rotation for both backends. Where that entry is exactly 0 (a dead neuron), use
    # the entry of largest magnitude instead of zeroing the axis as sign(0) would.
    signs = torch.sign(result.neuron_axes[0])
    dead = signs == 0
    if bool(dead.any()):
        rows = result.neuron_axes.abs().argmax(dim=0)
        fallback = torch.sign(result.neuron_axes[rows, torch.arange(n_keep, device=rows.device)])
        signs = torch.where(dead, fallback, signs)
    result.neuron_axes = result.neuron_axes * signs
    result.token_axes = result.token_axes * signs
    return result


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array on the CPU (detached; no copy when it already lives there)."""
    return t.detach().cpu().numpy()

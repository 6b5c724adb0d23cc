"""Decompose a tokens x neurons activation matrix into functional networks.

fnet records a causal LM's MLP signal as ``acts  # [tokens, neurons]`` (SmolLM2-135M: 30 layers x 576 = 17,280
neurons) and decomposes it into K components. Each component's *spatial map* over neurons
(``spatial_maps_  # [K, neurons]``) is what fnet thresholds into a functional network.

Estimators (all scikit-learn compatible: ``get_params``/``set_params``/``clone`` work, ``fit`` returns self):

* :class:`FastICA` -- temporal ICA (samples = tokens), a torch re-implementation of scikit-learn's FastICA.
  **Why it exists:** scikit-learn whitens with a full SVD of the centred [neurons, tokens] matrix (about 1e13
  flops for 17,280 x 9,000, minutes on a laptop) and needs the whole matrix in RAM as float64. fnet only keeps
  K << neurons components, so it whitens with a randomized range finder (a handful of passes of
  ``block @ [neurons, K + oversamples]`` matmuls), streamed over row blocks of one or many float16 arrays
  (memory-maps of many texts), then runs the same fixed-point iteration on the small whitened [K, tokens] data.
  ``backend="sklearn"`` runs scikit-learn's FastICA instead, as the reference.
* :class:`CanICA` -- spatial ICA in the style of fMRI CanICA (samples = neurons): per-text PCA over tokens,
  group PCA of the stacked text bases, then ICA whose samples are neurons, so maps are independent over neurons.
  **Why it exists:** nothing in scikit-learn does the subject/group reduction; nilearn's CanICA works on brain
  images, not on activation matrices.
* :class:`DictionaryLearningDecomposition` -- scikit-learn's ``MiniBatchDictionaryLearning`` on centred
  [tokens, neurons] data; the atoms are the spatial maps. **Why the wrapper exists:** to give the three
  decompositions one interface (list-of-texts input, centring, ``spatial_maps_``, ``converged_``, ``n_iter_``).

Helpers: :func:`abs_corr_matrix` and :func:`best_match_abs_corr` (vectorised map similarity),
:func:`fit_with_restarts` (several seeds, keep the most stable solution, per-component stability),
:func:`group_decomposition` and :func:`individual_decompositions`.

Input everywhere: one array ``[tokens, neurons]`` (numpy, numpy memmap or torch; float16 accepted) or a
list/tuple of such arrays of equal width, read as if stacked along tokens. The torch estimators never
concatenate a list: they stream row blocks through one reusable buffer of the compute dtype.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "FastICA",
    "CanICA",
    "DictionaryLearningDecomposition",
    "RestartResult",
    "fit_with_restarts",
    "restart_stability",
    "abs_corr_matrix",
    "best_match_abs_corr",
    "group_decomposition",
    "individual_decompositions",
]

FUNS = ("logcosh", "exp", "cube")
ALGORITHMS = ("parallel", "deflation")
WHITEN_MODES = ("unit-variance", "arbitrary-variance")
WHITEN_SOLVERS = ("auto", "randomized", "eigh")
BACKENDS = ("torch", "sklearn")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
ON_TOO_SHORT = ("raise", "skip")

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


class _TokenMatrix:
    """One or many ``[tokens_i, neurons]`` arrays viewed as a single matrix stacked along tokens.

    Nothing is concatenated. :meth:`row_blocks` copies row blocks, converted to the compute dtype and optionally
    centred/scaled, into one reusable buffer; :meth:`column_chunks` does the same for column chunks of all rows.
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


def _column_stats(
    data: _TokenMatrix, dtype: torch.dtype, device: torch.device, block_rows: int | None, with_std: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pass: ``mean  # [neurons]`` (and the population std if asked); raises on NaN/inf, naming where."""
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


def _project(data: _TokenMatrix, basis: torch.Tensor, *, mean, scale, block_rows) -> torch.Tensor:
    """``scores  # [tokens, l] = Xc @ basis`` with ``basis  # [neurons, l]``, streamed over row blocks."""
    scores = torch.empty((data.n_tokens, basis.shape[1]), dtype=basis.dtype, device=basis.device)
    for _, start, stop, block in data.row_blocks(basis.dtype, basis.device, block_rows, mean, scale):
        torch.matmul(block, basis, out=scores[start:stop])
    return scores


def _back_project(data: _TokenMatrix, scores: torch.Tensor, *, mean, scale, block_rows) -> torch.Tensor:
    """``basis  # [neurons, l] = Xc.T @ scores`` with ``scores  # [tokens, l]``, streamed over row blocks."""
    basis = torch.zeros((data.n_neurons, scores.shape[1]), dtype=scores.dtype, device=scores.device)
    for _, start, stop, block in data.row_blocks(scores.dtype, scores.device, block_rows, mean, scale):
        basis.addmm_(block.T, scores[start:stop])
    return basis


# ----------------------------------------------------------------------------------------------------------------
# PCA of the (centred) token matrix: the K leading principal axes, randomized or exact.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _PCA:
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


def _resolve_solver(solver: str, n_keep: int, n_oversamples: int | None, n_tokens: int, n_neurons: int) -> str:
    """``auto``: randomized when the sketch width K + oversamples is at most a quarter of min(tokens, neurons)."""
    if solver != "auto":
        return solver
    sketch_width = n_keep + _oversamples(n_oversamples, n_keep)
    return "randomized" if 4 * sketch_width <= min(n_tokens, n_neurons) else "eigh"


def _randomized_pca(
    data: _TokenMatrix,
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
) -> _PCA:
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
    sketch_stream = dict(mean=None if mean is None else mean.to(sketch_dtype),
                         scale=None if scale is None else scale.to(sketch_dtype), block_rows=block_rows)
    for _ in range(n_power_iter):
        scores = torch.linalg.qr(_project(data, basis, **sketch_stream)).Q  # [tokens, l]
        basis = torch.linalg.qr(_back_project(data, scores, **sketch_stream)).Q  # [neurons, l]
    basis = torch.linalg.qr(basis.to(dtype)).Q  # re-orthonormalised in the compute dtype
    projection = _project(data, basis, mean=mean, scale=scale, block_rows=block_rows)  # [tokens, l]
    left, singular_values, right_h = torch.linalg.svd(projection, full_matrices=False)
    return _PCA(
        neuron_axes=basis @ right_h[:n_keep].T,
        singular_values=singular_values[:n_keep],
        token_axes=left[:, :n_keep],
    )


def _exact_pca(
    data: _TokenMatrix, n_keep: int, *, mean, scale, dtype: torch.dtype, device: torch.device, block_rows
) -> _PCA:
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
        token_axes = _project(data, neuron_axes, **stream) / singular_values
    else:
        token_axes = eigenvectors[:, order]
        neuron_axes = _back_project(data, token_axes, **stream) / singular_values
    return _PCA(neuron_axes=neuron_axes, singular_values=singular_values, token_axes=token_axes)


def _check_rank(spectrum: torch.Tensor, n_keep: int, data: _TokenMatrix, dtype: torch.dtype) -> None:
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


def _pca(data: _TokenMatrix, n_keep: int, solver: str, *, mean, scale, n_oversamples, n_power_iter, rng, dtype,
         device, block_rows, sketch_dtype=None) -> _PCA:
    if solver == "randomized":
        result = _randomized_pca(data, n_keep, mean=mean, scale=scale, n_oversamples=n_oversamples,
                                 n_power_iter=n_power_iter, rng=rng, dtype=dtype, device=device,
                                 block_rows=block_rows, sketch_dtype=sketch_dtype)
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


# ----------------------------------------------------------------------------------------------------------------
# The FastICA fixed-point iteration on whitened data [K, samples].
# ----------------------------------------------------------------------------------------------------------------


def _nonlinearity(name: str, fun_args: dict):
    """Return ``g(u  # [K, samples]) -> (g(u)  # [K, samples], mean g'(u)  # [K])`` for the negentropy proxy."""
    if name == "logcosh":
        alpha = float(fun_args.get("alpha", 1.0))

        def g(u):
            gu = torch.tanh(alpha * u)
            return gu, alpha * (1 - gu * gu).mean(dim=-1)

    elif name == "exp":

        def g(u):
            bump = torch.exp(-0.5 * u * u)
            return u * bump, ((1 - u * u) * bump).mean(dim=-1)

    else:  # cube

        def g(u):
            return u**3, 3 * (u * u).mean(dim=-1)

    return g


def _sym_decorrelation(W: torch.Tensor) -> torch.Tensor:
    """``(W W^T)^(-1/2) W`` for ``W  # [K, K]``: the nearest orthogonal matrix, all rows treated alike."""
    eigenvalues, eigenvectors = torch.linalg.eigh(W @ W.T)
    eigenvalues = eigenvalues.clamp_min(torch.finfo(W.dtype).tiny)
    return (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T @ W


# Below this many entries of the whitened data, the fixed-point iteration runs on one CPU thread: its ops are tiny
# (K x K eigh, [K, samples] tanh/matmul), and on a loaded machine an OpenMP region per op costs more than the op
# (measured: 70 ms instead of <1 ms per iteration for K=10 x 2,000 tokens while other jobs shared the 2 cores).
_SINGLE_THREAD_ENTRIES = 4 * 2**20


@contextlib.contextmanager
def _few_threads_for(white: torch.Tensor):
    if white.device.type != "cpu" or white.numel() > _SINGLE_THREAD_ENTRIES or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fastica_rotation(
    white: torch.Tensor,  # [K, samples], identity covariance
    w_init: torch.Tensor,  # [K, K]
    **kwargs,
) -> tuple[torch.Tensor, int, bool, float]:
    with _few_threads_for(white):
        return _fastica_iterate(white, w_init, **kwargs)


def _fastica_iterate(
    white: torch.Tensor,  # [K, samples], identity covariance
    w_init: torch.Tensor,  # [K, K]
    *,
    fun: str,
    fun_args: dict,
    algorithm: str,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, int, bool, float]:
    """Return ``(W  # [K, K] orthogonal, n_iter, converged, final_change)``.

    ``change`` is scikit-learn's criterion: ``max_k | |<w_k_new, w_k_old>| - 1 |``.
    """
    g = _nonlinearity(fun, fun_args)
    n_samples = white.shape[1]
    change = float("inf")
    if algorithm == "parallel":
        W = _sym_decorrelation(w_init)
        for iteration in range(1, max_iter + 1):
            g_wx, g_prime_mean = g(W @ white)
            W_next = _sym_decorrelation(g_wx @ white.T / n_samples - g_prime_mean[:, None] * W)
            change = float((torch.abs(torch.abs((W_next * W).sum(dim=1)) - 1)).max())
            W = W_next
            if change < tol:
                return W, iteration, True, change
        return W, max_iter, False, change

    # deflation: one unit at a time, Gram-Schmidt against the units already found
    n_components = w_init.shape[0]
    W = torch.zeros_like(w_init)
    n_iters, all_converged, worst_change = [], True, 0.0
    for j in range(n_components):
        w = w_init[j] / torch.linalg.vector_norm(w_init[j])
        converged = False
        for iteration in range(1, max_iter + 1):
            g_wx, g_prime_mean = g((w @ white)[None])
            w_next = (white * g_wx).mean(dim=1) - g_prime_mean[0] * w
            w_next = w_next - (w_next @ W[:j].T) @ W[:j]
            w_next = w_next / torch.linalg.vector_norm(w_next)
            change = float(torch.abs(torch.abs(w_next @ w) - 1))
            w = w_next
            if change < tol:
                converged = True
                break
        W[j] = w
        n_iters.append(iteration)
        all_converged &= converged
        worst_change = max(worst_change, change)
    return W, max(n_iters), all_converged, worst_change


def _warn_not_converged(name: str, n_iter: int, change: float, tol: float, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{name} did not converge: stopped after {n_iter} iterations with final change {change:.3g} "
        f"> tol={tol:g}. Increase max_iter or tol; the components may be unreliable.",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


def _check_choice(value: Any, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; valid choices: {', '.join(map(repr, choices))}")


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_fun_args(fun_args: dict | None) -> dict:
    fun_args = {} if fun_args is None else dict(fun_args)
    alpha = fun_args.get("alpha", 1.0)
    if not 1 <= alpha <= 2:
        raise ValueError(f"fun_args['alpha'] must be in [1, 2]; got {alpha}")
    return fun_args


def _check_n_components_fit(n_components: int, n_tokens: int, n_neurons: int, what: str = "tokens") -> None:
    if n_components > n_neurons:
        raise ValueError(f"n_components={n_components} is larger than the number of neurons ({n_neurons})")
    if n_components >= n_tokens:
        raise ValueError(
            f"n_components={n_components} needs at least {n_components + 1} {what} (centring removes one "
            f"dimension); got {n_tokens} {what}"
        )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# FastICA
# ----------------------------------------------------------------------------------------------------------------


class FastICA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Temporal FastICA of ``X  # [tokens, neurons]`` (samples = tokens), torch, scikit-learn compatible.

    Same model and conventions as ``sklearn.decomposition.FastICA`` (same ``w_init`` drawn from ``random_state``,
    same sign convention, same stopping rule), so with ``whiten_solver="eigh"`` both give the same components to
    rounding; the randomized whitening gives the same components up to the sketch's accuracy.

    Parameters
    ----------
    n_components : K, the number of components.
    algorithm : "parallel" (symmetric decorrelation) or "deflation".
    fun, fun_args : negentropy proxy, "logcosh" (``fun_args={"alpha": a}``, 1 <= a <= 2), "exp" or "cube".
    max_iter, tol : fixed-point iteration limit and tolerance (scikit-learn's criterion).
    whiten : "unit-variance" (sources scaled to unit variance) or "arbitrary-variance".
    whiten_solver : "auto" (randomized when ``4 (K + oversamples) <= min(tokens, neurons)``, else exact),
        "randomized" (streamed range finder + Rayleigh-Ritz) or "eigh" (exact, Gram matrix of the smaller side).
    n_oversamples : extra sketch columns, sketch width K + n_oversamples; None (default) = max(10, K), because
        activation spectra are flat around K ~ 64 and 10 extra columns then miss part of the top-K subspace.
    n_power_iter : subspace iterations of the range finder.
    sketch_dtype : "float32" (default) or "float64": precision of the range finder's subspace iterations only.
    random_state : int, RandomState or None. ``w_init`` is drawn first (as scikit-learn does), then the sketch.
    device : torch device for the computation. dtype : "float64" (default) or "float32" (GPU speed).
    backend : "torch" or "sklearn" (runs ``sklearn.decomposition.FastICA`` on the same, concatenated data and
        copies its attributes; ``whiten_solver`` "auto" maps to scikit-learn's default "svd").
    block_rows : rows per streamed block; None sizes blocks to ~256 MiB.

    Attributes
    ----------
    components_ : [K, neurons] unmixing incl. whitening: ``sources = (X - mean_) @ components_.T``.
    mixing_ : [neurons, K] pseudo-inverse of ``components_``. spatial_maps_ : ``mixing_.T`` [K, neurons].
    mean_ : [neurons]. whitening_ : [K, neurons], scikit-learn's convention (``principal axes / singular values``;
        ``(X - mean_) @ whitening_.T * sqrt(n_tokens)`` is white).
    n_iter_, converged_ : iterations run and whether ``change < tol`` was reached (ConvergenceWarning if not).
    whiten_solver_ : the solver actually used. n_features_in_ : neurons.
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        algorithm: str = "parallel",
        fun: str = "logcosh",
        fun_args: dict | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        whiten: str = "unit-variance",
        whiten_solver: str = "auto",
        n_oversamples: int | None = None,
        n_power_iter: int = 4,
        sketch_dtype: str = "float32",
        random_state: Any = None,
        device: str = "cpu",
        dtype: str = "float64",
        backend: str = "torch",
        block_rows: int | None = None,
    ):
        self.n_components = n_components
        self.algorithm = algorithm
        self.fun = fun
        self.fun_args = fun_args
        self.max_iter = max_iter
        self.tol = tol
        self.whiten = whiten
        self.whiten_solver = whiten_solver
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.sketch_dtype = sketch_dtype
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.block_rows = block_rows

    # -- validation ------------------------------------------------------------------------------------------
    def _validate_params(self) -> dict:
        _check_int(self.n_components, "n_components", 1)
        _check_choice(self.algorithm, "algorithm", ALGORITHMS)
        _check_choice(self.fun, "fun", FUNS)
        _check_choice(self.whiten, "whiten", WHITEN_MODES)
        _check_choice(self.whiten_solver, "whiten_solver", WHITEN_SOLVERS)
        _check_choice(self.backend, "backend", BACKENDS)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_int(self.max_iter, "max_iter", 1)
        if self.n_oversamples is not None:
            _check_int(self.n_oversamples, "n_oversamples", 0)
        _check_int(self.n_power_iter, "n_power_iter", 0)
        _check_choice(self.sketch_dtype, "sketch_dtype", tuple(DTYPES))
        if not (isinstance(self.tol, numbers.Real) and self.tol > 0):
            raise ValueError(f"tol must be a positive number; got {self.tol!r}")
        if self.backend == "sklearn" and self.whiten_solver == "randomized":
            raise ValueError(
                "backend='sklearn' has no randomized whitening; use whiten_solver='auto' (scikit-learn's 'svd') "
                "or 'eigh'"
            )
        return _check_fun_args(self.fun_args)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on ``X  # [tokens, neurons]`` or a list of such arrays (stacked along tokens, streamed)."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """Fit and return the training sources ``[tokens, K]`` (no extra pass over the data)."""
        return self._fit(X)

    def _fit(self, X) -> np.ndarray:
        fun_args = self._validate_params()
        data = _TokenMatrix(X)
        _check_n_components_fit(self.n_components, data.n_tokens, data.n_neurons)
        if self.backend == "sklearn":
            return self._fit_sklearn(data)

        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        K, n_tokens = self.n_components, data.n_tokens
        rng = check_random_state(self.random_state)
        # drawn before anything else, exactly as scikit-learn does, so an int seed gives both backends one w_init
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)  # [K, K]

        mean, _ = _column_stats(data, dtype, device, self.block_rows)  # [neurons]
        solver = _resolve_solver(self.whiten_solver, K, self.n_oversamples, n_tokens, data.n_neurons)
        pca = _pca(data, K, solver, mean=mean, scale=None, n_oversamples=self.n_oversamples,
                   n_power_iter=self.n_power_iter, rng=rng, dtype=dtype, device=device, block_rows=self.block_rows,
                   sketch_dtype=DTYPES[self.sketch_dtype])
        white = pca.token_axes.T * math.sqrt(n_tokens)  # [K, tokens], identity covariance
        whitening = (pca.neuron_axes / pca.singular_values).T  # [K, neurons]

        W, n_iter, converged, change = _fastica_rotation(
            white, w_init, fun=self.fun, fun_args=fun_args, algorithm=self.algorithm,
            max_iter=self.max_iter, tol=self.tol,
        )
        sources = W @ white / math.sqrt(n_tokens)  # [K, tokens] == W @ whitening @ Xc.T
        if self.whiten == "unit-variance":
            source_std = sources.std(dim=1, correction=0)  # [K]
            W = W / source_std[:, None]
            sources = sources / source_std[:, None]
        components = W @ whitening  # [K, neurons]

        self.components_ = _numpy(components)
        self.mixing_ = _numpy(torch.linalg.pinv(components))  # [neurons, K]
        self.mean_ = _numpy(mean)
        self.whitening_ = _numpy(whitening)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.whiten_solver_ = solver
        self.n_features_in_ = data.n_neurons
        if not converged:
            _warn_not_converged("FastICA", n_iter, change, self.tol, stacklevel=4)  # user -> fit -> _fit
        return _numpy(sources.T)

    def _fit_sklearn(self, data: _TokenMatrix) -> np.ndarray:
        """Reference path: scikit-learn's FastICA on the concatenated data (it needs the whole matrix anyway)."""
        from sklearn.decomposition import FastICA as SklearnFastICA

        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        X = np.concatenate([_numpy(torch.as_tensor(p)) if isinstance(p, torch.Tensor) else np.asarray(p)
                            for p in data.parts], axis=0).astype(np_dtype, copy=False)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        reference = SklearnFastICA(
            n_components=self.n_components, algorithm=self.algorithm, whiten=self.whiten, fun=self.fun,
            fun_args=self.fun_args, max_iter=self.max_iter, tol=self.tol,
            whiten_solver="eigh" if self.whiten_solver == "eigh" else "svd", random_state=self.random_state,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sources = reference.fit_transform(X)
        sklearn_warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # re-emit everything else untouched
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.sklearn_estimator_ = reference
        self.components_ = reference.components_
        self.mixing_ = reference.mixing_
        self.mean_ = reference.mean_
        self.whitening_ = reference.whitening_
        self.n_iter_ = int(reference.n_iter_)
        # scikit-learn warns for "parallel" only; for "deflation" reaching max_iter is the only signal it gives
        self.converged_ = not sklearn_warned and self.n_iter_ < self.max_iter
        self.whiten_solver_ = reference.whiten_solver
        self.n_features_in_ = data.n_neurons
        if not self.converged_:
            warnings.warn(
                f"FastICA (backend='sklearn') did not converge: stopped after {self.n_iter_} iterations "
                f"(tol={self.tol:g}; scikit-learn does not report the final change). Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return sources

    # -- applying --------------------------------------------------------------------------------------------
    def transform(self, X) -> np.ndarray:
        """``sources  # [tokens, K] = (X - mean_) @ components_.T``, streamed over row blocks."""
        check_is_fitted(self, "components_")
        data = _TokenMatrix(X)
        if data.n_neurons != self.components_.shape[1]:
            raise ValueError(f"X has {data.n_neurons} neurons; this FastICA was fitted on {self.components_.shape[1]}")
        dtype = DTYPES[self.dtype] if self.dtype in DTYPES else torch.float64
        device = torch.device(self.device)
        unmixing_t = torch.as_tensor(self.components_, dtype=dtype, device=device).T  # [neurons, K]
        mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)
        return _numpy(_project(data, unmixing_t, mean=mean, scale=None, block_rows=self.block_rows))

    def inverse_transform(self, X) -> np.ndarray:
        """``X_reconstructed  # [tokens, neurons] = sources @ mixing_.T + mean_`` for ``sources  # [tokens, K]``."""
        check_is_fitted(self, "mixing_")
        sources = _numpy(X) if isinstance(X, torch.Tensor) else np.asarray(X, dtype=self.mixing_.dtype)
        return sources @ self.mixing_.T + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``maps  # [K, neurons]`` = ``mixing_.T``: each component's loading on every neuron."""
        check_is_fitted(self, "mixing_")
        return np.ascontiguousarray(np.asarray(self.mixing_).T)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def _min_tokens(self) -> int:
        return int(self.n_components) + 1


# ----------------------------------------------------------------------------------------------------------------
# CanICA: spatial ICA (samples = neurons) after per-text and group PCA
# ----------------------------------------------------------------------------------------------------------------


class CanICA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """CanICA-style spatial ICA: components independent *over neurons* (as fMRI CanICA is over voxels).

    1. Per text (subject) ``X_s  # [tokens_s, neurons]``: centre each neuron over the text's tokens (and
       z-score it if ``standardize``), keep the ``subject_components`` leading principal axes, each scaled by its
       standard deviation (singular value / sqrt(tokens_s)) so texts of any length weigh alike per token:
       ``loadings_s  # [k, neurons]``.
    2. Group PCA: the K leading right singular vectors of the stacked loadings ``[texts * k, neurons]``.
    3. ICA with neurons as samples on ``group_axes  # [K, neurons]`` (centred over neurons, whitened), giving
       ``spatial_maps_  # [K, neurons]`` with zero mean and unit variance over neurons, each signed so that its
       heavy tail (skewness) is positive.

    A single array is one text. ``transform`` gives per-token component activity by least squares
    (``(X - mean_) @ pinv(spatial_maps_)``).

    Attributes: ``components_`` = ``spatial_maps_`` [K, neurons], ``group_axes_`` [K, neurons], ``mean_``
    [neurons] (over all tokens), ``n_iter_``, ``converged_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        subject_components: int | None = None,
        standardize: bool = False,
        fun: str = "cube",
        fun_args: dict | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        pca_solver: str = "auto",
        n_oversamples: int | None = None,
        n_power_iter: int = 4,
        sketch_dtype: str = "float32",
        random_state: Any = None,
        device: str = "cpu",
        dtype: str = "float64",
        block_rows: int | None = None,
    ):
        self.n_components = n_components
        self.subject_components = subject_components
        self.standardize = standardize
        self.fun = fun
        self.fun_args = fun_args
        self.max_iter = max_iter
        self.tol = tol
        self.pca_solver = pca_solver
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.sketch_dtype = sketch_dtype
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.block_rows = block_rows

    def _subject_k(self) -> int:
        return int(self.n_components if self.subject_components is None else self.subject_components)

    def _min_tokens(self) -> int:
        return self._subject_k() + 1

    def fit(self, X, y=None):
        """Fit on a list of texts ``[tokens_s, neurons]`` (or one array = one text)."""
        K = _check_int(self.n_components, "n_components", 1)
        k = _check_int(self._subject_k(), "subject_components", 1)
        _check_choice(self.fun, "fun", FUNS)
        _check_choice(self.pca_solver, "pca_solver", WHITEN_SOLVERS)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_int(self.max_iter, "max_iter", 1)
        fun_args = _check_fun_args(self.fun_args)
        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        data = _TokenMatrix(X)
        if K > data.n_neurons:
            raise ValueError(f"n_components={K} is larger than the number of neurons ({data.n_neurons})")
        if k > data.n_neurons:
            raise ValueError(f"subject_components={k} is larger than the number of neurons ({data.n_neurons})")
        for index, n_part in enumerate(data.part_tokens):
            if n_part <= k:
                raise ValueError(
                    f"text {index} has {n_part} tokens; CanICA keeps {k} components per text and needs at least "
                    f"{k + 1} tokens per text"
                )
        if k * len(data.parts) < K:
            raise ValueError(
                f"n_components={K} exceeds the {k * len(data.parts)} stacked text components "
                f"({len(data.parts)} texts x subject_components={k})"
            )
        rng = check_random_state(self.random_state)
        w_init = torch.as_tensor(rng.normal(size=(K, K)), dtype=dtype, device=device)
        _check_choice(self.sketch_dtype, "sketch_dtype", tuple(DTYPES))
        pca_args = dict(n_oversamples=self.n_oversamples, n_power_iter=self.n_power_iter, rng=rng, dtype=dtype,
                        device=device, block_rows=self.block_rows, sketch_dtype=DTYPES[self.sketch_dtype])

        # 1. per-text PCA over tokens
        loadings, mean_sum = [], torch.zeros(data.n_neurons, dtype=torch.float64, device=device)
        for index, part in enumerate(data.parts):
            text = _TokenMatrix(part)
            try:
                mean, std = _column_stats(text, dtype, device, self.block_rows, with_std=self.standardize)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            scale = torch.where(std > 0, std, torch.ones_like(std)) if self.standardize else None
            solver = _resolve_solver(self.pca_solver, k, self.n_oversamples, text.n_tokens, text.n_neurons)
            try:
                pca = _pca(text, k, solver, mean=mean, scale=scale, **pca_args)
            except ValueError as error:
                raise ValueError(f"text {index}: {error}") from None
            loadings.append((pca.neuron_axes * (pca.singular_values / math.sqrt(text.n_tokens))).T)  # [k, neurons]
            mean_sum += mean.to(torch.float64) * text.n_tokens

        # 2. group PCA of the stacked loadings (not centred: they are axes, not samples)
        stacked = _TokenMatrix(torch.cat(loadings, dim=0))  # [texts * k, neurons]
        solver = _resolve_solver(self.pca_solver, K, self.n_oversamples, stacked.n_tokens, stacked.n_neurons)
        group = _pca(stacked, K, solver, mean=None, scale=None, **pca_args)
        group_axes = group.neuron_axes.T  # [K, neurons], orthonormal rows

        # 3. ICA over neurons: centre each group axis over neurons and whiten the K x K covariance
        n_neurons = data.n_neurons
        centred = group_axes - group_axes.mean(dim=1, keepdim=True)  # [K, neurons]
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T / n_neurons)
        if float(eigenvalues.min()) <= float(eigenvalues.max()) * n_neurons * torch.finfo(dtype).eps:
            raise ValueError("the group components are linearly dependent after centring over neurons; "
                             "lower n_components")
        white = (eigenvectors * eigenvalues.rsqrt()).T @ centred  # [K, neurons], identity covariance
        W, n_iter, converged, change = _fastica_rotation(
            white, w_init, fun=self.fun, fun_args=fun_args, algorithm="parallel", max_iter=self.max_iter,
            tol=self.tol,
        )
        maps = W @ white  # [K, neurons]
        maps = maps * torch.sign((maps**3).mean(dim=1) + torch.finfo(dtype).tiny)[:, None]

        self.components_ = _numpy(maps)
        self.group_axes_ = _numpy(group_axes)
        self.mean_ = _numpy((mean_sum / data.n_tokens).to(dtype))
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.n_features_in_ = n_neurons
        self._projection = _numpy(torch.linalg.pinv(maps))  # [neurons, K]
        if not converged:
            _warn_not_converged("CanICA", n_iter, change, self.tol)
        return self

    def transform(self, X) -> np.ndarray:
        """Per-token activity of each map, ``[tokens, K]``: least squares of ``X - mean_`` on the maps."""
        check_is_fitted(self, "components_")
        data = _TokenMatrix(X)
        dtype, device = DTYPES[self.dtype], torch.device(self.device)
        projection = torch.as_tensor(self._projection, dtype=dtype, device=device)
        mean = torch.as_tensor(self.mean_, dtype=dtype, device=device)
        return _numpy(_project(data, projection, mean=mean, scale=None, block_rows=self.block_rows))

    def inverse_transform(self, X) -> np.ndarray:
        check_is_fitted(self, "components_")
        return np.asarray(X) @ self.components_ + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``maps  # [K, neurons]``, zero mean and unit variance over neurons, heavy tail positive."""
        check_is_fitted(self, "components_")
        return np.array(self.components_, copy=True)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Dictionary learning
# ----------------------------------------------------------------------------------------------------------------


class DictionaryLearningDecomposition(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Sparse dictionary learning on centred ``X  # [tokens, neurons]``: ``Xc ~= codes @ atoms`` with sparse
    ``codes  # [tokens, K]``; the unit-norm atoms are the spatial maps ``[K, neurons]``.

    A thin wrapper over ``sklearn.decomposition.MiniBatchDictionaryLearning`` (parameters pass through). It exists
    to give the same interface as the ICA estimators: list-of-texts input (concatenated in ``dtype``, float32 by
    default to halve memory; scikit-learn needs one array), per-neuron centring (``center``), ``spatial_maps_``,
    ``n_iter_`` and ``converged_`` (False, with a ConvergenceWarning, when all ``max_iter`` epochs ran without
    scikit-learn's early stopping firing).
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        alpha: float = 1.0,
        max_iter: int = 100,
        batch_size: int = 256,
        fit_algorithm: str = "lars",
        transform_algorithm: str = "lasso_lars",
        transform_alpha: float | None = None,
        positive_code: bool = False,
        positive_dict: bool = False,
        tol: float = 1e-3,
        max_no_improvement: int | None = 10,
        center: bool = True,
        random_state: Any = None,
        dtype: str = "float32",
    ):
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.fit_algorithm = fit_algorithm
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.positive_code = positive_code
        self.positive_dict = positive_dict
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.center = center
        self.random_state = random_state
        self.dtype = dtype

    def _min_tokens(self) -> int:
        return int(self.n_components) + 1

    def _stacked(self, X) -> np.ndarray:
        data = _TokenMatrix(X)
        np_dtype = np.float32 if self.dtype == "float32" else np.float64
        stacked = np.empty((data.n_tokens, data.n_neurons), dtype=np_dtype)
        for _, start, stop, block in data.row_blocks(DTYPES[self.dtype], torch.device("cpu")):
            stacked[start:stop] = _numpy(block)
        if not np.isfinite(stacked).all():
            raise ValueError("X contains NaN or infinity; decompositions need finite activations")
        return stacked

    def fit(self, X, y=None):
        from sklearn.decomposition import MiniBatchDictionaryLearning

        K = _check_int(self.n_components, "n_components", 1)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        stacked = self._stacked(X)  # [tokens, neurons]
        _check_n_components_fit(K, stacked.shape[0], stacked.shape[1])
        self.mean_ = stacked.mean(axis=0) if self.center else np.zeros(stacked.shape[1], dtype=stacked.dtype)
        stacked -= self.mean_
        learner = MiniBatchDictionaryLearning(
            n_components=K, alpha=self.alpha, max_iter=self.max_iter, batch_size=self.batch_size,
            fit_algorithm=self.fit_algorithm, transform_algorithm=self.transform_algorithm,
            transform_alpha=self.transform_alpha, positive_code=self.positive_code,
            positive_dict=self.positive_dict, tol=self.tol, max_no_improvement=self.max_no_improvement,
            random_state=self.random_state,
        )
        learner.fit(stacked)
        batches_per_epoch = math.ceil(stacked.shape[0] / min(self.batch_size, stacked.shape[0]))
        self.learner_ = learner
        self.components_ = learner.components_  # [K, neurons]
        self.n_iter_ = int(learner.n_iter_)
        self.n_steps_ = int(learner.n_steps_)
        self.converged_ = bool(learner.n_steps_ < self.max_iter * batches_per_epoch)
        self.n_features_in_ = stacked.shape[1]
        if not self.converged_:
            warnings.warn(
                f"MiniBatchDictionaryLearning did not converge: ran all {self.max_iter} epochs "
                f"({learner.n_steps_} mini-batch steps) without early stopping (tol={self.tol:g}). "
                "Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def transform(self, X) -> np.ndarray:
        """Sparse codes ``[tokens, K]`` of ``X - mean_``."""
        check_is_fitted(self, "components_")
        return self.learner_.transform(self._stacked(X) - self.mean_)

    def inverse_transform(self, X) -> np.ndarray:
        check_is_fitted(self, "components_")
        return np.asarray(X) @ self.components_ + self.mean_

    @property
    def spatial_maps_(self) -> np.ndarray:
        """``atoms  # [K, neurons]`` (unit norm)."""
        check_is_fitted(self, "components_")
        return np.array(self.components_, copy=True)

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Similarity, restarts, group and individual fits
# ----------------------------------------------------------------------------------------------------------------


def _as_2d_float64(x: Any, name: str) -> np.ndarray:
    array = _numpy(x).astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [components, neurons]; got shape {array.shape}")
    return array


def abs_corr_matrix(a: Any, b: Any) -> np.ndarray:
    """``|corr|  # [K1, K2]`` between the rows of ``a  # [K1, N]`` and ``b  # [K2, N]`` (Pearson, vectorised).

    A constant row has correlation 0 with everything (not NaN).
    """
    a, b = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same width; got {a.shape} and {b.shape}")

    def unit_rows(m):
        m = m - m.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)

    return np.abs(unit_rows(a) @ unit_rows(b).T)


def best_match_abs_corr(reference: Any, estimate: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``reference  # [K1, N]``: the highest |corr| with any row of ``estimate  # [K2, N]`` and
    that row's index; returns ``(abs_corr  # [K1], index  # [K1])``. Not one-to-one (a greedy best match)."""
    similarity = abs_corr_matrix(reference, estimate)  # [K1, K2]
    return similarity.max(axis=1), similarity.argmax(axis=1)


@dataclass
class RestartResult:
    """Outcome of :func:`fit_with_restarts`.

    best : the kept fitted estimator. stability : [K] for its components (in its own order): mean over the other
    restarts of the best-match |corr| of spatial maps (NaN when n_init == 1). all_stability : [n_init, K], the same
    for every restart. seeds : the random_state of each restart. best_index : index of ``best`` in ``seeds``.
    estimators : every fitted restart.
    """

    best: Any
    stability: np.ndarray
    all_stability: np.ndarray
    seeds: list
    best_index: int = 0
    estimators: list = field(default_factory=list)


def _restart_seeds(estimator, n_init: int) -> list[int]:
    base = getattr(estimator, "random_state", None)
    if isinstance(base, numbers.Integral) and not isinstance(base, bool):
        return [int(base) + i for i in range(n_init)]
    rng = check_random_state(base)  # a RandomState is advanced; None draws fresh entropy
    return [int(s) for s in rng.randint(0, 2**31 - 1, size=n_init)]


def restart_stability(maps: Sequence[Any]) -> np.ndarray:
    """``stability  # [R, K]`` for ``R`` solutions ``maps[r]  # [K, N]``: for component k of restart r, the mean
    over the other restarts s != r of ``max_j |corr(maps[r][k], maps[s][j])|``. All pairs in one matmul."""
    stacked = np.stack([_as_2d_float64(m, "maps") for m in maps])  # [R, K, N]
    n_restarts, n_components, _ = stacked.shape
    if n_restarts < 2:
        return np.full((n_restarts, n_components), np.nan)
    flat = stacked.reshape(n_restarts * n_components, -1)
    similarity = abs_corr_matrix(flat, flat).reshape(n_restarts, n_components, n_restarts, n_components)
    best = similarity.max(axis=3)  # [R, K, R]: best match of (r, k) within restart s
    off_diagonal = ~np.eye(n_restarts, dtype=bool)  # [R, R]
    return (best * off_diagonal[:, None, :]).sum(axis=2) / (n_restarts - 1)


def fit_with_restarts(estimator, X, n_init: int = 5, seeds: Sequence[int] | None = None) -> RestartResult:
    """Fit ``n_init`` clones of ``estimator`` with different ``random_state`` and keep the most stable one.

    Seeds: ``seeds`` if given; otherwise ``random_state + 0 .. n_init-1`` for an int ``random_state``, or drawn
    from it (RandomState or fresh entropy for None). Rule: keep the restart whose components have the highest
    *mean* stability (see :func:`restart_stability`); ties go to the earliest seed. Every restart's warnings
    (e.g. ConvergenceWarning) are passed through.
    """
    if seeds is None:
        n_init = _check_int(n_init, "n_init", 1)
        seeds = _restart_seeds(estimator, n_init)
    else:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must not be empty")
    if isinstance(X, (list, tuple)):
        X = list(X)  # a generator would be used up by the first restart
    fitted = [clone(estimator).set_params(random_state=seed).fit(X) for seed in seeds]
    all_stability = restart_stability([f.spatial_maps_ for f in fitted])  # [n_init, K]
    best_index = 0 if len(fitted) == 1 else int(np.argmax(all_stability.mean(axis=1)))
    return RestartResult(
        best=fitted[best_index],
        stability=all_stability[best_index],
        all_stability=all_stability,
        seeds=list(seeds),
        best_index=best_index,
        estimators=fitted,
    )


def _min_tokens(estimator) -> int:
    if hasattr(estimator, "_min_tokens"):
        return int(estimator._min_tokens())
    return int(getattr(estimator, "n_components")) + 1


def group_decomposition(estimator, arrays: Sequence[Any]):
    """Fit a clone of ``estimator`` on all texts together (``arrays[i]  # [tokens_i, neurons]``) and return it.

    FastICA streams the texts as one matrix stacked along tokens; CanICA treats each as a subject.
    """
    arrays = list(arrays)
    if not arrays:
        raise ValueError("empty input: group_decomposition got no arrays")
    return clone(estimator).fit(arrays)


def individual_decompositions(estimator, arrays: Sequence[Any], *, on_too_short: str = "raise") -> list:
    """Fit one clone of ``estimator`` per text; returns the fitted estimators in input order.

    A text with too few tokens (fewer than ``n_components + 1``: centring removes one dimension) raises a
    ValueError naming every such text and its token count, before anything is fitted; with
    ``on_too_short="skip"`` its entry is None and a warning names it.
    """
    _check_choice(on_too_short, "on_too_short", ON_TOO_SHORT)
    arrays = list(arrays)
    if not arrays:
        raise ValueError("empty input: individual_decompositions got no arrays")
    needed = _min_tokens(estimator)
    too_short = [(i, int(a.shape[0])) for i, a in enumerate(arrays) if int(a.shape[0]) < needed]
    if too_short:
        listing = ", ".join(f"text {i} has {n} tokens" for i, n in too_short[:10])
        more = f" (and {len(too_short) - 10} more)" if len(too_short) > 10 else ""
        message = (f"{listing}{more}; {type(estimator).__name__} with n_components={estimator.n_components} "
                   f"needs at least {needed} tokens per text")
        if on_too_short == "raise":
            raise ValueError(message)
        warnings.warn(f"skipping: {message}", UserWarning, stacklevel=2)
    skipped = {i for i, _ in too_short}
    return [None if i in skipped else clone(estimator).fit(a) for i, a in enumerate(arrays)]

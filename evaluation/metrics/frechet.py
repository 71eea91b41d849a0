"""Frechet distance between Gaussians fitted to two sets of embeddings: FAD (`fad_<model>`) and `fd_esc`.

`frechet_distance` computes what `frechet_audio_distance`'s `calculate_frechet_distance` computes
(`tests/test_eval_metrics.py` checks they agree), faster and without importing that package, which
pulls in laion_clap, transformers and encodec (7 s) that Ray trials scoring with `esc` only should
not pay for. Both `fad_<model>` and the offline scorer's `fd_esc` use it, through
`embedding_frechet_distance`, which works from the embeddings themselves.
"""

from __future__ import annotations

import numpy as np


def gaussian_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples), as the package's `calculate_embd_statistics`."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings of shape (n, d) for a covariance, got {embeddings.shape}")
    return embeddings.mean(axis=0), np.cov(embeddings, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2).

    Tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
    symmetric S1^(1/2) S2 S1^(1/2): two symmetric eigendecompositions instead of the general complex
    `scipy.linalg.sqrtm` that the package (and pytorch-fid) use. Same value (tests compare them), but
    for PANN's 2048-d embeddings sqrtm took 111 s on this project's 2-core CI machine and this 7 s, and
    covariances of fewer clips than dimensions (singular) need no regularization or imaginary-part checks.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)  # symmetrized against rounding
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()  # tiny negatives are rounding of zeros
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def embedding_frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """`frechet_distance` between the Gaussians fitted to two sets of embeddings (rows), from the rows.

    With A1, A2 the centred rows and S_i = A_i^T A_i / (n_i - 1), the eigenvalues of S1 S2 are the
    squared singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1)), an n1 x n2 matrix. With fewer clips
    than dimensions that is far smaller than the d x d covariances: 100 clips of PANN's 2048-d, 0.01 s
    instead of 1.5 s, and per-class distances (40 clips a class) become free. Otherwise it falls back
    to the covariance form; both give the package's value (tests/test_eval_metrics.py).
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    for name, rows in (("first", first), ("second", second)):
        if rows.ndim != 2 or rows.shape[0] < 2:
            raise ValueError(f"need at least 2 embeddings of shape (n, d) for a covariance, got {name} {rows.shape}")
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"embeddings differ in dimension: {first.shape[1]} vs {second.shape[1]}")
    (n1, dimensions), n2 = first.shape, second.shape[0]
    if n1 * n2 * min(n1, n2) >= dimensions**3:  # the SVD would cost more than the eigendecompositions
        return frechet_distance(*gaussian_statistics(first), *gaussian_statistics(second))
    mean1, mean2 = first.mean(axis=0), second.mean(axis=0)
    centred1, centred2 = first - mean1, second - mean2
    singular_values = np.linalg.svd(centred1 @ centred2.T, compute_uv=False)
    trace_covmean = singular_values.sum() / np.sqrt((n1 - 1) * (n2 - 1))
    trace1, trace2 = np.square(centred1).sum() / (n1 - 1), np.square(centred2).sum() / (n2 - 1)
    diff = mean1 - mean2
    return float(diff.dot(diff) + trace1 + trace2 - 2.0 * trace_covmean)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T

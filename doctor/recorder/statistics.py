"""On-device reductions: every function returns a small float32 tensor and never syncs with the host."""

from __future__ import annotations

import torch

# Saturation: |y| > 0.99 for tanh-like outputs, y < 0.01 or y > 0.99 for sigmoid outputs.
TANH_SATURATION = 0.99
SIGMOID_SATURATION = 0.01


def activation_stats(y: torch.Tensor, kind: str) -> torch.Tensor:
    """mean, std, max|y|, fraction of exact zeros, fraction saturated, fraction of dead units.

    A unit is dead when it is zero for every sample (and position) of the batch:
    units are channels (dim 1) of a 4D/5D conv output, otherwise the last dim.
    Saturation and deadness are only meaningful for the module's activation
    ``kind`` ("tanh", "sigmoid", "relu"); for other kinds they are NaN.
    """
    y = y.detach()
    yf = y.float()
    nan = torch.full((), float("nan"), device=y.device)
    std = yf.std() if yf.numel() > 1 else nan
    zero = (yf == 0).float().mean()
    if kind == "tanh":
        saturated = (yf.abs() > TANH_SATURATION).float().mean()
    elif kind == "sigmoid":
        saturated = ((yf < SIGMOID_SATURATION) | (yf > 1 - SIGMOID_SATURATION)).float().mean()
    else:
        saturated = nan
    if kind == "relu" and yf.dim() >= 2:
        unit_dim = 1 if yf.dim() >= 4 else yf.dim() - 1
        alive = (yf != 0).movedim(unit_dim, 0).reshape(yf.shape[unit_dim], -1).any(dim=1)
        dead = 1.0 - alive.float().mean()
    else:
        dead = nan
    return torch.stack([yf.mean(), std, yf.abs().amax(), zero, saturated, dead])


def input_stats(x: torch.Tensor) -> torch.Tensor:
    """mean, std, min, max of a floating input tensor."""
    xf = x.detach().float()
    std = xf.std() if xf.numel() > 1 else torch.full((), float("nan"), device=x.device)
    return torch.stack([xf.mean(), std, xf.amin(), xf.amax()])


class SpectralNorms:
    """Largest singular values of recurrent matrices by warm-started power iteration, batched by shape.

    Power iteration is a few matrix-vector products: it never synchronizes with
    the host and never raises on non-finite weights (``linalg.svd`` does both),
    and with the vectors kept between samples it stays converged as the
    weights drift. Its estimate is a lower bound that is within 1% of
    ``torch.linalg.svdvals`` after the default iterations (tests check this).

    Every matrix of one shape (the layers and directions of an LSTM, all their gate blocks) goes through
    one batched iteration: a sample costs about ``5 * iterations`` kernels per shape, not per matrix, which
    is what a launch-bound GPU loop feels. Each matrix is first divided by its Frobenius norm, so its
    sigma_max lies in [1/sqrt(min(m, n)), 1] and ``A^T A v`` can neither overflow nor underflow in float32,
    whatever the scale of the weights.
    """

    def __init__(self, iterations: int = 20, cold_iterations: int = 200):
        self.iterations = iterations
        self.cold_iterations = cold_iterations
        self._vectors: dict[tuple, torch.Tensor] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, matrices: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """For each (weight, gates): sigma_max of the whole matrix, then of each of its ``gates`` row blocks.

        PyTorch stacks LSTM gates (i, f, g, o) and GRU gates (r, z, n) along dim 0
        of ``weight_hh``; each block maps the hidden state into one gate.
        """
        groups: dict[tuple, list[torch.Tensor]] = {}  # (device, shape) -> stacks of matrices, in order
        where: list[list[tuple[tuple, int, int]]] = []  # per matrix: (group, first row, count) of its values
        for weight, gates in matrices:
            w = weight.detach().float()
            parts = [w.unsqueeze(0)]
            if gates > 1:
                parts.append(w.reshape(gates, w.shape[0] // gates, w.shape[1]))
            spots = []
            for part in parts:
                key = (part.device, tuple(part.shape[1:]))
                members = groups.setdefault(key, [])
                spots.append((key, sum(len(m) for m in members), len(part)))
                members.append(part)
            where.append(spots)
        sigma = {key: self._sigma(key, torch.cat(members)) for key, members in groups.items()}
        device = matrices[0][0].device if matrices else torch.device("cpu")
        return torch.cat([sigma[key][first : first + count].to(device) for spots in where for key, first, count in spots])

    def _sigma(self, key: tuple, mats: torch.Tensor) -> torch.Tensor:
        scale = torch.linalg.matrix_norm(mats).reshape(-1, 1, 1)  # Frobenius norm of each matrix
        mats = mats / scale
        v = self._vectors.get(key)
        iterations = self.iterations
        if v is None or v.shape != (mats.shape[0], mats.shape[2], 1):
            gen = self._generators.get(mats.device)
            if gen is None:
                # A private generator: recording must not consume the user's random stream.
                gen = self._generators[mats.device] = torch.Generator(device=mats.device).manual_seed(0)
            v = torch.randn(mats.shape[0], mats.shape[2], 1, device=mats.device, generator=gen)
            iterations = self.cold_iterations
        v = torch.nn.functional.normalize(v, dim=1)
        transposed = mats.transpose(1, 2)
        for _ in range(iterations):
            v = torch.nn.functional.normalize(transposed @ (mats @ v), dim=1)
        self._vectors[key] = v
        return torch.linalg.vector_norm(mats @ v, dim=(1, 2)) * scale.reshape(-1)

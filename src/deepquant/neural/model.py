"""The networks: marginals -> gauge-fixed dual potentials of the entropic MMOT problem.

Inputs are N+1 marginals on the model grid, ``weights`` of shape (B, N+1, M) (padded with zero
rows past each instance's last date; ``date_mask`` (B, N+1) marks real dates). Outputs are the
potentials of the N one-period problems (DESIGN §2.1-2.2), in units of eps:

* ``v`` (B, N, M): column potential of period t (a function of y on the grid of mu_{t+1});
* ``h`` (B, N, M): martingale multiplier of period t (a function of x on the grid of mu_t).

Both heads predict the potentials times the period's variance increment s_t (``period_scale``),
in units of the output scales ``v_scale``/``h_scale`` (buffers set from the training targets).

The transition kernel of period t is then the Gibbs kernel
``K_t(y | x) = mu_{t+1}(y) exp(v_t(y) + h_t(x) (y - x)) / Z_t(x)`` (the row potential u_t is the
normaliser, -log Z_t), see ``deepquant.neural.losses.gibbs_log_kernel``.

``MMOTTransformer`` follows seed 001 §9.2: a Conv1d embedding (grid values as channels, kernel 5
over the date axis, to 128), a linear layer to 256 and LayerNorm, a sinusoidal date encoding,
3 pre-norm encoder layers (4 heads, feed-forward 1024, GELU, dropout 0.1), and the u- and h-heads
(256 -> M). The u-head output at date t+1 is v_t; the h-head output at date t is h_t.
``MMOTMLP`` is the ablation baseline: one MLP per period on the two marginals of the period.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepquant.neural.config import ModelConfig

__all__ = ["marginal_features", "period_scale", "point_mass_exact", "MMOTTransformer", "MMOTMLP", "build_model", "count_parameters", "resolve_device",
           "SEED_PARAMETER_COUNT"]

SEED_PARAMETER_COUNT = 4_423_468  # seed 001 §9.2 ("4.4M")


def marginal_features(weights: torch.Tensor, grid: torch.Tensor, n_features: int = 2,
                      scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-date input features, shape (B, T, F, M): density times M, and the call curve's time
    value ``(C_t(k) - (mean - k)^+) * 20`` at the grid strikes (zero for padded dates).

    ``n_features=3`` adds the call-price increment to the next date per unit of the period's
    variance increment, (C_{t+1}(k) - C_t(k)) / s_t (``period_scale``; about half the local
    density of the variance increment at k, O(1) for any period length; zero at the last real
    date and on padded dates). With many short periods consecutive marginals differ by O(s_t),
    which the first two channels only show as tiny differences between neighbouring tokens.
    ``scale``: s_t (B, N) if the caller has it already.
    """
    m = grid.shape[-1]
    dens = weights * m
    payoff = torch.clamp(grid[None, :] - grid[:, None], min=0.0)  # (k, x)
    calls = weights @ payoff.T  # (B, T, k)
    mean = (weights * grid).sum(-1, keepdim=True)
    mass = weights.sum(-1, keepdim=True)
    intrinsic = torch.clamp(mean - grid * mass, min=0.0)
    chans = [dens, 20.0 * (calls - intrinsic)]
    if n_features >= 3:
        inc = torch.zeros_like(calls)
        if calls.shape[1] > 1:
            s = (period_scale(weights, grid) if scale is None else scale)[..., None]
            real = (mass[:, 1:] > 0.5) & (mass[:, :-1] > 0.5)           # both dates real
            step = torch.clamp((calls[:, 1:] - calls[:, :-1]) / s, -50.0, 50.0)
            inc[:, :-1] = torch.where(real, step, torch.zeros_like(step))
        chans.append(inc)
    return torch.stack(chans, dim=-2)


def period_scale(weights: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """s_t = Var(mu_{t+1}) - Var(mu_t), shape (B, N), floored at a quarter grid step squared.

    The potentials scale like 1/s_t (for Gaussian-like increments v ~ -(y-1)^2 / (2 s_t) and
    h ~ (x - 1) / s_t), so the networks predict s_t * v and s_t * h; an error e in s_t * h moves
    the kernel's conditional mean by about e (the drift is Var_K * dh, Var_K ~ s_t).
    """
    mean = (weights * grid).sum(-1, keepdim=True)
    var = (weights * (grid - mean) ** 2).sum(-1)
    step = (grid[-1] - grid[0]) / (grid.shape[-1] - 1)
    return torch.clamp(var[:, 1:] - var[:, :-1], min=float(step) ** 2 / 4)


def point_mass_exact(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v with the exact value 0 on periods that start from a point mass (X_0 = 1 at date 0).

    From a single atom x the only martingale transition with column law mu_{t+1} is mu_{t+1}
    itself, and its Gibbs form has v affine, i.e. 0 in the gauge of the data; any other v would
    put the projected kernel's error on the law of X_{t+1} and every later date. Measured on the
    shipped checkpoint, the network's v on the first period carried 7-30% of the path-law KL of
    the projected chain.
    """
    single = ((weights[:, :-1] > 0).sum(-1) == 1)[..., None]          # (B, N, 1)
    return torch.where(single, torch.zeros_like(v), v)


def _sinusoid(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def _zero(*layers: nn.Linear) -> None:
    """Zero-initialise output heads: training starts from v = h = 0, i.e. the product kernel
    K_t(y|x) = mu_{t+1}(y), whose drift |x - 1| is moderate; a random start saturates the Gibbs
    kernels (h ~ 1/s_t is large) and the drift loss has no useful gradient there."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class _Scaled(nn.Module):
    """Holds the output scales of v and h (set from training targets, saved with the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("v_scale", torch.ones(()))
        self.register_buffer("h_scale", torch.ones(()))
        self.register_buffer("grid", torch.zeros(0))

    def set_scales(self, v_scale: float, h_scale: float) -> None:
        self.v_scale.fill_(float(v_scale))
        self.h_scale.fill_(float(h_scale))


_CONV_AS_MATMUL_ROWS = 256
"""Up to this many (instance, date) rows the date-axis convolution runs as one matrix product
(2.3x faster than PyTorch's CPU conv1d for a single instance); above, conv1d is faster."""


def _conv_as_matmul(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (stride 1, zero 'same' padding) applied along the date axis of x (B, T, C) as an
    im2col matrix product; returns (B, T, out_channels), equal to conv1d up to round-off."""
    k = conv.kernel_size[0]
    pad = conv.padding[0]
    cols = torch.nn.functional.pad(x, (0, 0, pad, pad)).unfold(1, k, 1)   # (B, T, C, k)
    b, t = x.shape[0], x.shape[1]
    out = torch.addmm(conv.bias, cols.reshape(b * t, -1),
                      conv.weight.reshape(conv.out_channels, -1).T)
    return out.reshape(b, t, conv.out_channels)


class MMOTTransformer(_Scaled):
    """Seed 001 §9.2 transformer. ``forward(weights, date_mask) -> (v, h)``, see module doc."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.grid_size
        self.register_buffer("grid", torch.linspace(0.0, 1.0, m))
        self.conv = nn.Conv1d(cfg.in_features * m, cfg.d_embed, cfg.conv_kernel,
                              padding=cfg.conv_kernel // 2)
        self.proj = nn.Linear(cfg.d_embed, cfg.d_model)
        self.norm_in = nn.LayerNorm(cfg.d_model)
        self.register_buffer("pe", _sinusoid(cfg.max_dates, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.u_head = nn.Linear(cfg.d_model, m)
        self.h_head = nn.Linear(cfg.d_model, m)
        _zero(self.u_head, self.h_head)

    def forward(self, weights: torch.Tensor, date_mask: torch.Tensor | None = None):
        b, t, m = weights.shape
        if m != self.cfg.grid_size:
            raise ValueError(f"weights have {m} grid points, the model expects "
                             f"{self.cfg.grid_size}")
        if t > self.cfg.max_dates:
            raise ValueError(f"{t} dates exceed the model's max_dates={self.cfg.max_dates}")
        s = period_scale(weights, self.grid)                            # (B, N)
        feats = marginal_features(weights, self.grid, self.cfg.in_features, s).reshape(b, t, -1)
        if b * t <= _CONV_AS_MATMUL_ROWS:
            z = _conv_as_matmul(self.conv, feats)
        else:
            z = self.conv(feats.transpose(1, 2)).transpose(1, 2)
        z = self.norm_in(self.proj(torch.nn.functional.gelu(z))) + self.pe[:t]
        pad = None if date_mask is None else ~date_mask
        z = self.norm_out(self.encoder(z, src_key_padding_mask=pad))
        s = s[..., None]
        v = self.u_head(z[:, 1:]) * self.v_scale / s
        h = self.h_head(z[:, :-1]) * self.h_scale / s
        return point_mass_exact(weights, v), h


class MMOTMLP(_Scaled):
    """Ablation baseline: for each period, an MLP on (features of mu_t, features of mu_{t+1})."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.grid_size
        self.register_buffer("grid", torch.linspace(0.0, 1.0, m))
        dims = [2 * cfg.in_features * m] + [cfg.mlp_hidden] * cfg.mlp_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.body = nn.Sequential(*layers)
        self.v_head = nn.Linear(dims[-1], m)
        self.h_head = nn.Linear(dims[-1], m)
        _zero(self.v_head, self.h_head)

    def forward(self, weights: torch.Tensor, date_mask: torch.Tensor | None = None):
        b, t, m = weights.shape
        if m != self.cfg.grid_size:
            raise ValueError(f"weights have {m} grid points, the model expects "
                             f"{self.cfg.grid_size}")
        s = period_scale(weights, self.grid)
        feats = marginal_features(weights, self.grid, self.cfg.in_features, s).reshape(b, t, -1)
        z = self.body(torch.cat((feats[:, :-1], feats[:, 1:]), dim=-1))
        s = s[..., None]
        return (point_mass_exact(weights, self.v_head(z) * self.v_scale / s),
                self.h_head(z) * self.h_scale / s)


def build_model(cfg: ModelConfig, grid=None) -> nn.Module:
    """The network of ``cfg.kind``; ``grid`` (M,) is stored as a buffer (the model grid)."""
    model = MMOTTransformer(cfg) if cfg.kind == "transformer" else MMOTMLP(cfg)
    if grid is not None:
        g = torch.as_tensor(grid, dtype=torch.float32)
        if g.shape != (cfg.grid_size,):
            raise ValueError(f"grid must have shape ({cfg.grid_size},), got {tuple(g.shape)}")
        model.grid.copy_(g)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve_device(device: str | None = "cpu") -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (cuda when
    available, else cpu); ``ValueError`` when a CUDA device is asked for and none is usable."""
    name = "cpu" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got "
                         f"{device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available to this "
                             f"torch build ({torch.__version__}); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


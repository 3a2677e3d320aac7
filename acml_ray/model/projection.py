"""CLIP-style projection heads that map each side into the shared embedding space."""

from __future__ import annotations

from torch import Tensor, nn

from acml_ray.config import ProjectionConfig


class ProjectionCell(nn.Module):
    """One CLIP cell.

    ``Linear(in, p) -> GELU -> Linear(p, p) -> Dropout -> + first Linear's output -> LayerNorm``.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        projected = self.projection(x)
        out = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(out + projected)


class ProjectionHead(nn.Module):
    """A stack of `ProjectionCell`s, one per entry of ``config.dims`` (e.g. [512, 512] = two).

    Attributes:
        out_dim: ``config.dims[-1]``, the joint-space width.
    """

    def __init__(self, in_dim: int, config: ProjectionConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else ProjectionConfig()
        if in_dim < 1:
            raise ValueError(f"ProjectionHead needs in_dim >= 1, got {in_dim}")
        self.in_dim = in_dim
        self.out_dim: int = config.dims[-1]
        cells = []
        width = in_dim
        for dim in config.dims:
            cells.append(ProjectionCell(width, dim, config.dropout))
            width = dim
        self.cells = nn.Sequential(*cells)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim] -> [B, out_dim]``."""
        return self.cells(x)

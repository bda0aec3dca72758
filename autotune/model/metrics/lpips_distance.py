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
from pathlib import Path
from typing import Any

import torch

from autotune.config.tables import ConfigError, first_line, study_path

__all__ = ["Lpips", "lpips_distance"]


# torchvision's ImageNet weights each LPIPS trunk is built from (what "pretrained" downloads)
_TORCHVISION = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


def load_lpips(net: str = "alex", backbone: str = "random", home: str = "") -> Any:
    """LPIPS with its trunk ``"random"`` (seeded, offline), ``"pretrained"`` (torchvision's ImageNet
    weights, from torch's cache or downloaded) or a local file of those weights (a torchvision
    ``state_dict``, relative to the study file's folder ``home``), for air-gapped machines."""
    import lpips

    path = None
    if backbone == "pretrained":
        _check_download(net)
    elif backbone != "random":
        path = study_path(backbone, home)
        if not path.is_file():
            raise ConfigError(f"metrics.lpips_backbone: no weights file at {str(path)!r}")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # the caller's RNG state is left alone
        torch.manual_seed(0)  # the random trunk depends on it
        warnings.simplefilter("ignore", UserWarning)  # lpips 0.1.4 still passes torchvision's old `pretrained=`
        model = lpips.LPIPS(net=net, pnet_rand=backbone != "pretrained", verbose=False)
    if path is not None:
        _load_trunk(model, net, path)
    return model


def _load_trunk(model: Any, net: str, path: Path) -> None:
    """Copy torchvision weights from ``path`` into the LPIPS trunk, whose slices hold ``features[i]`` as "i"."""
    import torchvision

    trunk = getattr(torchvision.models, _TORCHVISION[net][0])()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        trunk.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as e:
        raise ConfigError(
            f"metrics.lpips_backbone: {str(path)!r} is not torchvision {_TORCHVISION[net][0]} weights: {first_line(e)}"
        ) from None
    for i in range(model.net.N_slices):
        for name, module in getattr(model.net, f"slice{i + 1}").named_children():
            module.load_state_dict(trunk.features[int(name)].state_dict())


def _check_download(net: str) -> None:
    """torchvision's weights are in torch's cache, or their host answers: else one line, at once."""
    import torchvision

    from autotune.weights.net import unreachable

    url = getattr(torchvision.models, _TORCHVISION[net][1]).IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.exists() and (why := unreachable(url)) is not None:
        raise ConfigError(
            f"metrics.lpips_backbone: the pretrained {net} weights are not in torch's cache ({cached}) and {why}: "
            f"copy {url.rsplit('/', 1)[-1]} there, or set lpips_backbone to that file (relative to the study file)"
        )


@torch.no_grad()
def lpips_distance(images: torch.Tensor, references: torch.Tensor, model: Any) -> torch.Tensor:
    """Per-image LPIPS between images and references (N, 3, H, W) in [0, 1]; 0 for identical images."""
    return model(images.float() * 2 - 1, references.float() * 2 - 1).flatten()


class Lpips:
    """LPIPS loaded once, on the device; lower is better (declared in :data:`autotune.config.objectives.OBJECTIVES`)."""

    @classmethod
    def from_config(cls, metrics: Any, device: str, home: str) -> Lpips:
        """The study's LPIPS (``[metrics] lpips_net``, ``lpips_backbone``)."""
        return cls(metrics.lpips_net, metrics.lpips_backbone, device, home)

    def __init__(self, net: str = "alex", backbone: str = "random", device: str = "cpu", home: str = "") -> None:
        self.model = load_lpips(net, backbone, home).to(device).eval()
        self.device = device

    def __call__(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return lpips_distance(images.to(self.device), references.to(self.device), self.model).cpu()

    def score(self, images: torch.Tensor, prompts: Any, references: torch.Tensor | None) -> torch.Tensor:
        """The metric protocol of :mod:`autotune.model.metrics` (scored against the references)."""
        assert references is not None, "LPIPS needs the reference images"
        return self(images, references)

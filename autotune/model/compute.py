"""How much of each denoiser call ran: a call a feature cache cut short counts for the share of the compute it
did, so the model-call ratio beside every speed-up stays a compute ratio (autotune.space.caches).

The parts a cache may skip are a transformer's blocks (its module lists named ``*blocks``) and a UNet's
resnets, attentions and samplers of its down and up blocks, and its mid block (what DeepCache wraps). Each
is weighed by its parameters x the positions it runs on (tokens, or height x width of its input): the
multiply-adds of its linear and convolution layers, up to a constant. A part ran when its first leaf
module ran (a cache replaces the part's body, not the call to it); the rest of the denoiser (embeddings,
the first and last convolutions) runs on every call, at the input's positions.

Example:
    >>> meter = Meter(pipe.unet)
    >>> pipe(prompt, num_inference_steps=10)  # DeepCache on, interval 2
    >>> meter.share()  # of the last call
    0.27
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Meter", "parts"]


def parts(model: Any) -> list[Any]:
    """The parts of a denoiser a cache may skip (see the module's docstring)."""
    if hasattr(model, "down_blocks") and hasattr(model, "up_blocks"):  # a UNet
        out: list[Any] = []
        for block in [*model.down_blocks, *model.up_blocks]:
            for name in ("resnets", "attentions", "downsamplers", "upsamplers"):
                out += list(getattr(block, name, None) or [])
        return out + ([model.mid_block] if getattr(model, "mid_block", None) is not None else [])
    return [
        block
        for name, blocks in model.named_children()
        if isinstance(blocks, torch.nn.ModuleList) and name.endswith("blocks")
        for block in blocks
    ]


def _positions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The positions a module runs on, from its first tensor input: height x width, or tokens."""
    x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if x is None or x.dim() < 3:
        return 1
    return x.shape[-2] * x.shape[-1] if x.dim() == 4 else x.shape[-2]


class Meter:
    """Hooks on a denoiser that measure the share of each call's compute that ran (:meth:`share`)."""

    def __init__(self, model: Any) -> None:
        found = parts(model)
        self.params = [sum(p.numel() for p in part.parameters()) for part in found]
        self.rest_params = sum(p.numel() for p in model.parameters()) - sum(self.params)
        self.full = [0] * len(found)  # each part's weight, as last called (skipped or not)
        self.ran = 0
        self.rest = 0
        model.register_forward_pre_hook(self._start, with_kwargs=True)
        for i, part in enumerate(found):
            part.register_forward_pre_hook(self._called(i), with_kwargs=True)
            leaf = next(m for m in part.modules() if not list(m.children()))
            leaf.register_forward_pre_hook(self._computed(i))

    def _start(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.ran, self.rest = 0, self.rest_params * _positions(args, kwargs)

    def _called(self, i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.full[i] = self.params[i] * _positions(args, kwargs)

        return hook

    def _computed(self, i: int) -> Any:
        def hook(*_: Any) -> None:
            self.ran += self.full[i]

        return hook

    def share(self) -> float:
        """Of the last call, the share of a whole call's compute that ran (1: all of it)."""
        whole = self.rest + sum(self.full)
        return 1.0 if whole <= 0 else (self.rest + self.ran) / whole

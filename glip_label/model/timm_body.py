"""A timm backbone in place of Swin, for students distilled from GLIP into a faster network.

Any timm model that supports ``features_only`` works: we take its stride-8/16/32 feature maps (the
ones the FPN's laterals read, like Swin stages 1..3). Pretrained timm weights expect RGB in [0, 1]
normalised with the ImageNet mean/std; GLIP's input is BGR in 0..255 normalised with those same
statistics times 255 (official ``maskrcnn_benchmark/data/transforms/build.py::build_transforms`` with
``INPUT.TO_BGR255``, ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``), so flipping the channel order gives exactly the
input timm expects.
Such a student saves in the official key layout except under ``backbone.body.*`` (timm's names), so
it loads in glip-label but not in the official code, whose Swin it does not have.
"""

from __future__ import annotations

import torch
from torch import nn

FPN_STRIDES = (8, 16, 32)


class TimmBody(nn.Module):
    def __init__(self, model_name: str, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        probe = timm.create_model(model_name, features_only=True, pretrained=False)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in FPN_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"timm model {model_name!r} has no feature maps at stride(s) {missing} "
                             f"(it gives {reductions}); the FPN needs strides {FPN_STRIDES}")
        # The last map of each stride (a model can have several at one stride).
        indices = tuple(max(i for i, r in enumerate(reductions) if r == s) for s in FPN_STRIDES)
        del probe
        try:
            self.model = timm.create_model(model_name, features_only=True, pretrained=pretrained, out_indices=indices)
        except Exception as exc:  # noqa: BLE001 - download errors come in many types
            if not pretrained:
                raise
            raise RuntimeError(
                f"could not get pretrained weights for timm model {model_name!r} ({exc}); offline, pass "
                "--no-backbone-pretrained (random init) or fill the Hugging Face cache first"
            ) from exc
        self.out_channels: tuple[int, ...] = tuple(self.model.feature_info.channels())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: [B, 3, H, W] GLIP-normalised BGR -> feature maps at strides 8, 16, 32."""
        return self.model(images.flip(1))

"""FPN with P6/P7 as GLIP builds it for Swin (`backbone.fpn.*`).

Laterals come from Swin stages 1..3 (strides 8/16/32); the stride-4 output is ignored (the official
`in_channels_list` starts with 0, so there is no `fpn_inner1`). P6 is a stride-2 conv on P5 (not on
C5) and P7 a stride-2 conv on ReLU(P6). Nearest-neighbour top-down upsampling to the lateral's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LastLevelP6P7(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 256) -> None:
        super().__init__()
        # Official names: fpn_inner{2,3,4} / fpn_layer{2,3,4} for strides 8/16/32.
        for index, channels in zip((2, 3, 4), in_channels, strict=True):
            inner = nn.Conv2d(channels, out_channels, 1)
            layer = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
            for conv in (inner, layer):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
            self.add_module(f"fpn_inner{index}", inner)
            self.add_module(f"fpn_layer{index}", layer)
        self.top_blocks = LastLevelP6P7(out_channels)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """stages: backbone outputs ending with strides 8, 16, 32 (Swin also gives 4 first) -> [P3..P7]."""
        c3, c4, c5 = stages[-3:]
        last_inner = self.fpn_inner4(c5)
        results = [self.fpn_layer4(last_inner)]
        for feature, inner, layer in ((c4, self.fpn_inner3, self.fpn_layer3), (c3, self.fpn_inner2, self.fpn_layer2)):
            lateral = inner(feature)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, layer(last_inner))
        return results + self.top_blocks(results[-1])

"""GLIP assembled from its parts, under the official module tree so state dicts load 1:1.

`forward` returns raw head outputs; pre- and post-processing live in `preprocess.py` and
`postprocess.py`, and `glip_label.predictor` ties everything together for users.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glip_label.config import GLIPConfig
from glip_label.model.fpn import FPN
from glip_label.model.head import HeadOutputs, VLDyHeadModule
from glip_label.model.language import LanguageBackbone, TextFeatures, bert_config
from glip_label.model.swin import SwinTransformer
from glip_label.model.timm_body import TimmBody


@dataclass
class VisualFeatures:
    """What an image batch contributes to every prompt chunk, computed once by `GLIP.encode_images`.

    fpn:            [P3..P7], each [B, C, H_l, W_l] (backbone + FPN)
    tower:          no-fusion heads only (else None): the DyHead tower's output per level
    box_regression: no-fusion heads only: the final box deltas per level, [B, 4, H_l, W_l]
    centerness:     no-fusion heads only: the final centerness logits per level, [B, 1, H_l, W_l]
    """

    fpn: list[torch.Tensor]
    tower: list[torch.Tensor] | None = None
    box_regression: list[torch.Tensor] | None = None
    centerness: list[torch.Tensor] | None = None


class VisionBackbone(nn.Module):
    def __init__(self, config: GLIPConfig, pretrained_body: bool = False) -> None:
        """pretrained_body: load the timm backbone's own pretrained weights (students; Swin never does)."""
        super().__init__()
        if config.timm_backbone:
            self.body = TimmBody(config.timm_backbone, pretrained=pretrained_body)
            self.fpn = FPN(self.body.out_channels, config.channels)
            return
        self.body = SwinTransformer(
            embed_dim=config.swin_embed_dim,
            depths=config.swin_depths,
            num_heads=config.swin_num_heads,
            window_size=config.swin_window_size,
            mlp_ratio=config.swin_mlp_ratio,
            drop_path_rate=config.swin_drop_path_rate,
            patch_size=config.swin_patch_size,
            frozen_stages=config.freeze_backbone_at,
        )
        self.fpn = FPN(tuple(config.swin_stage_channels[1:]), config.channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(images))


class GLIP(nn.Module):
    def __init__(self, config: GLIPConfig, pretrained_body: bool = False) -> None:
        super().__init__()
        self.config = config
        self.backbone = VisionBackbone(config, pretrained_body)
        self.language_backbone = LanguageBackbone(
            bert_config(
                config.text_vocab_size,
                config.text_hidden_size,
                config.text_num_layers,
                config.text_num_heads,
                config.text_intermediate_size,
                config.text_max_positions,
            )
        )
        self.rpn = VLDyHeadModule(config)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask: [B, T]. Encode once per prompt and reuse it for every image."""
        return self.language_backbone(input_ids, attention_mask)

    def forward(self, images: torch.Tensor, text: TextFeatures) -> HeadOutputs:
        """images: [B, 3, H, W] normalised and padded to the size divisibility; text: batch 1 or B."""
        visual = self.backbone(images)  # [P3..P7], each [B, C, H_l, W_l]
        return self.rpn.head(visual, text.expand(images.shape[0]))

    def encode_images(self, images: torch.Tensor) -> VisualFeatures:
        """Everything that does not depend on the prompt, for `decode` to reuse across prompt chunks.

        Backbone + FPN always; for heads without early fusion (GLIP-T(A)) also the DyHead tower and the box
        and centerness outputs, so that each chunk only adds its token dot product.
        """
        fpn = self.backbone(images)
        head = self.rpn.head
        if head.tower_uses_text:
            return VisualFeatures(fpn)
        tower = head.run_visual_tower(fpn)
        box_regression, centerness = head.box_outputs(tower)
        return VisualFeatures(fpn, tower, box_regression, centerness)

    def decode(self, visual: VisualFeatures, text: TextFeatures) -> HeadOutputs:
        """The head for one prompt chunk on features from `encode_images`: equal to `forward` on the same images."""
        batch = visual.fpn[0].shape[0]
        if visual.tower is None:
            return self.rpn.head(visual.fpn, text.expand(batch))
        token_logits = self.rpn.head.token_logits(visual.tower, text.expand(batch))
        return HeadOutputs(visual.box_regression, visual.centerness, token_logits)

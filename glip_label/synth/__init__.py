"""A seeded synthetic grounding world (coloured shapes + captions) for the offline self-training demo and tests.

See :mod:`glip_label.synth.world` for what a world and its scenes hold, :mod:`glip_label.synth.sampling`
for how a scene is sampled, :mod:`glip_label.synth.captions` for how its caption is written,
:mod:`glip_label.synth.render` for how it is drawn and :mod:`glip_label.synth.export` for the files a
world consists of.
"""

from glip_label.synth.captions import RELATION_WORDS, make_caption, plural, relation_holds
from glip_label.synth.export import (
    WORLD_FORMAT,
    WorldPaths,
    coco_detection,
    generate_world,
    mdetr_grounding,
    render_scene,
)
from glip_label.synth.render import BACKGROUND_KINDS, SHAPE_NAMES, draw_boxes, mask_box, object_mask
from glip_label.synth.sampling import make_scene
from glip_label.synth.world import (
    COLOURS,
    SIZES,
    SPLITS,
    CaptionPhrase,
    CaptionRelation,
    Scene,
    SceneObject,
    WorldConfig,
)

__all__ = [
    "BACKGROUND_KINDS",
    "COLOURS",
    "RELATION_WORDS",
    "SHAPE_NAMES",
    "SIZES",
    "SPLITS",
    "WORLD_FORMAT",
    "CaptionPhrase",
    "CaptionRelation",
    "Scene",
    "SceneObject",
    "WorldConfig",
    "WorldPaths",
    "coco_detection",
    "draw_boxes",
    "generate_world",
    "make_caption",
    "make_scene",
    "mask_box",
    "mdetr_grounding",
    "object_mask",
    "plural",
    "relation_holds",
    "render_scene",
]

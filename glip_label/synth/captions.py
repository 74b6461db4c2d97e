"""Captions of the synthetic world: noun phrases for groups of objects, and relations true of their boxes.

A caption names the objects of a scene (all of them, or a random subset of phrase groups) with their
attributes and spatial relations; every phrase names EVERY object fitting its description, and every
stated relation holds for every pair of boxes of its two phrases, so the caption is true of the picture
and its spans are exact grounding truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from glip_label.synth.render import Background
from glip_label.synth.world import NUMBER_WORDS, CaptionPhrase, CaptionRelation, SceneObject, WorldConfig

# Relation keys (as stored) and the words a caption may use for each.
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
    "next to": ("next to",),
}
# Words for background kinds in "... on a striped background".
BACKGROUND_WORDS: dict[str, str] = {
    "plain": "plain",
    "gradient": "gradient",
    "noisy": "noisy",
    "striped": "striped",
    "checkered": "checkered",
}
# (attributes named before the noun, weight): which descriptor a phrase uses, e.g. ("colour",) → "a red ring".
DESCRIPTOR_LEVELS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.2),
    (("colour",), 0.4),
    (("size",), 0.1),
    (("size", "colour"), 0.3),
)
# Phrases joined in a caption are separated by one of these (never by words that could be a relation).
PHRASE_SEPARATORS: tuple[str, ...] = (", ", " and ")


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


# ------------------------------------------------------------------------------------------ relations


def relation_holds(relation: str, subject_box: Sequence[float], object_box: Sequence[float],
                   image_size: tuple[int, int], next_to_gap: float = 0.08) -> bool:
    """Whether "<subject> <relation> <object>" is true of two "+1" xyxy boxes.

    Directional relations demand full separation (the subject's last column before the object's first);
    "next to" means the boxes overlap or their gap along both axes is at most ``next_to_gap`` of the
    image's shorter side. ``image_size`` is (width, height).
    """
    sx1, sy1, sx2, sy2 = subject_box
    ox1, oy1, ox2, oy2 = object_box
    if relation == "left of":
        return sx2 < ox1
    if relation == "right of":
        return ox2 < sx1
    if relation == "above":
        return sy2 < oy1
    if relation == "below":
        return oy2 < sy1
    if relation == "next to":
        dx = max(0.0, ox1 - sx2 - 1, sx1 - ox2 - 1)
        dy = max(0.0, oy1 - sy2 - 1, sy1 - oy2 - 1)
        return max(dx, dy) <= next_to_gap * min(image_size)
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATION_WORDS)}")


# ------------------------------------------------------------------------------------------ captions


@dataclass
class _Group:
    attributes: tuple[str, ...]  # which of size/colour the phrase names
    members: list[int]


@dataclass
class _CaptionBuilder:
    """Appends text while remembering where each phrase landed."""

    text: str = ""
    phrases: list[CaptionPhrase] = field(default_factory=list)

    def add(self, words: str) -> None:
        self.text += words

    def add_phrase(self, scene_objects: Sequence[SceneObject], group: _Group) -> int:
        first = scene_objects[group.members[0]]
        attributes = {name: getattr(first, name) for name in group.attributes}
        adjectives = [attributes[name] for name in ("size", "colour") if name in attributes]
        n = len(group.members)
        noun = first.shape if n == 1 else plural(first.shape)
        following = (adjectives + [noun])[0]
        determiner = ("an" if following[0] in "aeiou" else "a") if n == 1 else NUMBER_WORDS[n]
        start = len(self.text)
        text = " ".join([determiner, *adjectives, noun])
        self.text += text
        end = len(self.text)
        self.phrases.append(CaptionPhrase(text, start, end, end - len(noun), end, first.shape, attributes,
                                          tuple(sorted(group.members))))  # fmt: skip
        return len(self.phrases) - 1


def _matches(obj: SceneObject, reference: SceneObject, attributes: tuple[str, ...]) -> bool:
    return obj.shape == reference.shape and all(getattr(obj, a) == getattr(reference, a) for a in attributes)


def _group_objects(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[_Group]:
    """Partition the objects into phrase groups: a group is EVERY object fitting its description.

    An object whose sampled description also fits an object already in another group is described fully
    (size + colour + shape); identical objects then always share a group ("two small red squares").
    """
    levels = [level for level, _ in DESCRIPTOR_LEVELS]
    weights = np.array([w for _, w in DESCRIPTOR_LEVELS])
    order = [int(i) for i in rng.permutation(len(objects))]
    assigned: set[int] = set()
    groups = []
    for index in order:
        if index in assigned:
            continue
        attributes = levels[int(rng.choice(len(levels), p=weights / weights.sum()))]
        members = [j for j, obj in enumerate(objects) if _matches(obj, objects[index], attributes)]
        if assigned.intersection(members):
            attributes = ("size", "colour")
            members = [j for j, obj in enumerate(objects) if _matches(obj, objects[index], attributes)]
        assigned.update(members)
        groups.append(_Group(attributes, members))
    return groups


def _true_relations(subject: _Group, obj: _Group, objects: Sequence[SceneObject], image_size: tuple[int, int],
                    config: WorldConfig) -> list[str]:
    return [
        relation for relation in RELATION_WORDS
        if all(relation_holds(relation, objects[a].box, objects[b].box, image_size, config.next_to_gap)
               for a in subject.members for b in obj.members)
    ]  # fmt: skip


def make_caption(rng: np.random.Generator, objects: Sequence[SceneObject], background: Background,
                 image_size: tuple[int, int], config: WorldConfig, mention_all: bool
                 ) -> tuple[str, tuple[CaptionPhrase, ...], tuple[CaptionRelation, ...], tuple[int, int] | None]:
    """A caption naming the objects (all, or a random non-empty subset of phrase groups).

    Shape: ["there is/are "] clause (", " clause)* [" and " clause] [" on a <kind> background"] "."
    where a clause is a phrase or "<phrase> <relation> <phrase>". Between two phrases there is only
    ever a separator of PHRASE_SEPARATORS or a relation's words, which is what lets a reader (and the
    tests) recover every stated relation from the phrase spans.
    """
    groups = _group_objects(rng, objects)
    if not mention_all and len(groups) > 1:
        keep = int(rng.integers(1, len(groups) + 1))
        groups = [groups[int(i)] for i in sorted(rng.permutation(len(groups))[:keep])]
    clauses: list[tuple[_Group, str, _Group] | tuple[_Group]] = []
    position = 0
    while position < len(groups):
        if position + 1 < len(groups) and rng.random() < config.relation_prob:
            subject, obj = groups[position], groups[position + 1]
            relations = _true_relations(subject, obj, objects, image_size, config)
            if relations:
                clauses.append((subject, str(rng.choice(relations)), obj))
                position += 2
                continue
        clauses.append((groups[position],))
        position += 1

    builder = _CaptionBuilder()
    if rng.random() < config.there_is_prob:
        builder.add("there is " if len(clauses[0][0].members) == 1 else "there are ")
    relations: list[CaptionRelation] = []
    for k, clause in enumerate(clauses):
        if k > 0:
            builder.add(" and " if k == len(clauses) - 1 else ", ")
        subject_id = builder.add_phrase(objects, clause[0])
        if len(clause) == 3:
            words = str(rng.choice(RELATION_WORDS[clause[1]]))
            builder.add(f" {words} ")
            object_id = builder.add_phrase(objects, clause[2])
            relations.append(CaptionRelation(subject_id, clause[1], object_id, words))
    background_span = None
    if rng.random() < config.background_phrase_prob:
        builder.add(" on ")
        start = len(builder.text)
        builder.add(f"a {BACKGROUND_WORDS[background.kind]} background")
        background_span = (start, len(builder.text))
    builder.add(".")
    return builder.text, tuple(builder.phrases), tuple(relations), background_span

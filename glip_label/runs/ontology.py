"""What a labeling run asks for: classes, the prompts that find them, and per-class score thresholds.

An ontology comes from a prompt ("a. b. c."), a classes file or an ontology yaml/json
(:func:`load_ontology`); a thresholds.json written by `glip-label calibrate` sets per-class thresholds
(:func:`read_thresholds`, :func:`apply_thresholds`); :func:`ontology_yaml` writes an ontology back.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Ontology:
    """What to ask the model (phrases) and what to write (categories).

    Several phrases may map to one category ("man", "woman" -> person); per-category thresholds override
    the global one.
    """

    categories: list[str]
    phrases: list[str]
    phrase_category: list[int]
    thresholds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Ontology:
        names = _unique_names(names, "class names")
        return cls(list(names), list(names), list(range(len(names))))

    @classmethod
    def from_mapping(cls, classes: dict[str, Any], where: str) -> Ontology:
        categories, phrases, phrase_category, thresholds = [], [], [], {}
        for name, spec in classes.items():
            name = str(name).strip()
            if not name:
                raise ValueError(f"{where}: empty class name")
            if spec is None:
                prompts: list[str] = [name]
            elif isinstance(spec, str):
                prompts = [spec]
            elif isinstance(spec, list):
                prompts = [str(p) for p in spec]
            elif isinstance(spec, dict):
                unknown = set(spec) - {"prompts", "threshold"}
                if unknown:
                    raise ValueError(f"{where}: class {name!r} has unknown keys {sorted(unknown)} "
                                     "(allowed: prompts, threshold)")
                prompts = [str(p) for p in spec.get("prompts", [name])]
                if "threshold" in spec:
                    value = float(spec["threshold"])
                    if not 0.0 <= value <= 1.0:
                        raise ValueError(f"{where}: threshold of {name!r} must be in [0, 1], got {value}")
                    thresholds[name] = value
            else:
                raise ValueError(f"{where}: class {name!r} must map to a list of prompts or a mapping")
            if not prompts:
                raise ValueError(f"{where}: class {name!r} has no prompts")
            categories.append(name)
            for prompt in prompts:
                phrases.append(prompt.strip())
                phrase_category.append(len(categories) - 1)
        _unique_names(categories, f"{where} classes")
        _unique_names(phrases, f"{where} prompts")
        return cls(categories, phrases, phrase_category, thresholds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unique_names(names: Sequence[str], what: str) -> list[str]:
    cleaned = [n.strip() for n in names]
    if not cleaned or any(not n for n in cleaned):
        raise ValueError(f"{what}: empty name in {list(names)!r}")
    dup = [n for n, c in Counter(cleaned).items() if c > 1]
    if dup:
        raise ValueError(f"{what}: duplicated names {dup}")
    return cleaned


def load_ontology(prompt: str | None = None, classes_file: str | Path | None = None,
                  ontology: str | Path | None = None) -> Ontology:
    """Exactly one of: a "a. b. c." prompt, a classes file (one name per line), an ontology yaml/json."""
    given = sum(x is not None for x in (prompt, classes_file, ontology))
    if given > 1:
        raise ValueError("give only one of --prompt, --classes-file or --ontology")
    if not given:
        raise ValueError("say what to label: --prompt 'a. b.', --classes-file FILE or --ontology FILE (calibrate "
                         "writes OUT/ontology.calibrated.yaml, the classes with their thresholds)")
    if prompt is not None:
        if "." not in prompt and "," in prompt:  # Grounding DINO / OWL habits: "person, car"
            log.warning("--prompt %r has no '.', so it is ONE class; GLIP separates classes with '.': %r", prompt,
                        ". ".join(p.strip() for p in prompt.split(",") if p.strip()) + ".")
        return Ontology.from_names([p for p in prompt.split(".") if p.strip()])
    if classes_file is not None:
        path = Path(classes_file)
        if not path.exists():
            raise FileNotFoundError(f"classes file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return Ontology.from_names([line for line in lines if line and not line.startswith("#")])
    path = Path(ontology)  # type: ignore[arg-type]
    if not path.exists():
        raise FileNotFoundError(f"ontology file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    classes = data.get("classes", data) if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{path}: expected a mapping 'classes: {{name: {{prompts: [...], threshold: 0.4}}}}'")
    return Ontology.from_mapping(classes, str(path))


def read_thresholds(path: str | Path) -> dict[str, float]:
    """The {class: threshold} mapping of a thresholds.json (calibrate's, or a hand-written {"thresholds": {...}})."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"thresholds file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    mapping = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: expected {{\"thresholds\": {{class: score, ...}}}}")
    out = {}
    for name, value in mapping.items():
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{path}: threshold of {name!r} must be a number in [0, 1], got {value!r}")
        out[str(name)] = float(value)
    return out


def apply_thresholds(ontology: Ontology, thresholds: dict[str, float], where: str = "thresholds") -> Ontology:
    """The ontology with these per-category thresholds (they override the ontology's own); names the
    ontology does not have are reported and ignored, and none matching at all is an error."""
    unknown = sorted(set(thresholds) - set(ontology.categories))
    if len(unknown) == len(thresholds):
        raise ValueError(f"{where}: none of its classes {sorted(thresholds)[:5]} is a class being labeled "
                         f"({ontology.categories[:5]}...)")
    if unknown:
        log.warning("%s: ignoring thresholds of classes not being labeled: %s", where, unknown)
    merged = {**ontology.thresholds, **{k: v for k, v in thresholds.items() if k in ontology.categories}}
    return Ontology(ontology.categories, ontology.phrases, ontology.phrase_category, merged)


def ontology_yaml(ontology: Ontology) -> str:
    """An ontology file (`annotate --ontology`) with each class's prompts and threshold."""
    import yaml

    classes: dict[str, Any] = {}
    for index, name in enumerate(ontology.categories):
        prompts = [p for p, c in zip(ontology.phrases, ontology.phrase_category, strict=True) if c == index]
        classes[name] = {"prompts": prompts, **({"threshold": round(ontology.thresholds[name], 6)}
                                                if name in ontology.thresholds else {})}
    return yaml.safe_dump({"classes": classes}, sort_keys=False, allow_unicode=True)

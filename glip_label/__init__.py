"""glip-label: label images and caption corpora with GLIP, and train better students on them.

Public API (imported lazily so that `import glip_label` and the CLI start fast):
    load_model(weights, config=None, device="cpu", ...) -> GLIPPredictor
    GLIPPredictor.predict(images, prompt, spans=None, threshold=0.3) -> Detections | list[Detections]
    GLIPConfig, Detections
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from glip_label.config import GLIPConfig as GLIPConfig
    from glip_label.predictor import GLIPPredictor as GLIPPredictor
    from glip_label.predictor import load_model as load_model
    from glip_label.records import Detections as Detections

_LAZY = {
    "load_model": "glip_label.predictor",
    "GLIPPredictor": "glip_label.predictor",
    "GLIPConfig": "glip_label.config",
    "Detections": "glip_label.records",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glip_label' has no attribute {name!r}")

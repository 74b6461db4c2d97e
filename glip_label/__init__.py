"""glip-label: label images and caption corpora with GLIP, and train better students on them."""

__version__ = "0.1.0"

"""`python -m glip_label ...` (and `torchrun -m glip_label train-student ...`) run the CLI."""

from glip_label.cli import app

app()

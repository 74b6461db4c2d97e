"""TrainStudentOptions -> TrainConfig: every loop setting comes from the option of the same name, or is listed."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from glip_label.runs.train_student import TRAIN_CONFIG_FIELDS_NOT_OPTIONS, TrainStudentOptions
from glip_label.train.config import TrainConfig


def test_every_train_config_field_is_an_option_of_the_same_name_or_listed_as_not_one():
    option_names = {f.name for f in fields(TrainStudentOptions)}
    config_names = {f.name for f in fields(TrainConfig)}
    unaccounted = config_names - option_names - TRAIN_CONFIG_FIELDS_NOT_OPTIONS
    assert unaccounted == set(), f"TrainConfig fields neither in TrainStudentOptions nor listed: {unaccounted}"
    # A listed field must really be missing from the options, or the option would be silently ignored.
    assert config_names - option_names >= TRAIN_CONFIG_FIELDS_NOT_OPTIONS


def test_train_config_takes_each_option_value_and_keeps_the_listed_defaults():
    options = TrainStudentOptions(
        out=Path("out"), max_steps=37, batch_size=3, lr=2e-4, lang_lr=3e-5, weight_decay=0.05, warmup_steps=4,
        milestones=[0.5, 0.75], clip_grad_norm=None, amp="bf16", ema_decay=0.99, checkpoint_every=7,
        keep_checkpoints=None, eval_every=5, log_every=2, seed=11, tune="head", deterministic=True, device="cpu",
        num_workers=1, progress=False,
    )  # fmt: skip
    config = options.train_config()
    defaults = TrainConfig(max_steps=1)
    for field in fields(TrainConfig):
        if field.name in TRAIN_CONFIG_FIELDS_NOT_OPTIONS:
            assert getattr(config, field.name) == getattr(defaults, field.name), field.name
        elif field.name == "milestones":
            assert config.milestones == (0.5, 0.75)  # TrainConfig keeps milestones as a tuple of floats
        else:
            assert getattr(config, field.name) == getattr(options, field.name), field.name

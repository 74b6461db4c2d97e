"""One training run: `Trainer` and `train`, the student's training loop (AMP, EMA, checkpoints, resume, DDP).

The official counterpart is `maskrcnn_benchmark/engine/trainer.py`, `do_train` (called from
`tools/finetune.py`, `train`); the parameter groups, schedule, tuning modes, EMA, checkpoints and
metrics it uses live in the sibling modules of `glip_label.train`. Gradients are clipped on the L2
norm over all trained parameters (`maskrcnn_benchmark/solver/build.py`, `make_optimizer`,
full-model gradient clipping).

Crash safety: a checkpoint holds everything the next step depends on — weights, optimizer, scheduler,
AMP scaler, EMA, the RNG states of python/numpy/torch (per rank), the step and the position in the
data stream. The data stream itself is a pure function of (seed, position) (see
`glip_label.data.samplers.MixedSampler`), so a run killed at any moment and resumed from its last
checkpoint produces bit-identical weights to an uninterrupted run on CPU in deterministic mode.

DDP: under torchrun (WORLD_SIZE > 1) every rank takes its slice of the global batch (batch_size x
world_size) and the loss normalisers are averaged over ranks inside `glip_losses`, so the gradient
equals the one-process gradient of the whole global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from glip_label.config import GLIPConfig
from glip_label.data.dataset import GroundingBatch, GroundingCollator, GroundingDataset
from glip_label.data.samplers import StepBatchSampler
from glip_label.io import atomic_write_json, atomic_write_text
from glip_label.model.anchors import grid_anchors
from glip_label.model.box_coder import BoxCoder
from glip_label.model.glip import GLIP
from glip_label.model.prompt_tuned import PromptTunedGLIP
from glip_label.precision import parse_amp
from glip_label.train.assign import build_targets
from glip_label.train.checkpoint import (
    CHECKPOINT_VERSION,
    atomic_torch_save,
    latest_checkpoint,
    list_checkpoints,
    rng_state,
    seed_everything,
    set_rng_state,
)
from glip_label.train.config import TrainConfig
from glip_label.train.distributed import DistContext, barrier, gather_objects, setup_distributed
from glip_label.train.ema import ModelEma
from glip_label.train.losses import flatten_level_outputs, glip_losses
from glip_label.train.metrics import LOSS_NAMES, MetricsWriter
from glip_label.train.schedule import WarmupMultiStep, build_optimizer
from glip_label.train.tuning import prepare_model_for_tuning

log = logging.getLogger(__name__)


class _TrainForward(nn.Module):
    """Text encoding + detector in one forward, so DDP sees (and synchronises) the whole graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        text = self.model.encode_text(input_ids, attention_mask)
        outputs = self.model(images, text)
        return outputs.box_regression, outputs.centerness, outputs.token_logits


class Trainer:
    """One training run into `out_dir` (see the module docstring; `train` is the usual entry point)."""

    def __init__(
        self,
        model: GLIP | PromptTunedGLIP,
        dataset: GroundingDataset,
        train_config: TrainConfig,
        out_dir: str | Path,
        ctx: DistContext | None = None,
        *,
        resume: bool = False,
        val_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
    ) -> None:
        self.train_config = train_config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.val_fn = val_fn
        self.ctx = ctx or setup_distributed(train_config.device)
        self.device = self.ctx.device
        self.config: GLIPConfig = model.config

        existing = latest_checkpoint(self.out_dir)
        if existing is not None and not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints ({existing.name}); resume with resume=True "
                "(--resume) or choose a new output folder"
            )
        if not (resume and existing is not None):
            seed_everything(train_config.seed + self.ctx.rank)

        self.model = prepare_model_for_tuning(model, train_config.tune).to(self.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # The official trainer puts a frozen language backbone in eval mode (LANGUAGE_BACKBONE.FREEZE):
        # frozen BERT then gives the same features every time (no dropout).
        self.language_frozen = not any(p.requires_grad for p in self.model.language_backbone.parameters())
        self.optimizer = build_optimizer(self.model, train_config)
        self.schedule = WarmupMultiStep(
            train_config.resolved_warmup_steps, train_config.warmup_factor, train_config.milestone_steps,
            train_config.gamma,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        amp_dtype = parse_amp(train_config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
        self.ema = ModelEma(self.model, train_config.ema_decay) if train_config.ema_decay else None
        forward = _TrainForward(self.model)
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(forward, device_ids=device_ids)
        self.forward = forward
        self.box_coder = BoxCoder()
        self._anchor_cache: dict[tuple, list[torch.Tensor]] = {}

        self.mixed = dataset.sampler(seed=train_config.seed)
        self.global_batch = train_config.batch_size * self.ctx.world_size
        self.step = 0
        self.stream_position = 0
        self.skipped_steps = 0
        self.last_losses: dict[str, float] = {}
        self.validation: list[dict[str, Any]] = []
        resumed_from = None
        if resume and existing is not None:
            resumed_from = existing
            self._load_checkpoint(existing)
        elif resume:
            log.info("resume requested but %s holds no checkpoint: starting from scratch", self.out_dir)
        self.resumed_from = resumed_from
        self.metrics = (
            MetricsWriter(self.out_dir, self.step if resumed_from else None) if self.ctx.is_main else None
        )

    # ------------------------------------------------------------------ helpers
    def _set_train_mode(self) -> None:
        self.model.train()
        if self.language_frozen:
            self.model.language_backbone.eval()

    def _anchors(self, feature_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        key = tuple(feature_sizes)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = grid_anchors(
                feature_sizes, self.config.anchor_strides, self.config.anchor_sizes, device=self.device
            )
        return self._anchor_cache[key]

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = parse_amp(self.train_config.amp)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.ctx.world_size
        return values

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: GroundingBatch) -> tuple[dict[str, float], float]:
        """Forward, losses, backward, clip, optimizer and scheduler step. Returns (losses, grad norm)."""
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            box_regression, centerness, token_logits = self.forward(batch.images, batch.input_ids, batch.attention_mask)
        feature_sizes = [tuple(level.shape[-2:]) for level in centerness]
        anchors = self._anchors(feature_sizes)
        num_tokens = batch.input_ids.shape[1]
        targets = [
            build_targets(anchors, boxes, positive_map, num_tokens, self.box_coder, topk=self.config.atss_topk)
            for boxes, positive_map in zip(batch.boxes, batch.positive_maps, strict=True)
        ]
        flat = flatten_level_outputs(box_regression, centerness, token_logits)
        loss_dict = glip_losses(
            flat, targets, self.box_coder, reg_loss_weight=self.config.reg_loss_weight, text_mask=batch.attention_mask
        )
        loss = sum(loss_dict.values())

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        max_norm = self.train_config.clip_grad_norm or float("inf")
        # After DDP's all-reduce every rank holds the same gradients, hence the same norm and decision.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        values = torch.stack([loss.detach().float()] + [loss_dict[k].detach().float() for k in LOSS_NAMES])
        values = self._mean_over_ranks(values)
        # The step's one host sync (on CUDA): the logged losses and the norm that decides the update, together.
        *values, grad_norm_value = torch.cat([values, grad_norm.detach().float().reshape(1)]).tolist()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips by itself on inf/NaN gradients
            self.scaler.update()
        elif math.isfinite(grad_norm_value):
            self.optimizer.step()
        else:
            # The official trainer zeroes NaN losses and steps on; skipping the update is the same
            # intent without pushing NaN moments into AdamW.
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped", self.step + 1)
        self.scheduler.step()

        losses = {"loss": values[0], **dict(zip(LOSS_NAMES, values[1:], strict=True))}
        return losses, grad_norm_value

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self, step: int) -> Path:
        return self.out_dir / "checkpoints" / f"ckpt-{step}.pt"

    def save_checkpoint(self) -> Path | None:
        rng_states = gather_objects(rng_state(), self.ctx)
        path = self._checkpoint_path(self.step)
        if self.ctx.is_main:
            epoch, offset = self.mixed.position(self.stream_position)
            payload = {
                "version": CHECKPOINT_VERSION,
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_states,
                "data": {"stream_position": self.stream_position, "epoch": epoch, "offset": offset},
                "skipped_steps": self.skipped_steps,
                "world_size": self.ctx.world_size,
                "train_config": self.train_config.to_dict(),
                "glip_config": self.config.to_dict(),
            }
            atomic_torch_save(payload, path)
            keep = self.train_config.keep_checkpoints
            if keep is not None:
                for _step, old in list_checkpoints(self.out_dir)[:-keep]:
                    old.unlink(missing_ok=True)
        barrier(self.ctx)
        return path if self.ctx.is_main else None

    def _load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        saved = state["train_config"]
        for key in ("tune", "seed"):
            if saved.get(key) != getattr(self.train_config, key):
                now = getattr(self.train_config, key)
                raise ValueError(f"{path}: was trained with {key}={saved.get(key)!r}, now {key}={now!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule is rebuilt from this run's TrainConfig (a longer max_steps moves the milestones).
        self.scheduler.lr_lambdas[0] = self.schedule
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.stream_position = int(state["data"]["stream_position"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng_states = state["rng"]
        if len(rng_states) == self.ctx.world_size:
            set_rng_state(rng_states[self.ctx.rank])
        else:
            log.warning("%s was written by %d processes, now %d: RNG streams restart", path, len(rng_states),
                        self.ctx.world_size)
            seed_everything(self.train_config.seed + self.ctx.rank + self.step)
        log.info("resumed from %s at step %d (stream position %d)", path, self.step, self.stream_position)

    # ------------------------------------------------------------------ run
    def _loader(self) -> DataLoader:
        batches = StepBatchSampler(
            self.mixed, self.train_config.batch_size, self.step, self.train_config.max_steps,
            start_position=self.stream_position, rank=self.ctx.rank, world_size=self.ctx.world_size,
        )  # fmt: skip
        # Its own generator: creating a DataLoader iterator draws a base seed, and from the global RNG
        # that draw would shift the dropout stream of a resumed run against an uninterrupted one.
        generator = torch.Generator().manual_seed(self.train_config.seed * 1_000_003 + self.ctx.rank + self.step)
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=GroundingCollator(self.config.size_divisibility),
            num_workers=self.train_config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )

    def _progress(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=self.train_config.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.ctx.is_main and self.train_config.progress),
        )

    def _validate(self) -> None:
        if self.val_fn is None:
            return
        if self.ctx.is_main:
            self.model.eval()
            with torch.no_grad():
                metrics = dict(self.val_fn(self.model))
            self._set_train_mode()
            record = {"step": self.step, **metrics}
            self.validation.append(record)
            with open(self.out_dir / "val_metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=float) + "\n")
            if self.metrics is not None:
                self.metrics.write_validation(self.step, metrics)
        barrier(self.ctx)

    def run(self) -> dict[str, Any]:
        cfg = self.train_config
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "train_config.json", cfg.to_dict())
        self._set_train_mode()
        started = time.perf_counter()
        last_checkpoint_step = self.step if self.resumed_from else -1
        progress = self._progress()
        tick = time.perf_counter()
        try:
            for batch in self._loader():
                losses, grad_norm = self.train_step(batch)
                self.step += 1
                self.stream_position += self.global_batch
                if self.ema is not None:
                    self.ema.update(self.model)
                now = time.perf_counter()
                self.last_losses = losses
                lr = cfg.lr * self.schedule(self.step - 1)  # the base lr this step was taken with
                if self.ctx.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
                    epoch, _ = self.mixed.position(self.stream_position - 1)
                    row = {"step": self.step, "epoch": epoch, **losses, "grad_norm": grad_norm,
                           "lr": lr, "step_time_s": now - tick}  # fmt: skip
                    self.metrics.write(row)
                progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
                progress.update(1)
                tick = now
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
                    last_checkpoint_step = self.step
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.max_steps:
                    self._validate()
        finally:
            progress.close()
        if last_checkpoint_step != self.step:
            self.save_checkpoint()
        self._validate()
        outputs = self._write_final_outputs()
        if self.metrics is not None:
            self.metrics.close()
        return {
            "step": self.step,
            "out_dir": str(self.out_dir),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "world_size": self.ctx.world_size,
            "global_batch": self.global_batch,
            "skipped_steps": self.skipped_steps,
            "last_losses": self.last_losses,
            "validation": self.validation,
            "wall_s": time.perf_counter() - started,
            **outputs,
        }

    def _write_final_outputs(self) -> dict[str, Any]:
        from glip_label.weights import save_checkpoint

        outputs: dict[str, Any] = {}
        if self.ctx.is_main:
            import yaml

            config_dict = self.config.to_dict()
            pth = self.out_dir / "model_final.pth"
            safetensors = self.out_dir / "model_final.safetensors"
            save_checkpoint(self.model, pth, config_dict=config_dict)
            save_checkpoint(self.model, safetensors, config_dict=config_dict)
            atomic_write_text(self.out_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
            outputs = {"model_final": str(pth), "model_final_safetensors": str(safetensors)}
            if self.ema is not None:
                ema_path = self.out_dir / "model_final_ema.pth"
                save_checkpoint(self.ema.module, ema_path, config_dict=config_dict)
                outputs["model_final_ema"] = str(ema_path)
            summary = {k: v for k, v in outputs.items()} | {
                "step": self.step, "last_losses": self.last_losses, "skipped_steps": self.skipped_steps
            }
            atomic_write_json(self.out_dir / "train_summary.json", summary)
        barrier(self.ctx)
        return outputs


def _restore_determinism(enabled: bool, warn_only: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the run only (the setting is process-global, so it is restored after)."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: ops without a deterministic kernel warn instead of failing ("where possible").
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        _restore_determinism(*previous)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_cudnn


def train(
    model: GLIP | PromptTunedGLIP,
    dataset: GroundingDataset,
    train_config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    val_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train `model` in place on `dataset`; write checkpoints, metrics.csv and the final weights to out_dir.

    resume=True continues from the newest out_dir/checkpoints/ckpt-{step}.pt (or starts fresh if there
    is none); resume=False refuses a folder that already has checkpoints. val_fn(model) -> metrics is
    called on rank 0 every eval_every steps and at the end (results in val_metrics.jsonl).
    With tune="prompt" the trained module is `PromptTunedGLIP(model)` (wrapping again returns it).
    Returns a JSON-serialisable summary (final step, last losses, output paths, validation results).
    """
    ctx = setup_distributed(train_config.device)
    try:
        with _determinism(train_config.deterministic):
            trainer = Trainer(model, dataset, train_config, out_dir, ctx, resume=resume, val_fn=val_fn)
            return trainer.run()
    finally:
        if ctx.created_group:
            dist.destroy_process_group()


__all__ = ["Trainer", "train"]

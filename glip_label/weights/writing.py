"""Writing weights: a model saved in the official layout or as safetensors, and official snapshots converted.

Saving writes the official layout (`.pth`, readable by microsoft/GLIP's `Checkpointer.load`,
maskrcnn_benchmark/utils/checkpoint.py) or lean safetensors, always to a temporary name first, so a crash
never leaves a half-written checkpoint. Converting streams an official snapshot into a .safetensors holding
only the model, one tensor at a time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip_label.config import GLIPConfig
from glip_label.io import mkstemp_like_open, plain_file_mode
from glip_label.precision import parse_dtype
from glip_label.weights.keys import ANCHOR_PREFIX, MODULE_PREFIX
from glip_label.weights.reading import SAFETENSORS_CONFIG_KEY, TORCH_SUFFIXES, open_checkpoint


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    config_dict: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the model's weights, atomically, in the format the suffix names.

    `.pth` / `.pt` / `.bin`: the official layout `{"model": {"module." + key: tensor}}`, plus the
    buffers the official code keeps but this model recomputes (anchor cells, BERT position ids), so
    the official loader accepts the file as is. `.safetensors`: the state dict only. Either way
    `config_dict` (GLIPConfig.to_dict()) is stored, so `read_config_metadata` can rebuild the
    architecture. `dtype` casts floating tensors (e.g. torch.bfloat16); integer buffers are kept.
    """
    path = Path(path)
    fmt = _format_for_writing(path)
    state = {k: _cast_float(v.detach().cpu(), dtype, k) for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = _contiguous_unshared(state)
        metadata = {"format": "pt"}
        if config_dict is not None:
            metadata[SAFETENSORS_CONFIG_KEY] = json.dumps(config_dict)
        _atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return
    full_state = dict(state)
    for key, value in official_extra_buffers(state, config_dict).items():
        full_state.setdefault(key, value)
    payload: dict[str, Any] = {"model": {MODULE_PREFIX + k: v for k, v in full_state.items()}}
    if config_dict is not None:
        payload["glip_label"] = {"config": config_dict}
    _atomic_save(path, lambda tmp: torch.save(payload, tmp))


def official_extra_buffers(state: Mapping[str, Tensor], config_dict: Mapping[str, Any] | None) -> dict[str, Tensor]:
    """Buffers the official model has and this one recomputes: anchor cells and BERT position ids.

    Anchor cell of level i (legacy "+1" boxes; microsoft/GLIP maskrcnn_benchmark/modeling/rpn/anchor_generator.py,
    `make_anchor_generator_complex` -> `AnchorGenerator`, `generate_anchors`): base window (0, 0, s-1, s-1) with stride
    s, square of side `size` around its centre (s-1)/2. With size = 8s this is
    [-3.5s, -3.5s, 4.5s-1, 4.5s-1].
    """
    defaults = GLIPConfig()
    config = dict(config_dict or {})
    strides = [float(s) for s in config.get("anchor_strides") or defaults.anchor_strides]
    sizes = [float(s) for s in config.get("anchor_sizes") or [8 * s for s in strides]]
    if len(sizes) != len(strides):
        raise ValueError(f"anchor_sizes {sizes} and anchor_strides {strides} differ in length")
    extras: dict[str, Tensor] = {}
    for level, (stride, size) in enumerate(zip(strides, sizes, strict=True)):
        centre, half = (stride - 1) / 2, (size - 1) / 2
        cell = [centre - half, centre - half, centre + half, centre + half]
        extras[f"rpn.anchor_generator.cell_anchors.{level}"] = torch.tensor([cell], dtype=torch.float32)  # [1, 4]
    position_table = state.get("language_backbone.body.model.embeddings.position_embeddings.weight")
    if position_table is not None:
        max_positions = position_table.shape[0]
        extras["language_backbone.body.model.embeddings.position_ids"] = torch.arange(
            max_positions, dtype=torch.int64
        ).unsqueeze(0)  # [1, max_positions]
    return extras


def convert_weights(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp32",
    prefer: str = "model",
    *,
    config_dict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn an official snapshot into a lean .safetensors holding only the model state.

    Every model key is kept, the known-ignorable ones included (the loader drops them), so the
    conversion loses nothing of the model. Floats are cast to `dtype` ("fp32", "fp16", "bf16");
    integer buffers are kept. The source is memory-mapped and written one tensor at a time, so peak
    memory is about one (cast) tensor, not the model and certainly not the 4x snapshot. The config
    stored in the file is `config_dict`, else the one a glip-label .pth carries, else none.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"convert_weights writes .safetensors; got {dst}")
    target_dtype = parse_dtype(dtype)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"source and destination are the same file: {src}")
    contents = open_checkpoint(src, prefer)
    state, carried_config, source_entry = contents.state, contents.config, contents.source_entry
    skipped = [entry for entry in contents.entries if entry != source_entry]
    config = config_dict if config_dict is not None else carried_config
    metadata = {"format": "pt", "glip_label_source": src.name}
    if config is not None:
        metadata[SAFETENSORS_CONFIG_KEY] = json.dumps(config)
    _atomic_save(dst, lambda tmp: _write_safetensors_streaming(state, tmp, target_dtype, metadata))
    return {
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes_in": src.stat().st_size,
        "bytes_out": dst.stat().st_size,
        "dtype": dtype,
        "source_entry": source_entry,
        "skipped_entries": skipped,
    }


def _format_for_writing(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    raise ValueError(f"cannot tell the checkpoint format of {path}: use a .pth or .safetensors suffix")


def _stored_dtype(name: str, tensor: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype `tensor` is written in: `dtype` for float weights; integer buffers and anchor cells
    keep theirs (bf16 would turn the anchor corner 575 into 576)."""
    if dtype is None or not tensor.is_floating_point() or name.startswith(ANCHOR_PREFIX):
        return tensor.dtype
    return dtype


def _cast_float(tensor: Tensor, dtype: torch.dtype | None, name: str) -> Tensor:
    dtype = _stored_dtype(name, tensor, dtype)
    if tensor.dtype == dtype:
        return tensor
    cast = tensor.to(dtype)
    if dtype == torch.float16 and tensor.numel() and _overflows_float16(tensor, cast):
        raise ValueError(
            f"{name}: values beyond the float16 range (max |x| = {tensor.abs().max().item():.4g}); use bf16 or fp32"
        )
    return cast


def _overflows_float16(tensor: Tensor, cast: Tensor) -> bool:
    """Finite values that became inf. One aminmax pass first: isfinite over a model costs 3x more."""
    low, high = torch.aminmax(tensor)
    limit = torch.finfo(torch.float16).max
    if high.item() <= limit and low.item() >= -limit:
        return False
    return bool((torch.isinf(cast) & torch.isfinite(tensor)).any())


def _contiguous_unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give each its own, contiguous."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() and pointer in seen:
            tensor = tensor.clone()
        seen.add(pointer)
        out[key] = tensor
    return out


def _atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(temporary_path)` in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = mkstemp_like_open(path)  # the mode open() would give, not mkstemp's 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, plain_file_mode())  # writers that replace the file (safetensors) lose the mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_SAFETENSORS_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_safetensors_streaming(
    state: Mapping[str, Tensor], path: Path, float_dtype: torch.dtype | None, metadata: Mapping[str, str]
) -> None:
    """A safetensors file written tensor by tensor (safetensors' save_file builds it all in memory).

    Layout: 8-byte little-endian header length, a JSON header (padded with spaces to a multiple of
    8) giving dtype, shape and byte range of each tensor, then the raw little-endian tensor bytes.
    """
    if sys.byteorder != "little":  # the format is little-endian; keep it simple on exotic machines
        from safetensors.torch import save_file

        cast = {k: _cast_float(v, float_dtype, k) for k, v in state.items()}
        save_file(_contiguous_unshared(cast), str(path), metadata=dict(metadata))
        return
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for key, tensor in state.items():
        out_dtype = _stored_dtype(key, tensor, float_dtype)
        if out_dtype not in _SAFETENSORS_DTYPE_NAMES:
            raise ValueError(f"{key}: dtype {out_dtype} cannot be stored in safetensors here")
        nbytes = tensor.numel() * torch.empty((), dtype=out_dtype).element_size()
        header[key] = {
            "dtype": _SAFETENSORS_DTYPE_NAMES[out_dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header_bytes).to_bytes(8, "little"))
        fh.write(header_bytes)
        for chunk in _tensor_bytes(state, float_dtype):
            fh.write(chunk)


def _tensor_bytes(state: Mapping[str, Tensor], float_dtype: torch.dtype | None) -> Iterable[memoryview]:
    for key, tensor in state.items():
        flat = _cast_float(tensor, float_dtype, key).contiguous().reshape(-1)
        # A byte view, no copy: for memory-mapped sources the kernel reads pages straight from disk.
        yield memoryview(flat.view(torch.uint8).numpy())


__all__ = [
    "convert_weights",
    "official_extra_buffers",
    "save_checkpoint",
]

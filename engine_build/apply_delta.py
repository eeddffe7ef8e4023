"""Merge Gorilla v0's released weight deltas into LLaMA-7B: ``out = base + delta``, tensor by tensor.

gorilla-7b-{hf,th,tf}-v0 are published as deltas against LLaMA-7B: every tensor of the released
checkpoint must be added to the LLaMA tensor of the same name. This module owns that merge and the
merged checkpoint's layout:

- both sides may be safetensors or PyTorch ``.bin`` state dicts, sharded or not (an index json or
  the files themselves say which tensor is where);
- every tensor name must exist on both sides with the same shape, checked for all tensors before
  anything is written; errors name the tensor ("missing in base: model.layers.3.mlp.up_proj.weight");
- the one documented exception: Gorilla's tokenizer may add tokens, so its ``embed_tokens`` and
  ``lm_head`` may have more rows than LLaMA's. The first rows are base + delta; the extra rows are
  new tokens with no base value, so they are taken from the delta alone (FastChat's apply_delta,
  which Gorilla's release follows, does the same). Fewer rows, or any other difference, is an error;
- the output is safetensors with the delta's shard layout (one output shard per delta shard, same
  tensors; ``pytorch_model-0000k-of-0000n.bin`` becomes ``model-0000k-of-0000n.safetensors``), an
  index json when sharded, config / generation config / tokenizer files from the delta directory,
  and an apihelper manifest (kind ``hf-checkpoint``, prompt format ``gorilla_v0``).

Bounded memory: a 7B merge must not need 2 x 13 GB of RAM. Safetensors tensors are read straight
from the file (header offsets, ``readinto`` into a preallocated tensor) and output shards are
streamed (header first, then one tensor after another), so one base tensor and one delta tensor
are in memory at a time and the sum is computed in place. ``safetensors.safe_open`` is not used for
the data on purpose: it maps the whole file, and every page it touches counts in the process's
resident memory until the file is closed (measured: reading all of a 200 MB shard through it raised
RSS by 200 MB). ``.bin`` shards are opened with ``torch.load(mmap=True)`` (zip-format checkpoints,
torch's default since 1.6); their mapped pages are released after each delta shard, so ``.bin``
inputs take about one delta shard plus the base tensors it needs, not the model.

torch is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apihelper.build import artifacts
from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import MANIFEST_NAME, ModelManifest
from apihelper.service.prompts import PromptFormat

logger = logging.getLogger(__name__)

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Tensors whose first dimension is the vocabulary: the delta may have more rows (added tokens).
VOCAB_TENSOR_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = artifacts.TOKENIZER_FILES
# safetensors dtype codes and their sizes; torch dtypes are looked up by name (lazy torch import).
_ST_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_TORCH_TO_ST = {torch_name: code for code, (torch_name, _) in _ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorMeta:
    dtype: str  # safetensors dtype code, e.g. "F16"
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return _ST_DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


# ---------------------------------------------------------------------- reading one side


class _Source:
    """One side of the merge: which file holds which tensor, its metadata, and reading it."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label
        self.location: dict[str, Path] = {}  # tensor name -> file
        self.meta: dict[str, TensorMeta] = {}
        self.files: list[Path] = []

    def read(self, name: str) -> Any:
        """The tensor ``name`` as a tensor this process owns (safe to modify in place)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop cached file state (mapped pages, open handles)."""


class _SafetensorsSource(_Source):
    def __init__(self, directory: Path, label: str, files: list[Path]) -> None:
        super().__init__(directory, label)
        self.files = files
        self._entries: dict[str, tuple[Path, int, int]] = {}  # name -> (file, start, end)
        self._handles: dict[Path, Any] = {}
        for path in files:
            for name, meta, start, end in _read_safetensors_header(path):
                if name in self.location:
                    raise ConfigurationError(
                        f"{label}: tensor {name} is in both {self.location[name].name} and {path.name}"
                    )
                self.location[name] = path
                self.meta[name] = meta
                self._entries[name] = (path, start, end)

    def read(self, name: str) -> Any:
        import torch

        path, start, end = self._entries[name]
        meta = self.meta[name]
        tensor = torch.empty(meta.shape, dtype=getattr(torch, _ST_DTYPES[meta.dtype][0]))
        buffer = tensor.reshape(-1).view(torch.uint8).numpy()  # the tensor's own bytes
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = path.open("rb")
        handle.seek(start)
        got = handle.readinto(buffer.data)
        if got != end - start:
            raise ConfigurationError(f"{path}: truncated file (tensor {name})")
        return tensor

    def release(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


class _TorchBinSource(_Source):
    def __init__(self, directory: Path, label: str, files: list[Path]) -> None:
        super().__init__(directory, label)
        self.files = files
        self._loaded: dict[Path, dict[str, Any]] = {}
        for path in files:
            state = self._load(path)
            for name, tensor in state.items():
                if name in self.location:
                    raise ConfigurationError(
                        f"{label}: tensor {name} is in both {self.location[name].name} and {path.name}"
                    )
                self.location[name] = path
                self.meta[name] = _meta_of(tensor, f"{path.name}: {name}")
        self.release()  # listing touched only the pickles; start reading with nothing mapped

    def _load(self, path: Path) -> dict[str, Any]:
        state = self._loaded.get(path)
        if state is not None:
            return state
        import torch

        try:
            loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ConfigurationError(
                f"{path}: cannot memory-map this checkpoint ({exc}); convert it to safetensors, or "
                "re-save it with a current torch"
            ) from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ConfigurationError(f"{path}: not a state dict of tensors")
        self._loaded[path] = loaded
        return loaded

    def read(self, name: str) -> Any:
        # clone: the mapped tensor is backed by the file; the sum is computed in an owned copy.
        return self._load(self.location[name])[name].clone()

    def release(self) -> None:
        self._loaded.clear()  # the last reference to a mapped storage unmaps it


def _open_source(directory: Path, label: str) -> _Source:
    if not directory.is_dir():
        raise ConfigurationError(f"{directory}: {label} checkpoint directory not found")
    st_files = _indexed_files(directory, ST_INDEX) or sorted(directory.glob("*.safetensors"))
    if st_files:
        return _SafetensorsSource(directory, label, st_files)
    bin_files = _indexed_files(directory, BIN_INDEX) or sorted(directory.glob("pytorch_model*.bin"))
    if bin_files:
        return _TorchBinSource(directory, label, bin_files)
    raise ConfigurationError(f"{directory}: no weights in the {label} checkpoint (*.safetensors or pytorch_model*.bin)")


def _indexed_files(directory: Path, index_name: str) -> list[Path]:
    index = directory / index_name
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"{index}: unreadable index ({exc})") from exc
    files = [directory / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConfigurationError(f"{index}: names shard files that are missing: {', '.join(missing)}")
    return files


def _read_safetensors_header(path: Path) -> list[tuple[str, TensorMeta, int, int]]:
    """(name, meta, absolute start, absolute end) of every tensor in a safetensors file."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= 100 * 2**20:
                raise ValueError(f"header size {size}")
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: not a safetensors file ({exc})") from exc
    data_start = 8 + size
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{path}: bad header entry for {name} ({exc})") from exc
        if dtype not in _ST_DTYPES:
            raise ConfigurationError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        meta = TensorMeta(dtype, shape)
        if end - begin != meta.nbytes:
            raise ConfigurationError(f"{path}: tensor {name}: offsets do not match its shape")
        entries.append((name, meta, data_start + begin, data_start + end))
    return entries


def _meta_of(tensor: Any, what: str) -> TensorMeta:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    code = _TORCH_TO_ST.get(torch_name)
    if code is None:
        raise ConfigurationError(f"{what}: unsupported dtype {torch_name}")
    return TensorMeta(code, tuple(int(d) for d in tensor.shape))


# ---------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Planned:
    name: str
    meta: TensorMeta  # of the output (the delta's dtype and shape)
    base_rows: int | None  # set when the delta has extra vocabulary rows: rows that get base added


def _plan(base: _Source, delta: _Source) -> tuple[list[tuple[Path, list[_Planned]]], dict[str, list[int]]]:
    """Check names and shapes of every tensor; group the output by delta file.

    Returns [(delta file, planned tensors)] and {name: [base rows, delta rows]} for the tensors
    whose extra vocabulary rows come from the delta alone.
    """
    missing_in_base = sorted(set(delta.meta) - set(base.meta))
    if missing_in_base:
        raise ConfigurationError(_missing("base", missing_in_base, base.directory))
    missing_in_delta = sorted(set(base.meta) - set(delta.meta))
    if missing_in_delta:
        raise ConfigurationError(_missing("delta", missing_in_delta, delta.directory))
    extended: dict[str, list[int]] = {}
    by_file: dict[Path, list[_Planned]] = {path: [] for path in delta.files}
    for name in sorted(delta.meta):
        b, d = base.meta[name], delta.meta[name]
        base_rows: int | None = None
        if b.shape != d.shape:
            if (
                name.endswith(VOCAB_TENSOR_SUFFIXES)
                and len(b.shape) == len(d.shape) >= 1
                and b.shape[1:] == d.shape[1:]
                and d.shape[0] > b.shape[0]
            ):
                base_rows = b.shape[0]
                extended[name] = [b.shape[0], d.shape[0]]
            else:
                raise ConfigurationError(
                    f"shape mismatch: {name}: base {list(b.shape)} vs delta {list(d.shape)}"
                    + (" (the delta may only add vocabulary rows)" if name.endswith(VOCAB_TENSOR_SUFFIXES) else "")
                )
        by_file[delta.location[name]].append(_Planned(name, d, base_rows))
    return [(path, planned) for path, planned in by_file.items() if planned], extended


def _missing(side: str, names: list[str], directory: Path) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"missing in {side}: {names[0]}{more}; is {directory} the right checkpoint?"


# ---------------------------------------------------------------------- writing


def _output_name(delta_file: Path) -> str:
    name = delta_file.name
    if name.endswith(".safetensors"):
        return name
    return name.replace("pytorch_model", "model", 1).removesuffix(".bin") + ".safetensors"


def _write_shard(
    path: Path, planned: list[_Planned], produce: Callable[[_Planned], Any], advance: Callable[[int], Any]
) -> int:
    """Stream one safetensors file: header first, then each tensor as ``produce`` makes it."""
    # Largest items first keeps every tensor aligned to its item size (as safetensors does).
    order = sorted(planned, key=lambda p: (-p.meta.itemsize, p.name))
    header: dict[str, Any] = {}
    offset = 0
    for p in order:
        header[p.name] = {
            "dtype": p.meta.dtype,
            "shape": list(p.meta.shape),
            "data_offsets": [offset, offset + p.meta.nbytes],
        }
        offset += p.meta.nbytes
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for p in order:
            tensor = produce(p)
            data = tensor.contiguous().reshape(-1).view(_uint8()).numpy()
            if data.nbytes != p.meta.nbytes:
                raise ConfigurationError(f"{p.name}: produced {data.nbytes} bytes, expected {p.meta.nbytes}")
            handle.write(data.data)
            advance(p.meta.nbytes)
            del tensor, data  # one tensor per side alive at a time
    os.replace(partial, path)
    return offset


def _uint8() -> Any:
    import torch

    return torch.uint8


def apply_delta(
    base: Path,
    delta: Path,
    out: Path,
    *,
    progress: bool = True,
    prompt_format: PromptFormat = PromptFormat.GORILLA_V0,
    name: str | None = None,
) -> ModelManifest:
    """Write ``base + delta`` (tensor by tensor) to ``out`` as a Hugging Face checkpoint.

    ``base`` is LLaMA-7B in Hugging Face format, ``delta`` a Gorilla v0 delta release (e.g.
    gorilla-7b-hf-delta-v0). ``out`` must not exist or be empty. Returns the manifest written
    there (kind ``hf-checkpoint``, ``prompt_format`` gorilla_v0 by default).
    """
    from tqdm import tqdm

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationError(f"{out}: exists and is not an empty directory; choose a new one")
    base_src = _open_source(base, "base")
    delta_src = _open_source(delta, "delta")
    if not (delta / "config.json").is_file():
        raise ConfigurationError(f"{delta}: no config.json in the delta checkpoint")
    groups, extended = _plan(base_src, delta_src)
    for tensor_name, (rows_base, rows_delta) in extended.items():
        logger.info(
            "%s: %d rows in base, %d in delta; rows %d.. are the delta's own",
            tensor_name,
            rows_base,
            rows_delta,
            rows_base,
        )

    cast_warned: set[str] = set()

    def produce(p: _Planned) -> Any:
        summed = delta_src.read(p.name)
        addend = base_src.read(p.name)
        if addend.dtype != summed.dtype:
            if not cast_warned:
                logger.warning(
                    "base and delta dtypes differ (%s vs %s); the output keeps the delta's", addend.dtype, summed.dtype
                )
            cast_warned.add(p.name)
            addend = addend.to(summed.dtype)
        if p.base_rows is None:
            summed.add_(addend)
        else:
            summed[: p.base_rows].add_(addend)  # extra vocabulary rows stay the delta's own
        del addend
        return summed

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    total = sum(p.meta.nbytes for _, planned in groups for p in planned)
    weight_map: dict[str, str] = {}
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="apply delta", disable=not progress) as bar:
            for delta_file, planned in groups:
                shard = _output_name(delta_file)
                _write_shard(out / shard, planned, produce, bar.update)
                weight_map.update({p.name: shard for p in planned})
                # Drop what this shard mapped or opened, so memory never grows shard by shard.
                base_src.release()
                delta_src.release()
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                child.unlink(missing_ok=True)
        raise
    finally:
        base_src.release()
        delta_src.release()

    shards = sorted(set(weight_map.values()))
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / ST_INDEX).write_text(json.dumps(index, indent=2) + "\n")

    for file_name in CONFIG_FILES:
        if (delta / file_name).is_file():
            shutil.copy2(delta / file_name, out / file_name)
    tokenizer_from = delta if any((delta / f).is_file() for f in TOKENIZER_FILES) else base
    if tokenizer_from is base:
        logger.warning("%s has no tokenizer files; using the base checkpoint's", delta)
    tokenizer_files = [f for f in TOKENIZER_FILES if (tokenizer_from / f).is_file()]
    for file_name in tokenizer_files:
        shutil.copy2(tokenizer_from / file_name, out / file_name)

    config = json.loads((out / "config.json").read_text())
    manifest = ModelManifest(
        kind="hf-checkpoint",
        name=name or out.name,
        prompt_format=prompt_format,
        random_weights=False,
        max_model_len=int(config.get("max_position_embeddings") or 2048),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        details={
            "merged_from": {"base": str(base.resolve()), "delta": str(delta.resolve())},
            "tensors": len(weight_map),
            "shards": len(shards),
            "total_bytes": total,
            "vocab_rows_from_delta": dict(extended),
            "tokenizer_from": "delta" if tokenizer_from is delta else "base",
        },
    )
    manifest.write(out)
    return manifest


# ---------------------------------------------------------------------- command line


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``apihelper-build apply-delta`` (wired by ``engine_build.cli``)."""
    parser.add_argument("--base", type=Path, required=True, help="LLaMA-7B, Hugging Face format")
    parser.add_argument("--delta", type=Path, required=True, help="Gorilla v0 delta checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="merged checkpoint directory to create")
    parser.add_argument(
        "--prompt-format", choices=[f.value for f in PromptFormat], default=PromptFormat.GORILLA_V0.value
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``apihelper-build apply-delta`` with parsed ``args``; returns the exit status."""
    manifest = apply_delta(
        args.base, args.delta, args.out, progress=not args.quiet, prompt_format=PromptFormat(args.prompt_format)
    )
    print(
        f"wrote {manifest.details['tensors']} merged tensors in {manifest.details['shards']} shard(s) "
        f"to {args.out} ({MANIFEST_NAME}: kind {manifest.kind}, prompt format {manifest.prompt_format.value})"
    )
    return 0

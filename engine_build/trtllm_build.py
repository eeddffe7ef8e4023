"""Compile a Hugging Face checkpoint (merged Gorilla, or the dev model) into a TensorRT-LLM engine.

This module owns the offline engine build and the engine directory's layout:

- the engine itself, through TensorRT-LLM 1.2.x's LLM API: ``LLM(model=<hf dir>,
  tensor_parallel_size=..., dtype=..., build_config=BuildConfig(...), quant_config=QuantConfig(...),
  calib_config=CalibConfig(...))`` builds it, ``llm.save(out)`` writes it;
- the tokenizer files next to it (the service's ``LLM(model=<engine dir>)`` loads them from there);
- the apihelper manifest (kind ``tensorrt-llm-engine``): prompt format, ``max_model_len`` (the
  build's ``max_seq_len``), and in ``details`` what the service checks before it runs the engine
  (the TensorRT-LLM version and the GPU compute capability that built it) and what makes a build
  traceable (source path and a sha256 over its weight files, the build settings, build time).

tensorrt_llm is imported through ``apihelper.service.engine.trtllm_runtime.import_trtllm`` (the one
module that imports it), inside ``build_engine``: importing this module is cheap and works anywhere.

Calibration (fp8, int4_awq): TensorRT-LLM reads ``CalibConfig.calib_dataset`` as a dataset name or
a local dataset directory, loaded with ``datasets.load_dataset(dir, split="train")`` and read from
its ``text`` column. Calibration texts given here are written to ``train.jsonl`` (one
``{"text": ...}`` per line) in a temporary directory. Without texts TensorRT-LLM falls back to its
default, ``cnn_dailymail`` from the Hugging Face Hub, which needs network access.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apihelper.build import artifacts
from apihelper.build.artifacts import corpus_texts
from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import ModelManifest, read_manifest
from apihelper.service.engine.trtllm_runtime import (
    MANIFEST_KIND,
    TrtllmApi,
    cuda_compute_capability,
    cuda_device_name,
    import_trtllm,
)
from apihelper.service.prompts import PromptFormat

logger = logging.getLogger(__name__)

DTYPES = ("float16", "bfloat16")
# apihelper's name -> TensorRT-LLM QuantAlgo member (None: no quantization).
QUANT_ALGOS: dict[str, str | None] = {
    "none": None,
    "fp8": "FP8",  # FP8 weights and activations; Ada/Hopper and newer (sm 8.9+)
    "int4_awq": "W4A16_AWQ",  # 4-bit AWQ weights, fp16/bf16 activations
    "int8_wo": "W8A16",  # int8 weight-only
}
NEEDS_CALIBRATION = frozenset({"fp8", "int4_awq"})
FP8_MIN_CAPABILITY = (8, 9)
DEFAULT_CALIB_TEXTS = 512
CALIB_DATASET_FILE = "train.jsonl"
# Copied from the checkpoint into the engine directory when present. Never config.json: the
# engine directory's config.json is TensorRT-LLM's engine config.
TOKENIZER_FILES = (*artifacts.TOKENIZER_FILES, "generation_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 4 * 2**20


class _Stages:
    """Stage lines with elapsed time on stderr: a build takes minutes and says what it is doing."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def say(self, message: str) -> None:
        if self._enabled:
            print(f"[{self.elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def build_engine(
    checkpoint: Path,
    out: Path,
    *,
    dtype: str = "float16",
    quant: str = "none",
    max_batch_size: int = 64,
    max_seq_len: int = 2048,
    max_num_tokens: int = 8192,
    max_input_len: int | None = None,
    tp_size: int = 1,
    calib_texts: Iterable[str] | None = None,
    calib_max_texts: int = DEFAULT_CALIB_TEXTS,
    prompt_format: PromptFormat | None = None,
    name: str | None = None,
    progress: bool = True,
    llm_factory: Callable[..., Any] | None = None,
    api: TrtllmApi | None = None,
    compute_capability: Callable[[], str] | None = None,
    gpu_name: Callable[[], str] | None = None,
) -> ModelManifest:
    """Build ``checkpoint`` (a HF directory) into a TensorRT-LLM engine in ``out``; return its manifest.

    - ``dtype``: float16 or bfloat16 (activations, and weights without quantization).
    - ``quant``: none | fp8 | int4_awq | int8_wo. fp8 and int4_awq calibrate on ``calib_texts``
      (at most ``calib_max_texts`` of them), or on TensorRT-LLM's default dataset when None.
    - ``max_batch_size``, ``max_num_tokens`` (tokens per engine step), ``max_seq_len`` (prompt +
      completion; the service's ``max_model_len``) and ``max_input_len`` (longest prompt; default
      ``max_seq_len``, because retrieved docs make prompts long): the engine's static limits.
    - ``tp_size``: tensor parallelism; the engine then needs that many GPUs.
    - ``prompt_format``: default from the checkpoint's manifest; required without one.
    - ``llm_factory``, ``api``, ``compute_capability``, ``gpu_name``: test seams for
      ``tensorrt_llm._tensorrt_engine.LLM``, the tensorrt_llm names, and the torch CUDA queries.

    Runs on the GPU the engine is for: TensorRT engines are specific to the GPU architecture and
    to the TensorRT-LLM version, and the service refuses an engine built for others.
    """
    stages = _Stages(progress)
    _check_settings(dtype, quant, max_batch_size, max_seq_len, max_num_tokens, max_input_len, tp_size)
    input_len = max_input_len if max_input_len is not None else max_seq_len
    if not checkpoint.is_dir():
        raise ConfigurationError(f"{checkpoint}: checkpoint directory not found")
    config = _read_hf_config(checkpoint)
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and max_seq_len > positions:
        raise ConfigurationError(f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings {positions}")
    source = read_manifest(checkpoint)
    if source is not None and source.kind == MANIFEST_KIND:
        raise ConfigurationError(f"{checkpoint}: already a TensorRT-LLM engine, not a checkpoint")
    fmt = prompt_format or (source.prompt_format if source is not None else None)
    if fmt is None:
        raise ConfigurationError(
            f"{checkpoint}: no apihelper manifest to take the prompt format from; pass it "
            f"(one of {', '.join(f.value for f in PromptFormat)})"
        )
    if not any((checkpoint / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigurationError(
            f"{checkpoint}: no tokenizer files; the engine directory needs the checkpoint's tokenizer"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationError(f"{out}: exists and is not an empty directory; choose a new one")

    trt = api if api is not None else import_trtllm()
    capability = (compute_capability or cuda_compute_capability)()
    device = (gpu_name or cuda_device_name)()
    if quant == "fp8" and _capability_tuple(capability) < FP8_MIN_CAPABILITY:
        raise ConfigurationError(
            f"fp8 needs a GPU with compute capability 8.9 or newer (Ada, Hopper); this {device} is "
            f"{capability}: use int4_awq or int8_wo"
        )
    stages.say(f"TensorRT-LLM {trt.version} on {device} (compute capability {capability})")

    stages.say(f"sha256 of the weight files in {checkpoint}")
    digest, n_files, n_bytes = checksum_weights(checkpoint, progress=progress)
    stages.say(f"sha256 {digest} over {n_files} files, {n_bytes / 2**30:.2f} GiB")

    build_config = trt.BuildConfig(
        max_batch_size=max_batch_size,
        max_num_tokens=max_num_tokens,
        max_seq_len=max_seq_len,
        max_input_len=input_len,
    )
    kwargs: dict[str, Any] = {
        "model": str(checkpoint),
        "tensor_parallel_size": tp_size,
        "dtype": dtype,
        "build_config": build_config,
    }
    algo = QUANT_ALGOS[quant]
    if algo is not None:
        kwargs["quant_config"] = trt.QuantConfig(quant_algo=getattr(trt.QuantAlgo, algo))
    factory = llm_factory if llm_factory is not None else trt.LLM
    n_calib = 0
    created_out = not out.exists()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="apihelper-calib-") as calib_dir:
            if quant in NEEDS_CALIBRATION:
                if calib_texts is not None:
                    n_calib = write_calibration_dataset(Path(calib_dir), calib_texts, calib_max_texts)
                    if n_calib == 0:
                        raise ConfigurationError("no calibration texts: the corpus gave no text")
                    kwargs["calib_config"] = trt.CalibConfig(
                        calib_dataset=calib_dir,
                        calib_batches=n_calib,
                        calib_batch_size=1,
                        calib_max_seq_length=min(512, max_seq_len),
                    )
                    stages.say(f"calibrating {quant} on {n_calib} texts")
                else:
                    logger.warning(
                        "%s without calibration texts: TensorRT-LLM calibrates on cnn_dailymail "
                        "from the Hugging Face Hub (needs network access)",
                        quant,
                    )
            elif calib_texts is not None:
                logger.info("quant %s needs no calibration; the calibration texts are not used", quant)
            stages.say(
                f"building the engine: {dtype}, quant {quant}, tp {tp_size}, max_batch_size "
                f"{max_batch_size}, max_seq_len {max_seq_len}, max_input_len {input_len}, "
                f"max_num_tokens {max_num_tokens} (minutes for a 7B model)"
            )
            try:
                llm = factory(**kwargs)
            except Exception as exc:
                logger.exception("TensorRT-LLM engine build failed")
                raise ConfigurationError(f"building the engine failed ({type(exc).__name__}: {exc})") from exc
            try:
                stages.say(f"saving the engine to {out}")
                out.mkdir(parents=True, exist_ok=True)
                llm.save(str(out))
            finally:
                llm.shutdown()
    except BaseException:
        _remove_partial(out, created_out)  # never leave half an engine behind
        raise
    build_seconds = time.monotonic() - started

    copied = copy_tokenizer_files(checkpoint, out)
    manifest = ModelManifest(
        kind=MANIFEST_KIND,
        name=name or (source.name if source is not None else checkpoint.name),
        prompt_format=fmt,
        random_weights=source.random_weights if source is not None else False,
        max_model_len=max_seq_len,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        details={
            "source_checkpoint": str(checkpoint.resolve()),
            "source_kind": source.kind if source is not None else "hf-checkpoint",
            "source_weights_sha256": digest,
            "source_weight_files": n_files,
            "source_weight_bytes": n_bytes,
            "build": {
                "dtype": dtype,
                "quant": quant,
                "max_batch_size": max_batch_size,
                "max_seq_len": max_seq_len,
                "max_input_len": input_len,
                "max_num_tokens": max_num_tokens,
                "tp_size": tp_size,
                "calibration_texts": n_calib,
            },
            "tensorrt_llm_version": trt.version,
            "gpu_compute_capability": capability,
            "gpu_name": device,
            "build_seconds": round(build_seconds, 1),
            "tokenizer_files": copied,
        },
    )
    manifest.write(out)
    stages.say(f"done: engine in {out} ({build_seconds:.0f}s to build)")
    return manifest


def checksum_weights(checkpoint: Path, *, progress: bool = False) -> tuple[str, int, int]:
    """sha256 over the checkpoint's weight files: (hex digest, files, bytes).

    Files are taken in name order; each contributes its name, a NUL byte and its content, so a
    renamed or reordered shard changes the digest. Read in 4 MiB chunks: memory stays bounded.
    """
    files = sorted(p for p in checkpoint.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ConfigurationError(f"{checkpoint}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc="sha256", disable=not progress) as bar:
        for path in files:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as handle:
                while n := handle.readinto(buffer):
                    digest.update(view[:n])
                    bar.update(n)
    return digest.hexdigest(), len(files), total


def write_calibration_dataset(directory: Path, texts: Iterable[str], limit: int) -> int:
    """Write up to ``limit`` non-empty texts as ``train.jsonl`` (``{"text": ...}`` lines) in
    ``directory``, the local dataset layout TensorRT-LLM's calibration loads; return how many."""
    written = 0
    with (directory / CALIB_DATASET_FILE).open("w", encoding="utf-8") as handle:
        for text in texts:
            if written >= limit:
                break
            text = text.strip()
            if not text:
                continue
            # Calibration sees at most calib_max_seq_length tokens of each text; a few KB is plenty.
            handle.write(json.dumps({"text": text[:8192]}, ensure_ascii=False) + "\n")
            written += 1
    return written


def copy_tokenizer_files(checkpoint: Path, out: Path) -> list[str]:
    """Copy the tokenizer (and generation config) files the checkpoint has and ``out`` lacks."""
    copied = []
    for file_name in TOKENIZER_FILES:
        source, target = checkpoint / file_name, out / file_name
        if source.is_file() and not target.exists():
            shutil.copy2(source, target)
            copied.append(file_name)
    if not any((out / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigurationError(f"{checkpoint}: no tokenizer files to put next to the engine")
    return copied


def _check_settings(
    dtype: str,
    quant: str,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    max_input_len: int | None,
    tp_size: int,
) -> None:
    if dtype not in DTYPES:
        raise ConfigurationError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quant not in QUANT_ALGOS:
        raise ConfigurationError(f"quant must be one of {', '.join(QUANT_ALGOS)}, got {quant!r}")
    for label, value in (
        ("max_batch_size", max_batch_size),
        ("max_seq_len", max_seq_len),
        ("max_num_tokens", max_num_tokens),
        ("tp_size", tp_size),
    ):
        if value < 1:
            raise ConfigurationError(f"{label} must be at least 1, got {value}")
    input_len = max_input_len if max_input_len is not None else max_seq_len
    if not 1 <= input_len <= max_seq_len:
        raise ConfigurationError(f"max_input_len must be in 1..max_seq_len ({max_seq_len}), got {input_len}")
    if max_num_tokens < input_len:
        # A prompt is prefilled in one engine step unless chunked context is on: a longer prompt
        # than max_num_tokens would be refused at run time.
        raise ConfigurationError(f"max_num_tokens ({max_num_tokens}) must be at least max_input_len ({input_len})")


def _remove_partial(out: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():  # it was empty before the build: everything in it is ours
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _read_hf_config(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{checkpoint}: no config.json; not a Hugging Face checkpoint") from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: not a JSON object")
    return data


def _capability_tuple(capability: str) -> tuple[int, int]:
    major, _, minor = capability.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError as exc:
        raise ConfigurationError(f"unreadable GPU compute capability {capability!r}") from exc


# ---------------------------------------------------------------------- command line


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``apihelper-build trtllm-engine`` (wired by ``engine_build.cli``)."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--out", type=Path, required=True, help="engine directory to create")
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument("--quant", choices=tuple(QUANT_ALGOS), default="none")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=2048, help="prompt + completion tokens")
    parser.add_argument("--max-input-len", type=int, default=None, help="longest prompt (default: max-seq-len)")
    parser.add_argument("--max-num-tokens", type=int, default=8192, help="tokens per engine step")
    parser.add_argument("--tp-size", type=int, default=1, help="tensor parallelism (GPUs)")
    parser.add_argument(
        "--calib-corpus",
        type=Path,
        action="append",
        help="corpus file/dir whose doc texts calibrate fp8/int4_awq (repeatable)",
    )
    parser.add_argument("--calib-max-texts", type=int, default=DEFAULT_CALIB_TEXTS)
    parser.add_argument(
        "--prompt-format",
        choices=[f.value for f in PromptFormat],
        default=None,
        help="default: from the checkpoint's manifest",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``apihelper-build trtllm-engine`` with parsed ``args``; returns the exit status."""
    calib = corpus_texts(args.calib_corpus) if args.calib_corpus else None
    manifest = build_engine(
        args.checkpoint,
        args.out,
        dtype=args.dtype,
        quant=args.quant,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        max_num_tokens=args.max_num_tokens,
        max_input_len=args.max_input_len,
        tp_size=args.tp_size,
        calib_texts=calib,
        calib_max_texts=args.calib_max_texts,
        prompt_format=PromptFormat(args.prompt_format) if args.prompt_format else None,
        progress=not args.quiet,
    )
    details = manifest.details
    print(
        f"wrote the TensorRT-LLM engine to {args.out} (TensorRT-LLM {details['tensorrt_llm_version']}, "
        f"compute capability {details['gpu_compute_capability']}, prompt format "
        f"{manifest.prompt_format.value}, max_model_len {manifest.max_model_len})"
    )
    return 0

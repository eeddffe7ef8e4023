"""What the offline steps share: the tokenizer files a model directory carries, and the text of
corpora (to train the dev model's tokenizer, or to calibrate a quantized engine)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

# Tokenizer files copied along with a model whichever of them exist.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    """The prompt text of every doc in the corpora at ``paths`` (formats detected)."""
    from apihelper.retriever.loaders import load_corpus

    for path in paths:
        _, result = load_corpus(path, None)
        for doc in result.docs:
            yield doc.text

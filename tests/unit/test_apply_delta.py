"""apply_delta on small LLaMA checkpoints: sums, layout, refusals, and its memory bound.

The checkpoints are tiny ``LlamaForCausalLM`` models saved with ``save_pretrained`` and a small
``max_shard_size``, so both sides are sharded (and shard differently when their sizes differ).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from apihelper.build.apply_delta import ST_INDEX, apply_delta
from apihelper.errors import ConfigurationError
from apihelper.service.engine.manifest import read_manifest
from apihelper.service.prompts import PromptFormat
from tests.support import ROOT as REPO


def make_llama(
    path: Path,
    *,
    seed: int,
    vocab: int = 128,
    hidden: int = 32,
    layers: int = 2,
    intermediate: int = 64,
    shard: str = "40KB",
) -> None:
    """A random LlamaForCausalLM saved as sharded safetensors, plus a tokenizer config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # non-trivial values everywhere (norms start at exactly 1.0)
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    model.save_pretrained(str(path), max_shard_size=shard)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, "side": path.name}))


def load_all(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def rewrite(directory: Path, edit: dict[str, torch.Tensor | None]) -> None:
    """Replace (or, with None, drop) tensors in whichever shard holds them; keep the index right."""
    index_path = directory / ST_INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    for shard in sorted(directory.glob("*.safetensors")):
        tensors = load_file(str(shard))
        touched = {k: v for k, v in edit.items() if k in tensors}
        if not touched:
            continue
        for name, value in touched.items():
            if value is None:
                del tensors[name]
                if index is not None:
                    del index["weight_map"][name]
            else:
                tensors[name] = value
        save_file(tensors, str(shard), metadata={"format": "pt"})
    if index is not None:
        index_path.write_text(json.dumps(index))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    make_llama(root / "base", seed=0)
    make_llama(root / "delta", seed=1, shard="60KB")  # a different shard layout than the base
    return root / "base", root / "delta"


def test_every_output_tensor_is_base_plus_delta(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, delta = pair
    out = tmp_path / "merged"
    manifest = apply_delta(base, delta, out, progress=False)

    base_t, delta_t, out_t = load_all(base), load_all(delta), load_all(out)
    assert set(out_t) == set(base_t) == set(delta_t)
    for name, tensor in out_t.items():
        assert tensor.dtype == delta_t[name].dtype
        assert torch.equal(tensor, base_t[name] + delta_t[name]), name
    # The delta's shard layout: same file names, same tensors in each.
    delta_index = json.loads((delta / ST_INDEX).read_text())["weight_map"]
    out_index = json.loads((out / ST_INDEX).read_text())["weight_map"]
    assert out_index == delta_index
    assert len(set(out_index.values())) > 1
    for shard in set(out_index.values()):
        assert set(load_file(str(out / shard))) == set(load_file(str(delta / shard)))
    # Config and tokenizer come from the delta; the manifest says what this is.
    assert json.loads((out / "tokenizer_config.json").read_text())["side"] == "delta"
    assert (out / "config.json").read_text() == (delta / "config.json").read_text()
    assert read_manifest(out) == manifest
    assert manifest.kind == "hf-checkpoint"
    assert manifest.prompt_format is PromptFormat.GORILLA_V0
    assert manifest.max_model_len == 512
    assert manifest.details["tensors"] == len(out_t)


def test_merged_checkpoint_loads_with_transformers(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    apply_delta(*pair, out, progress=False)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    merged = dict(model.named_parameters())["model.layers.1.mlp.up_proj.weight"]
    expected = (
        load_all(pair[0])["model.layers.1.mlp.up_proj.weight"] + load_all(pair[1])["model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(merged.detach(), expected)


def test_missing_in_base_names_the_tensor(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(pair[0], base)
    rewrite(base, {"model.layers.1.mlp.up_proj.weight": None})
    with pytest.raises(ConfigurationError, match=r"missing in base: model\.layers\.1\.mlp\.up_proj\.weight"):
        apply_delta(base, pair[1], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_missing_in_delta_names_the_tensor(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    delta = tmp_path / "delta"
    shutil.copytree(pair[1], delta)
    rewrite(delta, {"model.norm.weight": None})
    with pytest.raises(ConfigurationError, match=r"missing in delta: model\.norm\.weight"):
        apply_delta(pair[0], delta, tmp_path / "out", progress=False)


def test_shape_mismatch_names_the_tensor(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(pair[0], base)
    name = "model.layers.0.self_attn.q_proj.weight"
    rewrite(base, {name: load_all(base)[name][:, :-1].contiguous()})
    with pytest.raises(
        ConfigurationError, match=rf"shape mismatch: {name.replace('.', r'[.]')}: base \[32, 31\] vs delta \[32, 32\]"
    ):
        apply_delta(base, pair[1], tmp_path / "out", progress=False)


def test_smaller_vocabulary_in_delta_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    delta = tmp_path / "delta"
    shutil.copytree(pair[1], delta)
    rewrite(delta, {"lm_head.weight": load_all(delta)["lm_head.weight"][:-2].contiguous()})
    with pytest.raises(ConfigurationError, match=r"shape mismatch: lm_head\.weight.*only add vocabulary rows"):
        apply_delta(pair[0], delta, tmp_path / "out", progress=False)


def test_extra_vocabulary_rows_come_from_the_delta(tmp_path: Path) -> None:
    make_llama(tmp_path / "base", seed=0, vocab=128)
    make_llama(tmp_path / "delta", seed=1, vocab=131)  # Gorilla-style added tokens
    out = tmp_path / "out"
    manifest = apply_delta(tmp_path / "base", tmp_path / "delta", out, progress=False)
    base_t, delta_t, out_t = load_all(tmp_path / "base"), load_all(tmp_path / "delta"), load_all(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert out_t[name].shape[0] == 131
        assert torch.equal(out_t[name][:128], base_t[name] + delta_t[name][:128])
        assert torch.equal(out_t[name][128:], delta_t[name][128:])
    assert manifest.details["vocab_rows_from_delta"] == {
        "lm_head.weight": [128, 131],
        "model.embed_tokens.weight": [128, 131],
    }
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 131


def test_torch_bin_delta(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A delta released as a PyTorch state dict (pytorch_model.bin) merges into safetensors."""
    import shutil

    delta = tmp_path / "delta"
    delta.mkdir()
    tensors = load_all(pair[1])
    torch.save(tensors, delta / "pytorch_model.bin")
    shutil.copy2(pair[1] / "config.json", delta / "config.json")
    out = tmp_path / "out"
    apply_delta(pair[0], delta, out, progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / ST_INDEX).exists()
    base_t, out_t = load_all(pair[0]), load_all(out)
    assert all(torch.equal(out_t[n], base_t[n] + tensors[n]) for n in tensors)


def test_refuses_a_non_empty_output(pair: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="not an empty directory"):
        apply_delta(*pair, tmp_path / "out", progress=False)


# The memory bound, measured for real. torch allocates tensor storage outside Python's allocator,
# so tracemalloc cannot see it; the kernel can: a subprocess resets its peak resident set size
# (writing 5 to /proc/self/clear_refs resets VmHWM) after a warm-up merge, runs the merge, and
# reports VmHWM minus the resident size before it. That counts every byte the merge made
# resident: tensors, Python objects, and file pages mapped into the process.
_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from apihelper.build.apply_delta import apply_delta

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    base, delta, out = (Path(a) for a in sys.argv[1:4])
    apply_delta(base, delta, out / "warm-up", progress=False)  # imports, allocator arenas
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS")
    apply_delta(base, delta, out / "measured", progress=False)
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
    """
)


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_peak_memory_stays_within_two_tensors(tmp_path: Path) -> None:
    # Tensors big enough to stand out from noise (the largest, embed_tokens and lm_head, 1 MiB),
    # in shards much larger than two of them (about 6 MiB), so the budget below is tighter than
    # "a shard at a time" would need.
    kwargs = {"vocab": 1024, "hidden": 256, "intermediate": 512, "layers": 4, "shard": "8MB"}
    make_llama(tmp_path / "base", seed=0, **kwargs)  # type: ignore[arg-type]
    make_llama(tmp_path / "delta", seed=1, **kwargs)  # type: ignore[arg-type]
    sizes = {n: t.numel() * t.element_size() for n, t in load_all(tmp_path / "delta").items()}
    largest, model_bytes = max(sizes.values()), sum(sizes.values())
    shards = list((tmp_path / "delta").glob("*.safetensors"))
    assert len(shards) >= 2

    (tmp_path / "out").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "base"), str(tmp_path / "delta"), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    grew = measured["peak"] - measured["before"]
    # One base and one delta tensor at a time, plus 1 MiB for Python objects and page rounding.
    budget = 2 * largest + 2**20
    print(f"peak grew {grew / 2**20:.2f} MiB; largest tensor {largest / 2**20:.2f} MiB")
    assert grew <= budget, f"peak grew {grew / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB"
    # The measurement can tell: a whole shard, or a whole side, would have blown the budget.
    assert max(p.stat().st_size for p in shards) > budget and model_bytes > budget
    out_t = load_all(tmp_path / "out" / "measured")
    assert len(out_t) == len(sizes)

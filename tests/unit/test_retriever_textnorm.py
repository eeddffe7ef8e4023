"""Keyword normalisation (BM25 terms) and hybrid score fusion: pure functions, no Milvus."""

from __future__ import annotations

from apihelper.retriever.fusion import Scored, fuse
from apihelper.retriever.loaders._text import expanded_words
from apihelper.retriever.textnorm import keyword_terms, split_words, stem


def test_stemmer_folds_inflections_but_keeps_short_words() -> None:
    assert {stem(w) for w in ("create", "created", "creates", "creating")} == {"creat"}
    assert stem("folders") == stem("folder") == "folder"
    assert stem("policies") == stem("policy")
    assert stem("mapped") == "map" and stem("running") == "run"
    assert stem("status") == "status" and stem("access") == "access"
    assert stem("get") == "get" and stem("ids") == "ids"


def test_keyword_terms_split_identifiers_and_drop_stop_words() -> None:
    assert split_words("POST /folders/{name}/delete-files createFromParams") == [
        "post",
        "folders",
        "name",
        "delete",
        "files",
        "create",
        "from",
        "params",
    ]
    assert keyword_terms("How do I create the new Sessions?") == "creat new session"
    # negations and particles are API words: update_password_no_auth, log out
    assert (
        keyword_terms("update_password_no_auth without login, log out")
        == "updat password no auth without login log out"
    )
    assert keyword_terms("the of and") == ""
    # the same function on both sides makes query and document agree
    assert keyword_terms("Deleting folders") == keyword_terms("delete_folder")


def test_expanded_words_spell_out_abbreviations_after_the_word() -> None:
    assert expanded_words("mkdir folders name") == "mkdir make directory folders name"
    assert expanded_words("create session") == "create add new session"
    assert expanded_words("plain words") == "plain words"


def _scored(pairs: list[tuple[str, float]]) -> list[Scored[str]]:
    return [Scored(key, score, key) for key, score in pairs]


def test_fuse_standardises_each_list_and_weights_keywords() -> None:
    dense = _scored([("a", 0.80), ("b", 0.79), ("c", 0.50), ("d", 0.49)])
    keyword = _scored([("b", 12.0), ("e", 3.0), ("a", 2.0)])
    fused = fuse(dense, keyword, keyword_weight=0.25, top_k=3)
    assert [s.key for s in fused][:2] == ["b", "a"]  # b: near-tie in dense, clear BM25 winner
    assert fused[0].score > fused[1].score > fused[2].score
    # a doc only BM25 found still competes (missing dense score = the dense floor)
    assert [s.key for s in fuse(dense, keyword, keyword_weight=0.9, top_k=3)] == ["b", "a", "e"]
    # degenerate weights and empty lists fall back to one side
    assert [s.key for s in fuse(dense, [], top_k=2)] == ["a", "b"]
    assert [s.key for s in fuse([], keyword, top_k=1)] == ["b"]
    assert [s.key for s in fuse(dense, keyword, keyword_weight=0.0, top_k=1)] == ["a"]
    # identical scores standardise to zero instead of dividing by zero
    flat = fuse(_scored([("x", 0.5), ("y", 0.5)]), _scored([("y", 1.0)]), top_k=2)
    assert [s.key for s in flat] == ["y", "x"]

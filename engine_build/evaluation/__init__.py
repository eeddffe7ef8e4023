"""Answer evaluation for ``apihelper-build eval-answers``: the field's evaluators and our runner.

- :mod:`.gorilla_ast`: Gorilla's APIBench AST evaluator (TorchHub, HuggingFace, TF Hub), faithful.
- :mod:`.bfcl_ast`: BFCL's AST checker for function-call answers, faithful.
- :mod:`.questions`: question sets (Backend.AI dev, APIBench, BFCL) and split manifests.
- :mod:`.answers`: answers produced elsewhere, read from JSON lines.
- :mod:`.calls`: the calls in an answer text, in the shapes the evaluators take.
- :mod:`.scoring`: one scorer per question kind, from an answer to an evaluator's label.
- :mod:`.runner`: asks each question through a live service's Generate (gRPC).
- :mod:`.report`: per-question records, the summary and its table.
"""

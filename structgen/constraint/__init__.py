"""Constraint layer: TokenizerInfo -> compile_constraint -> CompiledConstraint -> Matcher.

Modules follow the data: ``automaton`` (regex -> byte DFA, built by outlines-core in ``_worker``),
``token_masks`` (a state's allowed tokens, computed lazily; its hot loops compiled by numba in
``compiled_walks``, loaded in a thread), ``compiled`` (the frozen constraint),
``matcher`` (the per-sequence cursor), ``cache`` (the cache folder and its file format),
``compiler`` (the pipeline and its caches), ``llguidance_backend`` (non-regular schemas).

Nothing is imported here, so the compile worker (``_worker``, which needs only ``automaton`` and
numpy) starts without the schema compiler; the public names are ``structgen``'s own.
"""

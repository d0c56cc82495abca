"""A lone Session's greedy generation, step by step: the oracle the batch tests compare
each batched sequence with."""
from __future__ import annotations

import numpy as np

import ffnskip


def lone_generate(model, prompt, skip, n: int, n_ctx: int):
    """Greedy generation of n tokens by a lone Session under `skip`: the tokens, the
    logits each was picked from, the skip masks of its decode steps and its skip stats."""
    params = ffnskip._core.SessionParams()
    params.n_ctx, params.n_threads = n_ctx, 2
    s = ffnskip._core.Session(model, params)
    gen = ffnskip._core.GenerateParams()
    gen.max_tokens, gen.ignore_eos, gen.use_session_skip = n, True, False
    gen.sampling.temperature = 0.0
    gen.skip = skip
    s.begin_tokens(prompt, gen)
    logits = []
    while True:
        more, _ = s.step()
        if len(s.result().tokens) > len(logits):
            logits.append(s.last_logits)
        if not more:
            break
    r = s.result()
    return list(r.tokens), logits, np.asarray(r.stats.skip.masks, dtype=bool), r.stats.skip

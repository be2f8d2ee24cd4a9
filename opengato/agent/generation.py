"""Text from the control checkpoint: continuations of a prefix (a document, a question, an
image's observation tokens) with text tokens, one at a time through a KV cache. Captions and
chat (agent/language.py) and the web page (serve/) use it.
"""

from __future__ import annotations

import numpy as np
import torch

from opengato.batches.batch import make_batch
from opengato.model.gato import Gato
from opengato.model.packed import for_cpu_inference
from opengato.tokens.seq import TokenSeq, tail, text_seq
from opengato.tokens.tokenizer import Tokenizer


def generate_text(
    model: Gato,
    tokenizer: Tokenizer,
    prefix: TokenSeq,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Continue `prefix` (text, or an image's observation tokens for captioning) with up to
    `max_new_tokens` text tokens, stopping at end-of-text. Sampling is restricted to the text
    ids and end-of-text; temperature 0 is greedy. Returns the decoded new text."""
    return generate_texts(model, tokenizer, [prefix], max_new_tokens, temperature, seed)[0]


def generate_texts(
    model: Gato,
    tokenizer: Tokenizer,
    prefixes: list[TokenSeq],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
) -> list[str]:
    """`generate_text` for many prefixes: those of one length (e.g. the observation tokens of
    images of one size) in batches of up to `batch_size`, a forward pass per new token for a
    whole batch. Greedy, each continuation is the one `generate_text` gives its prefix alone,
    to rounding; sampled, a batch's rows draw from one generator in turn."""
    out: list[str] = [""] * len(prefixes)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_length.setdefault(len(p), []).append(i)
    for rows in by_length.values():
        for r0 in range(0, len(rows), batch_size):
            chunk = rows[r0 : r0 + batch_size]
            texts = _generate([prefixes[i] for i in chunk], model, tokenizer, max_new_tokens,
                              temperature, seed)  # fmt: skip
            for i, text in zip(chunk, texts, strict=True):
                out[i] = text
    return out


def _generate(
    prefixes: list[TokenSeq],
    model: Gato,
    tokenizer: Tokenizer,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[str]:
    """`generate_texts` of one batch of prefixes of one length."""
    model = for_cpu_inference(model.eval())
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    n_text = tokenizer.config.text_vocab_size
    allowed = torch.full((tokenizer.vocab_size,), float("-inf"), device=device)
    allowed[:n_text] = 0.0
    allowed[tokenizer.eos_id] = 0.0
    cap = model.cfg.context_len
    cache = model.make_cache(cap)
    eos = text_seq(np.array([tokenizer.eos_id]))  # an empty prompt starts a fresh document
    feed = [tail(p, cap - 1) if len(p) else eos for p in prefixes]
    out: list[list[int]] = [[] for _ in prefixes]
    done = np.zeros(len(prefixes), bool)
    for _ in range(max_new_tokens):
        if cache.length + len(feed[0]) > cap:
            cache.crop(cap - len(feed[0]))
        logits = model.next_logits(make_batch(feed).to(device), cache) + allowed  # (B, V)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, -1).cpu()
            toks = torch.multinomial(probs, 1, generator=gen)[:, 0].numpy()
        else:
            toks = logits.argmax(-1).cpu().numpy()
        for row, tok in enumerate(toks):
            if not done[row]:
                done[row] = tok == tokenizer.eos_id
                out[row] += [] if done[row] else [int(tok)]
        if done.all():
            break
        feed = [text_seq(np.array([tok])) for tok in toks]
    return [tokenizer.decode_text(o) for o in out]

"""Gato as a policy: a prompt, a token history and a KV cache, acting for a vector of envs.

The policy object holds the rollout state (LeRobot style); the `Gato` module stays stateless.
Deployment follows docs/method.md section 5: the prompt (a successful demonstration of the task)
is fed first; each step the observation's tokens and the separator are appended, then the
action's tokens are sampled one at a time, each restricted to its legal id range, and only the
last `context_len` tokens are ever attended to.

Batching. Envs act in *lanes*, each one KV cache of batch size B: one forward pass serves every
env of a lane. All envs start in one lane. When their streams differ in length (prompts of
different lengths; BabyAI missions, whose observations tokenise to different lengths), the
lane's cache turns *ragged* (model/kv_cache.py): each row keeps positions of its own, and a
forward left-pads the shorter rows with pad tokens that no real token attends to, so the lane
still runs as one batch. With `ragged=False` (and whenever the cache is off or re-prefills) a
lane splits instead (its cache rows are sliced, nothing is recomputed), a lane per length: the
older way, the reference the ragged lanes are tested against, and one forward per lane.
An env that finishes is dropped from its lane (`act(..., active=mask)`: its cache row is
filled in place by the lane's last row, a copy per finished env); `reset_env(i)` restarts one
env in a lane of its own.

Forward passes per step: one for the observation (prefill, which also carries the previous
step's last action token), then one per remaining action token, each for all envs of a lane (a
ragged lane's forward of more than `chunk_tokens` tokens runs a chunk of rows at a time).

Envs of several spaces (`groups`) can share a ragged lane too: each env's observation is
tokenised by its own space, and each samples its own action tokens in its own legal ranges. A
step takes the forwards of the lane's longest action; an env whose action is shorter holds pad
tokens in the forwards past its own (no real token attends to them) and feeds its last token
with its next observation, as in a lane of its own: the same keys and values, also once the
window slides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from opengato.batches.batch import make_batch
from opengato.kinds import Kind
from opengato.model.compiled import compiled_decoder
from opengato.model.gato import Gato
from opengato.model.kv_cache import KVCache
from opengato.model.packed import for_cpu_inference
from opengato.tokens.seq import TokenSeq, empty_seq, tail
from opengato.tokens.spaces import take
from opengato.tokens.stack import SeqStack
from opengato.tokens.tokenizer import Tokenizer

CHUNK_TOKENS = {"cpu": 4096, "cuda": 1 << 18}
"""The most tokens (rows x tokens a row) one forward of a ragged lane feeds; more run a chunk of
rows at a time. On a 2-core CPU, a lane of 640 BabyAI envs (~120k tokens a step, gato-1m) took
3.9-4.0 s a step as one forward, 2.2-2.5 s in chunks of 4,096 tokens, and 2.1-2.3 s as the
lanes per length, whose forwards stay in the CPU's caches (benchmarks/RESULTS.md, "Ragged
lanes"). On a GPU the limit only bounds a prompt prefill's activations."""


@dataclass
class _Row:
    """Row `row` of `stack`: one env's observation tokens among a step's."""

    stack: SeqStack
    row: int

    def __len__(self) -> int:
        return len(self.stack)


@dataclass
class _Lane:
    """Envs sharing one KV cache (row r = envs[r]): streams of equal lengths so far, or of any
    lengths through a ragged cache."""

    envs: list[int]
    cache: KVCache | None
    window: list[TokenSeq]
    """Per row: the last context_len tokens of the stream (fed or not); kept only when the
    policy recomputes or re-prefills (else it stays the prompt)."""
    pending: SeqStack
    """Tokens appended to the streams but not yet fed to the cache, a row per env (left-padded
    where rows differ in length)."""

    def select(self, rows: list[int]) -> _Lane:
        """A new lane of these rows (a copy of their cache rows)."""
        cache = None if self.cache is None else self.cache.select(rows)
        return _Lane(
            [self.envs[r] for r in rows],
            cache,
            [self.window[r] for r in rows],
            self.pending.select(rows),
        )

    def keep(self, rows: list[int]) -> _Lane:
        """This lane with only these rows (ascending), its cache cut in place (`KVCache.keep`:
        a copy per dropped row, and rows may change places)."""
        if self.cache is None:
            return self.select(rows)
        order = self.cache.keep(rows)
        return _Lane([self.envs[r] for r in order], self.cache,
                     [self.window[r] for r in order], self.pending.select(order))  # fmt: skip


class GatoPolicy:
    """Acts for `num_envs` environments at once with a Gato model.

    `reset(prompt)` starts new episodes in every env; `act(observations)` takes the batched
    observations of all envs (leading axis num_envs, as a gymnasium vector env returns them;
    dicts of arrays for Dict spaces, lists of str for Text) and returns the batched actions.
    The model is put in eval mode and never modified.
    """

    def __init__(
        self,
        model: Gato,
        tokenizer: Tokenizer,
        obs_space: spaces.Space,
        action_space: spaces.Space,
        num_envs: int = 1,
        sample: Literal["greedy", "temperature"] = "greedy",
        temperature: float = 1.0,
        context_len: int | None = None,
        seed: int = 0,
        use_cache: bool = True,
        overflow: Literal["slide", "reprefill"] = "slide",
        slide_slack: int = 0,
        packed: bool = True,
        compile: bool = False,
        ragged: bool = True,
        chunk_tokens: int | None = None,
        groups: list[list[int]] | None = None,
    ):
        """`use_cache=False` recomputes the whole window at every forward (the reference the
        cache is tested against). When the cache would overflow, `overflow="slide"` crops it to
        its most recent tokens (the usual sliding-window approximation: retained keys were
        computed with the dropped tokens in view); `"reprefill"` recomputes the retained window,
        exactly what `use_cache=False` attends to. A slide moves no memory (the cache is a ring
        buffer). `slide_slack` > 0 makes a slide drop that many tokens more than it must, so the
        window holds between context_len - slide_slack and context_len tokens (it once saved
        copies; kept so that older runs can be repeated). Default 0: always the full window.
        `packed` (default) runs the blocks' matmuls on weights packed once for the CPU's GEMM
        library when the model is on the CPU (model/packed.py: the same results up to rounding,
        2x faster at batch 1); False: the model's plain weights. `compile` runs each decoding
        forward through a graph compiled by torch.compile (model/compiled.py: the fastest at
        batch 1 on a CPU once each shape has compiled, ~10 s for gato-79m; results equal to
        rounding); it replaces `packed`, whose packing the compiled graph does itself; a ragged
        lane runs eagerly. `ragged` (default, with the cache sliding): envs whose streams differ
        in length share a lane through a ragged cache; False: a lane per length (the module
        docstring). `chunk_tokens`: a ragged lane's forward of more tokens than this (rows x
        tokens a row) runs a chunk of rows at a time (default `CHUNK_TOKENS` for the device):
        the same results, and on a CPU one huge forward was slower than several that stay in
        its caches. `groups`: envs of several spaces in one policy (the module docstring), the
        envs of each space group, with `obs_space` and `action_space` lists of a space per
        group; `act` then takes and returns a batch per group."""
        if sample not in ("greedy", "temperature"):
            raise ValueError(f"sample must be 'greedy' or 'temperature', got {sample!r}")
        if sample == "temperature" and temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if overflow not in ("slide", "reprefill"):
            raise ValueError(f"overflow must be 'slide' or 'reprefill', got {overflow!r}")
        self.model = model.eval()
        if compile:
            self.net = compiled_decoder(self.model)  # what runs
        else:
            self.net = for_cpu_inference(self.model) if packed else self.model
        self.tokenizer = tokenizer
        self.num_envs = num_envs
        self.sample, self.temperature = sample, temperature
        self.context_len = context_len or model.cfg.context_len
        if self.context_len > model.cfg.context_len and model.cfg.pos_encoding != "rope":
            raise ValueError("context_len exceeds the model's context_len")
        self.use_cache, self.overflow = use_cache, overflow
        self.ragged = ragged and use_cache and overflow == "slide"
        if not 0 <= slide_slack < self.context_len:
            raise ValueError(f"slide_slack must be in [0, context_len), got {slide_slack}")
        self.slide_slack = slide_slack
        self.device = next(model.parameters()).device
        self.chunk_tokens = chunk_tokens or CHUNK_TOKENS.get(self.device.type, CHUNK_TOKENS["cuda"])
        self.generator = torch.Generator().manual_seed(seed)
        self.mixed = groups is not None
        self.groups = _space_groups(obs_space, action_space, num_envs, groups)
        if self.mixed and not self.ragged:
            raise ValueError("envs of several spaces share a lane through a ragged cache: they "
                             "need use_cache, overflow='slide' and ragged=True")  # fmt: skip
        self.ranges, self.n_act = _action_ranges(tokenizer, self.groups, num_envs)
        self.vocab = (int(self.ranges[..., 0].min()), int(self.ranges[..., 1].max()))
        c0, nb = tokenizer.continuous_offset, tokenizer.config.num_bins
        lo = self.ranges[..., 0]
        self.action_kinds = np.where((c0 <= lo) & (lo < c0 + nb), Kind.CONTINUOUS,
                                     Kind.DISCRETE).astype(np.uint8)  # fmt: skip
        self.lanes: list[_Lane] = []
        self.last_action_ids = np.zeros((0, self.ranges.shape[1]), np.int64)
        """Token ids (num_envs, n_act) of the last `act`: what the model sampled (with `groups`,
        n_act is the longest action's, and an env's tokens past its own are placeholders)."""
        self.reset()

    # -- episode state --------------------------------------------------------------------

    def _prompt_window(self, prompt: TokenSeq | None) -> TokenSeq:
        return empty_seq() if prompt is None else tail(prompt, self.context_len)

    def _new_lane(self, envs: list[int], prompts: list[TokenSeq]) -> _Lane:
        cache = self.net.make_cache(self.context_len) if self.use_cache else None
        return _Lane(envs, cache, list(prompts), SeqStack.padded(list(prompts)))

    def reset(
        self, prompt: TokenSeq | list[TokenSeq | None] | None = None, seed: int | None = None
    ) -> None:
        """Start new episodes in all envs, each conditioned on `prompt` (one for all envs, or one
        per env; a prompt longer than context_len keeps its last context_len tokens: callers
        pass the first context_len tokens of a demonstration, see `head_timesteps`). `seed`
        reseeds the sampling generator."""
        if seed is not None:
            self.generator.manual_seed(seed)
        prompts = prompt if isinstance(prompt, list) else [prompt] * self.num_envs
        if len(prompts) != self.num_envs:
            raise ValueError(f"got {len(prompts)} prompts for {self.num_envs} envs")
        windows = [self._prompt_window(p) for p in prompts]
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_len.setdefault(0 if self.ragged else len(w), []).append(i)
        self.lanes = [self._new_lane(envs, [windows[i] for i in envs]) for envs in by_len.values()]

    def reset_env(self, i: int, prompt: TokenSeq | None = None) -> None:
        """Start a new episode in env `i` alone (it gets a lane, and a cache, of its own)."""
        self._drop([i])
        w = self._prompt_window(prompt)
        self.lanes.append(self._new_lane([i], [w]))

    def _drop(self, envs: list[int]) -> None:
        gone = set(envs)
        lanes = []
        for lane in self.lanes:
            keep = [r for r, e in enumerate(lane.envs) if e not in gone]
            if len(keep) == len(lane.envs):
                lanes.append(lane)
            elif keep:
                lanes.append(lane.keep(keep))
        self.lanes = lanes

    @property
    def active_envs(self) -> list[int]:
        """Envs with an episode in progress, sorted."""
        return sorted(e for lane in self.lanes for e in lane.envs)

    # -- acting -----------------------------------------------------------------------------

    @property
    def _keeps_window(self) -> bool:
        # Only recompute and re-prefill read the window; sliding needs just the pending tokens.
        return not self.use_cache or self.overflow == "reprefill"

    def _append(self, lane: _Lane, new: SeqStack) -> None:
        if self._keeps_window:
            for r, s in enumerate(new.seqs()):
                lane.window[r] = tail(TokenSeq.concat([lane.window[r], s]), self.context_len)
        lane.pending = lane.pending.append(new)

    def _advance(self, lane: _Lane, new: SeqStack) -> Tensor:
        """Append `new` (a row per env of the lane) to the lane's streams, run the model over
        what it has not seen yet, and return the next-token logits (B, V) float32."""
        self._append(lane, new)
        vocab = self.vocab  # logits only over the ids some action token may take
        with torch.no_grad():
            if lane.cache is None:
                logits = self.net.next_logits(make_batch(lane.window).to(self.device), None, vocab)
            elif self.ragged and (lane.cache.ragged or lane.pending.lead is not None):
                logits = self._ragged_forward(lane, vocab)
            else:
                T = len(lane.pending)
                feed: SeqStack | list[TokenSeq] = lane.pending
                if lane.cache.length + T > lane.cache.capacity:
                    if self.overflow == "slide" and T < lane.cache.capacity:
                        lane.cache.crop(max(0, lane.cache.capacity - T - self.slide_slack))
                    else:  # recompute the retained window from scratch
                        lane.cache.reset()
                        feed = (
                            lane.window
                            if self._keeps_window
                            else [tail(p, self.context_len) for p in lane.pending.seqs()]
                        )
                logits = self.net.next_logits(make_batch(feed).to(self.device), lane.cache, vocab)
        lane.pending = SeqStack.empty(len(lane.envs), self.tokenizer.config.patch_size)
        return logits

    def _ragged_forward(self, lane: _Lane, vocab: tuple[int, int]) -> Tensor:
        """`next_logits` of a lane's pending tokens through its ragged cache, each row sliding
        its own window (as a lane of one env would). A forward of more than `chunk_tokens`
        tokens runs a chunk of rows at a time, through views of the cache's rows."""
        cache, feed = lane.cache, lane.pending
        B, C = len(lane.envs), cache.capacity
        cache.make_ragged(B)
        n = feed.lengths()
        if (n > C).any():  # more than a window: the last C tokens of each such row
            feed = SeqStack.padded([tail(p, C) for p in feed.seqs()])
            n = feed.lengths()
        held = cache.row_lengths()
        over = held + n > C
        if over.any():
            cache.crop_rows(np.where(over, C - n - self.slide_slack, held))
        step = max(1, self.chunk_tokens // max(1, len(feed)))  # rows a forward
        if step >= B:
            cache.lead = feed.lead
            return self.net.next_logits(make_batch(feed).to(self.device), cache, vocab)
        cfg, w = self.model.cfg, self.model.lm_head.weight  # the buffers the views share
        cache.allocate(B, cfg.n_head, cfg.n_embd // cfg.n_head, w.dtype, w.device)
        out = []
        for r0 in range(0, B, step):
            rows = list(range(r0, min(B, r0 + step)))
            part, view = feed.select(rows).unpadded(), cache.rows(rows[0], rows[-1] + 1)
            view.lead = part.lead
            out.append(self.net.next_logits(make_batch(part).to(self.device), view, vocab))
        return torch.cat(out)

    def _sample(self, logits: Tensor, ranges: np.ndarray) -> np.ndarray:
        """Token ids (B,), row r's restricted to its legal range [ranges[r, 0], ranges[r, 1])."""
        v0 = self.vocab[0]
        if (ranges == ranges[0]).all():  # one range for the lane: a slice of the logits
            lo, hi = (int(x) for x in ranges[0])
            legal = logits[:, lo - v0 : hi - v0]  # (B, hi - lo)
        else:  # envs of several spaces: the others' ids masked (the same argmax as a slice's)
            cols = torch.arange(logits.shape[1], device=logits.device)
            lo_t, hi_t = (torch.from_numpy(x - v0).to(logits.device)[:, None] for x in ranges.T)
            legal = logits.masked_fill((cols < lo_t) | (cols >= hi_t), float("-inf"))
            lo = v0
        if self.sample == "greedy":
            idx = legal.argmax(-1)
        else:
            probs = torch.softmax(legal / self.temperature, -1).cpu()
            idx = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        return idx.cpu().numpy().astype(np.int64) + lo

    def _split_lanes(self, n_new: dict[int, int]) -> None:
        """Split every lane whose envs' next observations differ in length."""
        lanes = []
        for lane in self.lanes:
            groups: dict[int, list[int]] = {}
            for r, e in enumerate(lane.envs):
                groups.setdefault(n_new[e], []).append(r)
            if len(groups) == 1:
                lanes.append(lane)
            else:
                lanes += [lane.select(rows) for rows in groups.values()]
        self.lanes = lanes

    def _tokenize(self, space: spaces.Space, rows: Any, envs: list[int]) -> dict[int, _Row]:
        """Each of these envs' observation tokens, a row of a stack: one stack when the
        observations have a fixed size, else one per length (text makes them ragged)."""
        out = {}
        for group, laid in self.tokenizer.observation_groups(space, rows, len(envs)):
            stack = SeqStack.from_rows(laid)
            out.update({envs[t]: _Row(stack, j) for j, t in enumerate(group)})
        return out

    def _observed(self, lane: _Lane, obs: dict[int, _Row]) -> SeqStack:
        """The lane's envs' observation tokens, then the separator (a timestep start each)."""
        sep = SeqStack.column(
            np.full(len(lane.envs), self.tokenizer.separator_id), Kind.SEPARATOR, target=False
        )
        sep.starts[:] = True  # as `Tokenizer.separator()`
        parts: dict[int, tuple[SeqStack, list[int], list[int]]] = {}  # stack, its rows, where
        for i, e in enumerate(lane.envs):
            stack, rows, at = parts.setdefault(id(obs[e].stack), (obs[e].stack, [], []))
            rows.append(obs[e].row)
            at.append(i)
        if len(parts) == 1:  # all of one stack
            stack, rows, _ = next(iter(parts.values()))
            return stack.select(rows).append(sep)
        return SeqStack.merged([(s.select(rows), at) for s, rows, at in parts.values()]).append(sep)

    def act(self, observations: Any, active: np.ndarray | None = None) -> Any:
        """Batched actions (leading axis num_envs) for batched observations of all envs; with
        `groups`, a list of them, a batch per group (its envs in order).

        `active` (bool[num_envs], default all) marks envs still in their episode; an env once
        inactive stays so until `reset`/`reset_env` (it leaves its cache), its observation row
        is ignored and its returned action is a placeholder (every token at its lowest id)."""
        if active is not None:
            self._drop([i for i in range(self.num_envs) if not active[i]])
        live = np.zeros(self.num_envs, bool)
        live[self.active_envs] = True
        ids = self.ranges[:, :, 0].copy()  # (N, n_act)
        obs: dict[int, _Row] = {}
        for (space, _, envs), batch in zip(self.groups, observations if self.mixed
                                           else [observations], strict=True):  # fmt: skip
            rows = np.flatnonzero(live[envs]).tolist()  # only the active rows are tokenised: a
            if rows:  # big batch's stragglers stay cheap
                values = take(space, batch, rows)
                obs.update(self._tokenize(space, values, envs[rows].tolist()))
        if obs and not self.ragged:
            self._split_lanes({e: len(o) + 1 for e, o in obs.items()})  # + the separator
        for lane in self.lanes:  # a lane's tokens move as one stack: no per-env work
            logits = self._advance(lane, self._observed(lane, obs))
            envs = np.asarray(lane.envs)
            n_act = self.n_act[envs]
            last = int(n_act.max())
            final = np.zeros(len(envs), np.int64)  # each env's last action token
            for j in range(last):
                tok = self._sample(logits, self.ranges[envs, j])  # (B,)
                going = n_act > j  # (all, but with envs of several spaces)
                ids[envs[going], j] = tok[going]
                ends = n_act == j + 1
                final[ends] = tok[ends]
                if j + 1 < last:  # the tokens that are not their env's last
                    more = n_act > j + 1
                    kinds = self.action_kinds[envs, j]
                    logits = self._advance(lane, SeqStack.column(tok, kinds, present=more))
            # Each env's last token is fed with its next observation, saving a forward pass; an
            # env whose action is shorter than the lane's longest holds its own until then too,
            # so its window slides as in a lane of its own (the same keys and values).
            kinds = self.action_kinds[envs, n_act - 1]
            self._append(lane, SeqStack.column(final, kinds))
        self.last_action_ids = ids  # the sampled token ids, for display (opengato serve)
        actions = [self.tokenizer.detokenize(a, ids[envs, : self.n_act[envs[0]]])
                   for _, a, envs in self.groups]  # fmt: skip
        return actions if self.mixed else actions[0]


def _space_groups(obs_space, action_space, num_envs: int, groups) -> list[tuple]:
    """(observation space, action space, envs int64[]) per space group."""
    if groups is None:
        return [(obs_space, action_space, np.arange(num_envs))]
    envs = sorted(e for g in groups for e in g)
    if not len(groups) == len(obs_space) == len(action_space) or envs != list(range(num_envs)):
        raise ValueError(f"groups must split the envs 0..{num_envs - 1} among themselves, with "
                         "an observation space and an action space each")  # fmt: skip
    return [(o, a, np.asarray(g, np.int64)) for o, a, g in zip(obs_space, action_space, groups,
                                                                strict=True)]  # fmt: skip


def _action_ranges(tokenizer: Tokenizer, groups: list[tuple], num_envs: int):
    """Per env, the legal id range of each of its action tokens, int64 (num_envs, n_act, 2)
    (n_act the longest action's; a shorter action's last range repeats), and its action tokens,
    int64 (num_envs,)."""
    per = [tokenizer.action_token_ranges(a) for _, a, _ in groups]
    width = max(len(r) for r in per)
    ranges, n_act = np.zeros((num_envs, width, 2), np.int64), np.zeros(num_envs, np.int64)
    for (_, _, envs), r in zip(groups, per, strict=True):
        ranges[envs] = np.concatenate([r, np.repeat(r[-1:], width - len(r), axis=0)])
        n_act[envs] = len(r)
    return ranges, n_act

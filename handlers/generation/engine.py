"""A generation engine with iteration-level (continuous) batching, independent of the server that feeds it.

Requests wait in a queue and join the running batch at the next ``step()`` when a slot is free; each step prefills
the newcomers (one left-padded batch, one forward pass) and advances every request that was already running by one
token (one batched forward pass); a request leaves as soon as it ends, so nobody waits for the longest sequence.

The running batch keeps ONE key/value cache (a transformers ``DynamicCache`` whose layers append in place:
``kv_cache.py``), left-padded: row ``i`` holds its ``cached`` real tokens in the last columns, the columns before
are padding, masked out by a ``[B, T]`` attention mask rebuilt from the row lengths (handed to SDPA models ready as
``[B, 1, 1, T]`` at a decode step). Each row gets explicit ``position_ids`` (its own count of real tokens), so
models with learned absolute positions (GPT-2) and rotary ones (Llama, Qwen2) see the same positions as when alone.
While membership is unchanged, the cache only grows by the model's own append; when requests join, their prefill
cache and the batch cache are padded on the left to one length and concatenated on the batch dim; when requests
leave, the remaining rows are selected and leading columns that are padding in every row are dropped.

Only models whose every cache layer is a plain full-attention ``DynamicLayer`` can take this path: sliding-window
layers (Mistral, Gemma 2/3) and linear-attention / state-space layers (Mamba, Qwen3-Next) keep caches that cannot be
left-padded or trimmed this way, and encoder-decoders are out of scope; they are refused at construction.

The engine is single-threaded: one thread calls ``add``/``step``/``cancel`` (``EngineLoop`` is that thread).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from handlers.generation.admission import Admission
from handlers.generation.detokenize import Detokenizer
from handlers.generation.kv_cache import check_batchable, growing_cache, keep_rows, stack_rows
from handlers.generation.sampling import SamplingParams, sample, token_logprobs
from handlers.generation.sequence import Event, SequenceState, eos_ids, prefill_groups, prompt_ids

log = logging.getLogger(__name__)
GENERIC_ERROR = "internal error while generating"


class Engine:
    """Continuous-batching generation over one Hugging Face causal LM and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_running: int = 16,
        max_context: int | None = None,
        device: str | torch.device = "cpu",
        max_queue_wait_s: float = 0.0,
        static: bool = False,
        fill_wait_s: float = 0.0,
    ):
        """``max_queue_wait_s``: refuse (429) a request whose expected wait for a slot is longer (0: never).
        ``static``: static batching, the baseline continuous batching is measured against (``maas bench generate``):
        newcomers join only an empty batch, and rows that end early stay in it, computed as padding, until its
        longest ends, as in ``model.generate`` on a padded batch; an ``EngineLoop`` waits ``fill_wait_s`` at most for
        a full batch."""
        check_batchable(model)
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, not {max_running}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.max_running, self.static, self.fill_wait_s = max_running, static, fill_wait_s
        self.admission = Admission(max_running, max_queue_wait_s)
        config = model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if max_context is None and limit is None:
            raise ValueError("the model's config names no context length; pass max_context")
        if max_context is not None and limit is not None and max_context > limit:
            raise ValueError(f"max_context {max_context} is beyond the model's {limit} positions")
        self.max_context = int(max_context or limit)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.eos_ids = eos_ids(tokenizer, model)
        self._pad_id = min(self.eos_ids, default=0)  # any id will do: padding is masked out
        # Logits of the last position only, when the model can (most HF causal LMs): prefill needs no more.
        keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._logits_kw = {"logits_to_keep": 1} if keep_last else {}
        self._sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        self._encode_lock = threading.Lock()
        self._waiting: deque[SequenceState] = deque()
        self._rows: list[SequenceState] = []  # running, in the batch cache's row order
        self._cache: DynamicCache | None = None
        self._ids: dict[str, SequenceState] = {}

    def prepare(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """Tokenize and check a prompt against this model (``prompt_ids``; no state touched; safe from any thread)."""
        with self._encode_lock:  # a fast tokenizer is not safe to encode from two threads at once
            return prompt_ids(self.tokenizer, prompt, params, self.vocab_size, self.max_context)

    def add(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        """Check and queue a request; it joins the batch at a coming step. A bad request raises before queueing."""
        if request_id in self._ids:
            raise ValueError(f"request {request_id!r} is already in the engine")
        ids = self.prepare(prompt, params)
        detokenizer = Detokenizer(self.tokenizer, ids, params.stop)
        seq = SequenceState(request_id, ids, params, detokenizer, params.make_generator(self.device))
        self._ids[request_id] = seq
        self._waiting.append(seq)

    def cancel(self, request_id: str) -> None:
        """The request leaves at the next step (one "cancelled" event); an unknown or finished id is ignored."""
        seq = self._ids.get(request_id)
        if seq is not None:
            seq.cancelled = True

    @property
    def has_work(self) -> bool:
        return bool(self._ids)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def filling(self, queued: int = 0) -> bool:
        """Static batching only: the batch is empty and too few requests wait to fill it."""
        return self.static and not self._rows and 0 < len(self._waiting) + queued < self.max_running

    @torch.inference_mode()
    def step(self, on_prefilled: Callable[[list[Event]], None] | None = None) -> list[Event]:
        """Admit, prefill, decode once, and return one event per request that produced a token or ended.

        ``on_prefilled`` is handed the events so far (newcomers' first tokens, cancellations) before the decode, so
        they can go out while the running rows decode; they are then not returned."""
        # (a static batch's padding rows stay in it, ended: they end only once)
        ending = [s for s in [*self._waiting, *self._rows] if s.cancelled and s.finish_reason is None]
        events = [self._end(s, "cancelled") for s in ending]
        if events:
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
            self._evict()
        room = 0 if self.static and self._rows else self.max_running - len(self._rows)
        joining = [self._waiting.popleft() for _ in range(min(len(self._waiting), room))]
        for seq in joining:
            seq.joined_at = time.monotonic()
        prefilled = [(group, self._prefill(group, events)) for group in prefill_groups(joining)]
        if on_prefilled is not None and events and self._rows:
            on_prefilled(events)
            events = []
        if self._rows:
            self._decode(events)
        self._evict()
        self._join(prefilled)
        return events

    def abort_all(self, error: str) -> list[Event]:
        """End every request now with ``error`` (the server is stopping); the engine is empty afterwards."""
        events = [self._end(s, "error", error) for s in [*self._waiting, *self._rows] if s.finish_reason is None]
        self._waiting.clear()
        self._rows, self._cache = [], None
        return events

    def generate(self, prompt: str | list[int], params: SamplingParams) -> tuple[str, list[int], str]:
        """Run one request to the end through the same batching path (self-checks, in-process benchmarks).

        It drives the engine itself, so it refuses to run while other requests are in it.
        """
        if self.has_work:
            raise RuntimeError("generate() drives the engine alone; other requests are in it")
        self.add("generate", prompt, params)
        text, ids = [], []
        while True:
            for event in self.step():
                text.append(event.text)
                ids.extend(event.token_ids)
                if event.finished:
                    if event.finish_reason == "error":
                        raise RuntimeError(event.error or GENERIC_ERROR)
                    return "".join(text), ids, event.finish_reason or "stop"

    def _prefill(self, seqs: list[SequenceState], events: list[Event]) -> DynamicCache | None:
        """One forward pass over the newcomers' prompts, left-padded to the longest; samples their first tokens."""
        longest = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, longest - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, longest - len(s.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            cache = growing_cache(self.model.config)
            logits = self._forward(ids, mask, positions, cache)
        except Exception:
            log.exception("prefill of %d requests failed", len(seqs))
            events.extend(self._end(s, "error", GENERIC_ERROR) for s in seqs)
            return None
        for i, s in enumerate(seqs):
            s.cached = len(s.prompt_ids)
            self._advance(s, logits[i], events)
        return cache

    def _decode(self, events: list[Event]) -> None:
        """One token for every running row: one forward pass over the batch cache."""
        rows = self._rows
        cached = torch.tensor([s.cached for s in rows])
        width = self._cache.get_seq_length() + 1
        mask = torch.arange(width)[None, :] >= (width - 1 - cached)[:, None]
        # One query per row attends to its own real columns: with SDPA that is the whole mask, given 4D as
        # transformers would build it (True: attend), which spares building it at every step (-3.5% a step at 16
        # sequences, 6 of 8 interleaved rounds). Prefill keeps the 2D mask: its padded queries need transformers' fix.
        mask = mask[:, None, None, :] if self._sdpa else mask.long()
        ids = torch.tensor([[s.output_ids[-1]] for s in rows])
        try:
            logits = self._forward(ids, mask, cached[:, None], self._cache)
        except Exception:
            log.exception("decode step of %d requests failed", len(rows))
            events.extend(self._end(s, "error", GENERIC_ERROR) for s in rows if s.finish_reason is None)
            self._rows, self._cache = [], None  # some layers may hold the new column, others not
            return
        for i, s in enumerate(rows):
            if s.finish_reason is None:  # not a static batch's padding row
                s.cached += 1
                self._advance(s, logits[i], events)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache):
        dev = self.device
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=positions.to(dev),
            past_key_values=cache,
            use_cache=True,
            **self._logits_kw,
        )
        if out.past_key_values is not cache:
            raise RuntimeError("the model did not update the cache it was given")
        return out.logits[:, -1, :]

    def _advance(self, seq: SequenceState, logits: torch.Tensor, events: list[Event]) -> None:
        """Sample, detokenize and check the end for one request; a fault here ends this request only."""
        try:
            token = sample(logits, seq.params, seq.generator)
            seq.output_ids.append(token)
            params = seq.params
            if params.logprobs is not None:
                seq.logprobs = [token_logprobs(logits, token, params.logprobs, self._decode_one)]
            if token in self.eos_ids and not params.ignore_eos:
                reason, text = "stop", ""
            else:
                text = seq.detokenizer.add(token)
                reason = "stop" if seq.detokenizer.stopped else None
                if reason is None and len(seq.output_ids) >= params.max_tokens:
                    reason = "length"
            if reason is not None:
                text += seq.detokenizer.finish()
                events.append(self._end(seq, reason, text=text, token_ids=[token]))
            else:
                events.append(seq.event(text, [token]))
        except Exception:
            log.exception("request %s failed", seq.request_id)
            events.append(self._end(seq, "error", GENERIC_ERROR))

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def admit(self, count: int = 1, queued: int = 0) -> None:
        """Refuse ``count`` new requests (``Overloaded``) if they would wait too long for a slot; ``queued``:
        requests handed over but not added yet (the engine loop's inbox)."""
        self.admission.check(len(self._rows), len(self._waiting) + queued, count)

    def _end(self, seq: SequenceState, reason: str, error: str | None = None, text: str = "", token_ids=()) -> Event:
        if reason in ("stop", "length") and seq.joined_at is not None:
            self.admission.finished(time.monotonic() - seq.joined_at)
        seq.finish_reason, seq.error = reason, error
        self._ids.pop(seq.request_id, None)
        return seq.event(text, list(token_ids))

    def _evict(self) -> None:
        """Drop ended rows: keep the others' rows, then the columns that are padding in every remaining row."""
        keep = [i for i, s in enumerate(self._rows) if s.finish_reason is None and not s.cancelled]
        if len(keep) == len(self._rows) or (self.static and keep):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep or self._cache is None:
            self._rows, self._cache = [], None
            return
        keep_rows(self._cache, keep, drop=self._cache.get_seq_length() - max(s.cached for s in self._rows))

    def _join(self, prefilled: list[tuple[list[SequenceState], DynamicCache | None]]) -> None:
        """Append the newcomers still running to the batch cache, all left-padded to one length, in one concat."""
        parts = [(self._rows, self._cache)] if self._cache is not None else []
        for group, cache in prefilled:
            keep = [i for i, s in enumerate(group) if s.finish_reason is None]
            if cache is None or not keep:
                continue
            if len(keep) < len(group):  # some ended at their first token
                keep_rows(cache, keep)
            parts.append(([group[i] for i in keep], cache))
        if len(parts) <= 1 and (not parts or parts[0][1] is self._cache):
            return
        self._rows = [s for rows, _ in parts for s in rows]
        # Columns before the longest remaining sequence are padding in every row: leave them out.
        self._cache = stack_rows([cache for _, cache in parts], width=max(s.cached for s in self._rows))

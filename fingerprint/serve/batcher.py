"""Dynamic batching: concurrent requests become rows of one ``model.generate`` call.

A single worker thread owns the model and forms each batch when it is free:

* at once when ``max_batch`` rows wait;
* otherwise once no request has arrived for ``batch_wait_s`` (the window restarts with each
  arrival, and opens no earlier than the end of the previous batch) *and* at least as many rows
  wait as the previous batch had: the clients it just answered usually come back, and a batch
  split in two would cost a whole extra pass of the model;
* at the latest ``max_wait_s`` after it started to form (default ``10 * batch_wait_s``).

The rows then run as one left-padded batch. The event loop never waits on the model: requests
hand their rows to the worker and get their tokens back through a per-request callback (the
server turns it into a per-request queue), so a slow reader holds up nobody else.

Rows keep their own sampling parameters inside one batch. transformers runs greedy selection
over the logits returned by :class:`RowSampler`, the last (and only) logits processor; that
processor applies, per row, the end-of-sequence ban of ``min_tokens``, temperature and top-p (in
transformers' order and arithmetic), then the watermark (only on rows that carry it), then
picks the token (greedy, sampled from a row's own seeded generator, or from the shared one) and
returns logits where only that token is finite. So KGW biases and Gumbel-max sees the processed
logits exactly as in :func:`fingerprint.watermark.generate`.

:class:`RowTracker`, a stopping criterion called once per step, appends each row's token, ends
rows on end-of-sequence, on their own ``max_tokens``, on a stop sequence found by the reader, or
when their request is cancelled (a client that went away): an ended row stops being reported
and the batch goes on. The call ends when every row has ended.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from fingerprint.errors import ConfigError
from fingerprint.serve.protocol import Sampling

logger = logging.getLogger("fingerprint.serve")


class OverloadedError(Exception):
    """The queue is full: too many rows are waiting for the model."""


class DrainingError(Exception):
    """The batcher no longer takes requests (the server is shutting down)."""


@dataclass(frozen=True)
class RowEvent:
    """What one step did to one row: the token it produced and/or why it ended.

    ``finish``: ``"stop"`` (end of sequence or a stop sequence), ``"length"`` (max_tokens),
    ``"cancelled"`` (the request went away) or ``"error"``.
    """

    row: int
    token: int | None
    finish: str | None


@dataclass(frozen=True)
class JobError:
    """Generation failed for every row of the batch; ``message`` is safe to show."""

    message: str


Delivery = Callable[[list[RowEvent] | JobError], None]


class Row:
    """One sequence being generated: a choice of a request."""

    __slots__ = ("finish", "generator", "index", "job", "prompt_ids", "seed", "stop_requested",
                 "tokens")

    def __init__(self, job: Job, index: int, prompt_ids: list[int], seed: int | None) -> None:
        self.job = job
        self.index = index
        self.prompt_ids = prompt_ids
        self.seed = seed
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.stop_requested = False  # set by the reader when it meets a stop sequence
        self.generator: torch.Generator | None = None


class Job:
    """One request: its rows, its sampling settings and where its events go.

    ``deliver`` is called from the worker thread, once per step with the events of this job's
    rows, and must not block.
    """

    _ids = itertools.count()

    def __init__(self, prompts: Sequence[list[int]], n: int, sampling: Sampling, watermark: bool,
                 deliver: Delivery) -> None:
        self.id = next(self._ids)
        self.sampling = sampling
        self.watermark = watermark
        self.deliver = deliver
        self.cancelled = False
        self.done = threading.Event()
        self.rows: list[Row] = []
        for p, prompt in enumerate(prompts):
            for j in range(n):
                i = p * n + j
                seed = None if sampling.seed is None else (sampling.seed + i) % 2**64
                self.rows.append(Row(self, i, list(prompt), seed))

    def cancel(self) -> None:
        """Stop generating this job's rows (they end at the next step, or are never run)."""
        self.cancelled = True

    def request_stop(self, row: int) -> None:
        """End row ``row`` at the next step (the reader found a stop sequence)."""
        self.rows[row].stop_requested = True


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


class RowSampler(LogitsProcessor):
    """Per-row sampling, watermark and token choice; must be the only logits processor."""

    def __init__(self, rows: list[Row], watermark: Any | None, eos_ids: Collection[int],
                 prompt_width: int, device: torch.device) -> None:
        self.rows = rows
        self.prompt_width = prompt_width
        self.device = device
        self.eos = _index(sorted(eos_ids), device) if eos_ids else None
        sam = [r.job.sampling for r in rows]
        self.min_tokens = torch.tensor([s.min_tokens for s in sam], device=device)
        self.max_min_tokens = max(s.min_tokens for s in sam)
        greedy = [i for i, s in enumerate(sam) if s.greedy]
        self.greedy = _index(greedy, device) if greedy else None
        sampled = [i for i, s in enumerate(sam) if not s.greedy]
        self.sampled = _index(sampled, device) if sampled else None
        # positions (within the sampled rows) drawing from the shared RNG / their own generator
        shared = [k for k, i in enumerate(sampled) if rows[i].seed is None]
        self.shared = _index(shared, device) if shared else None
        self.seeded = [(k, i) for k, i in enumerate(sampled) if rows[i].seed is not None]
        heated = [i for i in sampled if sam[i].temperature != 1.0]
        self.heated = _index(heated, device) if heated else None
        self.temps = torch.tensor([sam[i].temperature for i in heated], device=device)[:, None]
        nucleus = [i for i in sampled if sam[i].top_p < 1.0]
        self.nucleus = _index(nucleus, device) if nucleus else None
        self.top_p = torch.tensor([sam[i].top_p for i in nucleus], device=device)[:, None]
        marked = [i for i, r in enumerate(rows) if r.job.watermark]
        self.watermark = watermark if marked else None
        self.marked = None if len(marked) == len(rows) else _index(marked, device)
        if self.watermark is not None and getattr(self.watermark, "check_placement", False):
            self.watermark.check_placement = False  # it runs inside this processor, by design
        self._out: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self.watermark_seconds = 0.0  # time spent in the watermark processor (for monitoring)
        for _, i in self.seeded:
            g = torch.Generator(device=device)
            g.manual_seed(rows[i].seed)  # type: ignore[arg-type]
            rows[i].generator = g

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        if self.eos is not None and step < self.max_min_tokens:
            banned = torch.nonzero(self.min_tokens > step).flatten()
            scores[banned[:, None], self.eos[None, :]] = -torch.inf
        if self.heated is not None:
            scores[self.heated] = scores[self.heated] / self.temps
        if self.nucleus is not None:  # transformers' TopPLogitsWarper, with a p per row
            sub = scores[self.nucleus]
            s_sorted, s_index = torch.sort(sub, descending=False)
            cum = s_sorted.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= (1 - self.top_p)
            drop[:, -1:] = False
            scores[self.nucleus] = sub.masked_fill(drop.scatter(1, s_index, drop), -torch.inf)
        if self.watermark is not None:
            t0 = time.perf_counter()
            if self.marked is None:
                scores = self.watermark(input_ids, scores)
            else:
                scores[self.marked] = self.watermark(input_ids[self.marked], scores[self.marked])
            self.watermark_seconds += time.perf_counter() - t0
        choice = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        if self.greedy is not None:
            choice[self.greedy] = scores[self.greedy].argmax(dim=-1)
        if self.sampled is not None:
            choice[self.sampled] = self._draw(scores[self.sampled])
        # one -inf buffer per generate call: only the previous step's choices are reset
        if self._out is None or self._out.shape != scores.shape:
            self._out = torch.full_like(scores, -torch.inf)
        elif self._last is not None:
            self._out.scatter_(1, self._last, -torch.inf)
        self._last = choice[:, None]
        return cast(torch.FloatTensor, self._out.scatter_(1, self._last, 0.0))

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per row from ``softmax(scores)``, by inverse CDF: a single uniform per row
        (from the row's generator when it has a seed) instead of ``torch.multinomial``'s one per
        vocabulary entry. ``right=True`` never picks a token of probability 0."""
        cdf = scores.softmax(dim=-1).cumsum_(dim=-1)
        total = cdf[:, -1:]
        u = torch.empty_like(total)
        if self.shared is not None:
            u[self.shared] = torch.rand(len(self.shared), 1, dtype=u.dtype, device=u.device)
        for k, i in self.seeded:
            u[k] = torch.rand(1, dtype=u.dtype, device=u.device, generator=self.rows[i].generator)
        x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, x, right=True).squeeze(1).clamp_(max=scores.shape[1] - 1)


class RowTracker(StoppingCriteria):
    """Per-row bookkeeping after each step: tokens, ends, and delivery to each request."""

    def __init__(self, rows: list[Row], eos_ids: Collection[int], on_token: Callable[[], None]
                 ) -> None:
        self.rows = rows
        self.eos = frozenset(eos_ids)
        self.on_token = on_token

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        events: dict[Job, list[RowEvent]] = {}
        done = []
        for i, row in enumerate(self.rows):
            if row.finish is None:
                job = row.job
                if job.cancelled:
                    row.finish = "cancelled"
                    ev = RowEvent(row.index, None, "cancelled")
                elif row.stop_requested:
                    row.finish = "stop"
                    ev = RowEvent(row.index, None, "stop")
                else:
                    tok = last[i]
                    row.tokens.append(tok)
                    self.on_token()
                    if tok in self.eos:
                        row.finish = "stop"
                    elif len(row.tokens) >= job.sampling.max_tokens:
                        row.finish = "length"
                    ev = RowEvent(row.index, tok, row.finish)
                events.setdefault(job, []).append(ev)
            done.append(row.finish is not None)
        for job, evs in events.items():
            _deliver(job, evs)
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


def _deliver(job: Job, what: list[RowEvent] | JobError) -> None:
    try:
        job.deliver(what)
    except Exception:  # a reader that is gone must not break the batch
        job.cancel()
    if all(r.finish is not None for r in job.rows):
        job.done.set()


@dataclass
class BatcherStats:
    """Counters of the worker (read them for monitoring and tests)."""

    batches: int = 0
    rows: int = 0
    tokens: int = 0
    cancelled_rows: int = 0
    failed_batches: int = 0
    generate_seconds: float = 0.0
    watermark_seconds: float = 0.0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))


class Batcher:
    """Runs submitted :class:`Job` s on ``model`` in batches, in one worker thread.

    Args:
        model, tokenizer: a causal LM and its tokenizer (a pad token is required).
        watermark: a ``watermarking_config`` object (``make_watermark``) or None.
        max_batch: rows per ``generate`` call.
        batch_wait_s: the quiet gap (no new request) after which a batch may start.
        max_wait_s: the longest a batch waits to form (default ``10 * batch_wait_s``).
        max_queue_rows: rows that may wait; beyond, :meth:`submit` raises :class:`OverloadedError`.
    """

    def __init__(self, model: Any, tokenizer: Any, *, watermark: Any | None = None,
                 max_batch: int = 8, batch_wait_s: float = 0.01,
                 max_wait_s: float | None = None, max_queue_rows: int = 256) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not 0 <= batch_wait_s <= 10:
            raise ConfigError(f"batch wait must lie in [0, 10] s, got {batch_wait_s!r}")
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token")
        self.model = model
        self.watermark = watermark
        self.max_batch = max_batch
        self.batch_wait_s = float(batch_wait_s)
        self.max_wait_s = 10 * self.batch_wait_s if max_wait_s is None else float(max_wait_s)
        self._last_arrival = 0.0
        self._last_rows = 1
        self.max_queue_rows = max_queue_rows
        self.pad_token_id = int(pad)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.threads = torch.get_num_threads()  # the creator's setting, for the worker thread
        self.stats = BatcherStats()
        self._pending: deque[Job] = deque()
        self._queued_rows = 0
        self._active_rows = 0
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="fingerprint-serve-batcher",
                                            daemon=True)
            self._thread.start()

    def drain(self) -> None:
        """Refuse new jobs from now on; queued and running ones still finish."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Drain, finish every queued job, stop the worker. True when it stopped in time."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` takes jobs."""
        return self._accepting

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch."""
        return self._queued_rows

    @property
    def active_rows(self) -> int:
        """Rows in the batch being generated."""
        return self._active_rows

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`DrainingError` or :class:`OverloadedError` instead."""
        if len(job.rows) > self.max_batch:
            raise ConfigError(f"a request may have at most {self.max_batch} rows (prompts x n)")
        with self._cond:
            if not self._accepting:
                raise DrainingError
            if self._queued_rows + len(job.rows) > self.max_queue_rows:
                raise OverloadedError
            self._pending.append(job)
            self._queued_rows += len(job.rows)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()

    # -- worker -------------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            opened = time.monotonic()
            latest = opened + self.max_wait_s
            want = min(self.max_batch, self._last_rows)
            while self._accepting and self._queued_rows < self.max_batch:
                now = time.monotonic()
                quiet = max(self._last_arrival, opened) + self.batch_wait_s
                ready = now >= quiet and self._queued_rows >= want
                if ready or now >= latest:
                    break
                self._cond.wait((quiet if now < quiet else latest) - now)
            batch: list[Job] = []
            rows = 0
            while self._pending:
                job = self._pending[0]
                if job.cancelled:
                    self._pending.popleft()
                    self._queued_rows -= len(job.rows)
                    self.stats.cancelled_rows += len(job.rows)
                    for r in job.rows:
                        r.finish = "cancelled"
                    job.done.set()
                    continue
                if rows + len(job.rows) > self.max_batch:
                    break
                self._pending.popleft()
                self._queued_rows -= len(job.rows)
                batch.append(job)
                rows += len(job.rows)
            self._active_rows = rows
            if rows:
                self._last_rows = rows
            return batch

    def _run(self) -> None:
        _limit_threads(self.threads)
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if jobs:
                try:
                    self._generate(jobs)
                finally:
                    self._active_rows = 0

    def _count_token(self) -> None:
        self.stats.tokens += 1

    def _generate(self, jobs: list[Job]) -> None:
        rows = [r for j in jobs for r in j.rows]
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        wm = None if self.watermark is None else self.watermark.construct_processor(
            vocab, self.device)
        sampler = RowSampler(rows, wm, self.eos_ids, width, self.device)
        tracker = RowTracker(rows, self.eos_ids, self._count_token)
        config = GenerationConfig(
            max_new_tokens=max(j.sampling.max_tokens for j in jobs), do_sample=False, num_beams=1,
            pad_token_id=self.pad_token_id, eos_token_id=sorted(self.eos_ids) or None)
        t0 = time.perf_counter()
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.batch_sizes.append(len(rows))
        error: str | None = None
        try:
            with torch.inference_mode():
                self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                    logits_processor=LogitsProcessorList([sampler]),
                                    stopping_criteria=StoppingCriteriaList([tracker]))
        except Exception as err:  # reported to the requests, logged without request content
            self.stats.failed_batches += 1
            error = "generation failed on the server"
            logger.error("generation failed", extra={"fields": {
                "event": "batch_error", "error_type": type(err).__name__, "rows": len(rows)}})
        seconds = time.perf_counter() - t0
        cancelled = sum(r.finish == "cancelled" for r in rows)
        self.stats.cancelled_rows += cancelled
        self.stats.generate_seconds += seconds
        self.stats.watermark_seconds += sampler.watermark_seconds
        for job in jobs:
            if error is not None:
                for r in job.rows:
                    r.finish = r.finish or "error"
                _deliver(job, JobError(error))
                continue
            left = [RowEvent(r.index, None, "length") for r in job.rows if r.finish is None]
            for r in job.rows:
                r.finish = r.finish or "length"
            if left:
                _deliver(job, left)
            job.done.set()
        logger.debug("batch done", extra={"fields": {
            "event": "batch", "rows": len(rows), "requests": len(jobs), "prompt_width": width,
            "tokens": sum(len(r.tokens) for r in rows), "cancelled_rows": cancelled,
            "seconds": round(seconds, 4), "watermark_s": round(sampler.watermark_seconds, 4)}})


def _limit_threads(n: int) -> None:
    """Give the calling thread ``n`` torch (and numba) threads.

    Thread counts are partly per thread: a new thread does not inherit the creator's MKL and
    numba settings, and there MKL would run large products on every core while the extra OpenMP
    workers spin between steps, which on a busy machine makes each step several times slower.
    """
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numba is a dependency
        pass


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


__all__ = [
    "Batcher",
    "BatcherStats",
    "DrainingError",
    "Job",
    "JobError",
    "OverloadedError",
    "Row",
    "RowEvent",
    "RowSampler",
    "RowTracker",
]

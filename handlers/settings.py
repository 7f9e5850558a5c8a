"""Serving settings: one typed object, one set of defaults, checked when the manifest is read.

A manifest's ``serving`` section holds the settings every server shares, and may hold a ``torchserve`` and a
``triton`` section whose values apply to that server only. ``for_server`` gives one server's view (its section
applied, then a build's overrides); the archive builders and the handlers read nothing else. An unknown key or a
value out of range is refused with its name, so a typo in ``pipeline.json`` or in ``maas build --serving`` fails the
build instead of silently serving with a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

SERVERS = ("torchserve", "triton")


@dataclass(frozen=True)
class ServingSettings:
    max_batch_size: int = 32  # rows of one server batch; 1 turns batching off
    # How long a server waits to fill a batch. 0: batch what is queued, wait for nothing. TorchServe is given at
    # least 1 ms: its own 0 means "wait ~100 ms" (shared/FIELD_NOTES.md).
    max_batch_delay_ms: float = 0.0
    workers: int = 1  # processes running the model: TorchServe workers, Triton instances
    threads: int = 0  # intra-op threads of one forward pass; 0: the runtime's default
    # ONNX models: 1 lets ONNX Runtime's threads spin between runs. Faster for text models (their manifests set
    # it); slower for tiny ones under load, whose spinning threads take the cores the server's front end needs.
    onnx_spinning: int = 0
    response_timeout_s: int = 60  # TorchServe's per-request timeout
    # The longest a request waits in Triton's queue for the model; past it, it is refused (503 "Request timeout
    # expired", gRPC UNAVAILABLE) and never computed. A request may ask for less (its `timeout` parameter, in
    # microseconds). 0 (the default): no limit, since any Triton 2.51 queue policy stalls its batcher ~0.5 s at a
    # time (docs/overload.md). TorchServe cannot do this per request.
    deadline_ms: float = 0.0
    # A full batch (the server's queue holds more, its front end is busy) refuses a request whose deadline is nearer
    # than a batch's time plus this: its answer would reach the client late (handlers/deadline.py).
    reply_margin_ms: float = 20.0
    max_rows_per_request: int = 64  # a request with more rows is refused (413)
    max_text_chars: int = 20000  # a longer text is refused (413)
    top_k: int = 3  # labels (with probabilities) in a classification answer
    threshold: float = 0.5  # multi-label answers: labels scoring at least this
    call_cost_tokens: float = 24.0  # text batches: one forward pass costs as much as this many padded tokens
    # Language models: max_batch_size is the most sequences decoding at once (the running batch); a request asking
    # for more than max_tokens_limit new tokens is refused (400).
    max_tokens_limit: int = 256
    # Language models: a request whose expected wait for a slot in the running batch is longer is refused at once
    # (429 with Retry-After; handlers/generation/admission.py). 0: no bound.
    max_queue_wait_s: float = 30.0
    # Language models: 1 serves with static batching instead of continuous, newcomers waiting max_batch_delay_ms at
    # most for a full batch: the baseline `maas bench generate` measures continuous batching against. Not for
    # production.
    static_batching: int = 0
    # Language models: 1 gives the engine's intra-op threads cores of their own, the last ones, and moves every
    # other thread of its process to the rest (handlers/generation/cores.py); 0 leaves them all to the scheduler.
    bind_cores: int = 1
    # Explanations (handlers/explain): Integrated Gradients' steps by default and at most (a request asking for
    # more is refused, 400), and the points of the path run in one forward pass (bounds memory and latency).
    explain_steps: int = 32
    explain_max_steps: int = 256
    explain_batch: int = 128
    # The handlers' own counters (stage times, rows) are summed over this many seconds before the server records
    # them (handlers/batched_counters.py); 0 records them after every batch. A language model publishes its
    # generation metrics at most this often too, on both servers (handlers/generation/metrics.py).
    metrics_interval_s: float = 0.25
    torchserve: dict[str, Any] = field(default_factory=dict)  # overrides for TorchServe only
    triton: dict[str, Any] = field(default_factory=dict)  # overrides for Triton only

    def __post_init__(self) -> None:
        for name, least in _LEAST.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"serving.{name} must be a number, not {value!r}")
            if value < least:
                raise ValueError(f"serving.{name} must be at least {least}, not {value!r}")
            if _TYPES[name] is int and value != int(value):
                raise ValueError(f"serving.{name} must be a whole number, not {value!r}")
            object.__setattr__(self, name, _TYPES[name](value))
        if self.explain_steps > self.explain_max_steps:
            raise ValueError(f"serving.explain_steps ({self.explain_steps}) is above serving.explain_max_steps "
                             f"({self.explain_max_steps})")  # fmt: skip
        for name in ("onnx_spinning", "static_batching", "bind_cores"):
            if getattr(self, name) > 1:
                raise ValueError(f"serving.{name} must be 0 or 1, not {getattr(self, name)!r}")
        if self.threshold > 1:
            raise ValueError(f"serving.threshold must be between 0 and 1, not {self.threshold!r}")
        for server in SERVERS:
            section = getattr(self, server)
            if not isinstance(section, dict):
                raise ValueError(f"serving.{server} must be an object of settings, not {section!r}")
            _check_keys(section, f"serving.{server}", allow_servers=False)
            if section:  # its values are checked the same way, on a copy without sections
                replace(self, **{s: {} for s in SERVERS}, **section)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | ServingSettings | None) -> ServingSettings:
        if isinstance(data, ServingSettings):
            return data
        data = dict(data or {})
        _check_keys(data, "serving", allow_servers=True)
        return cls(**data)

    def for_server(self, server: str, overrides: dict[str, Any] | None = None) -> ServingSettings:
        """The settings one server runs with: these, then its own section, then ``overrides`` (a build's)."""
        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}; one of {SERVERS}")
        overrides = dict(overrides or {})
        _check_keys(overrides, "serving overrides", allow_servers=False)
        return replace(self, **{s: {} for s in SERVERS} | getattr(self, server) | overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FLAT = [f for f in fields(ServingSettings) if f.name not in SERVERS]
_TYPES = {f.name: int if f.type == "int" else float for f in _FLAT}
_LEAST = {name: 0 for name in _TYPES} | {"max_batch_size": 1, "workers": 1, "response_timeout_s": 1} | {
    "max_rows_per_request": 1, "max_text_chars": 1, "top_k": 1, "max_tokens_limit": 1, "explain_steps": 1,
    "explain_max_steps": 1, "explain_batch": 1}  # fmt: skip


def _check_keys(data: dict, where: str, allow_servers: bool) -> None:
    known = set(_TYPES) | (set(SERVERS) if allow_servers else set())
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting {', '.join(unknown)} (known: {', '.join(sorted(known))})")

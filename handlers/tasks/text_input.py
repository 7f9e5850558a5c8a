"""The text wire formats, shared by every text model (the Hugging Face classifier, a user's own recurrent net).

* TorchServe: JSON ``{"text": "..."}`` (one answer) or ``{"text": ["...", ...]}`` (a list of answers, in order), or
  a ``text/plain`` body holding one text.
* Triton: ``TEXT`` (BYTES ``[n, 1]``; UTF-8 bytes or str).

``validate_text`` turns one row into a ``str`` or raises the row's own error: not UTF-8, not a string, empty, or
longer than ``serving.max_text_chars`` (20,000; 413). A subclass's ``preprocess`` starts with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handlers.errors import InvalidInput, PayloadTooLarge
from handlers.open_inference import decode_json_body
from handlers.pipeline import Pipeline, Request, TensorSpec


class TextInput(Pipeline):
    """Mixin: texts in, through both servers' contracts; put it before the answer's class (e.g. ``Classifier``)."""

    @property
    def max_text_chars(self) -> int:
        return self.manifest.serving.max_text_chars

    def parse_json(self, body: Any) -> Request:
        if isinstance(body, str) or (isinstance(body, (bytes, bytearray)) and body.lstrip()[:1] != b"{"):
            return Request([body], single=True)  # a text/plain body; decoded and checked in preprocess
        body = decode_json_body(body)
        if not isinstance(body, dict) or "text" not in body:
            raise InvalidInput('send JSON {"text": "..."} or {"text": ["...", ...]}')
        text = body["text"]
        return Request(text, single=False) if isinstance(text, list) else Request([text], single=True)

    def parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        if "TEXT" not in tensors:
            raise InvalidInput("the input TEXT is required")
        return Request(list(tensors["TEXT"].reshape(-1)))

    def client_body(self, row: Any) -> Any:
        return {"text": row.decode() if isinstance(row, bytes) else row}

    def client_tensors(self, rows: list[Any]) -> dict[str, np.ndarray]:
        texts = [row.encode() if isinstance(row, str) else row for row in rows]
        return {"TEXT": np.array(texts, dtype=np.object_).reshape(-1, 1)}

    @classmethod
    def input_specs(cls, manifest) -> list[TensorSpec]:
        return [TensorSpec("TEXT", "TYPE_STRING", (1,))]

    def validate_text(self, row: Any) -> str:
        if isinstance(row, (bytes, bytearray, np.bytes_)):
            try:
                row = bytes(row).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"the text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not isinstance(row, str):
            raise InvalidInput(f"a text must be a string, got {type(row).__name__}")
        if not row.strip():
            raise InvalidInput("the text is empty")
        if len(row) > self.max_text_chars:
            raise PayloadTooLarge(f"the text has {len(row)} characters; at most {self.max_text_chars} are accepted")
        return row

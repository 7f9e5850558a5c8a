"""One OpenAI-API request's answer, built from its choices' answers in the LLM-backend contract (``service.py``).

Streamed: ``Reply.add`` returns the chunks to send at once (``chat.completion.chunk`` with ``choices[].delta``, the
role first; or ``text_completion`` chunks), the last chunk of a choice carries its ``finish_reason``, and with
``stream_options.include_usage`` a last chunk with no choices carries ``usage``. Not streamed: ``Reply.whole``.
"""

from __future__ import annotations

import time
import uuid

from handlers.generation.openai_api import OpenAIRequest


class Reply:
    def __init__(self, request: OpenAIRequest):
        self.request = request
        self.id = f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        count = len(request.choices)
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.logprobs: list[list[dict]] = [[] for _ in range(count)]
        self.finish: list[str | None] = [None] * count
        self.usages: list[dict | None] = [None] * count
        self.started = [False] * count
        # completions' text_offset: where each token's text starts in the choice's text (after the prompt if echoed)
        self.offsets = [len(c.prompt) if request.echo else 0 for c in request.choices]

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    def add(self, index: int, answer: dict) -> list[dict]:
        """Record choice ``index``'s next answer; the chunks to stream now (none when not streaming)."""
        text, reason = answer.get("text_output") or "", answer.get("finish_reason")
        logprobs = answer.get("logprobs") or []
        self.texts[index].append(text)
        self.logprobs[index].extend(logprobs)
        if reason:
            self.finish[index], self.usages[index] = reason, answer["usage"]
        if not self.request.stream:
            return []
        chunks = []
        if not self.started[index]:
            self.started[index] = True
            if self.request.chat:
                chunks.append(self._chunk(index, {"role": "assistant", "content": ""}, [], None))
            elif self.request.echo:
                text = self.request.choices[index].prompt + text
        if text or logprobs or reason:
            delta = ({"content": text} if text else {}) if self.request.chat else text
            chunks.append(self._chunk(index, delta, logprobs, reason))
        if self.done and self.request.include_usage:
            chunks.append(self._envelope("chunk", []) | {"usage": self.usage()})
        return chunks

    def whole(self) -> dict:
        choices = []
        for index, choice in enumerate(self.request.choices):
            text, logprobs = "".join(self.texts[index]), self._logprobs(index, self.logprobs[index])
            entry = {"index": index}
            if self.request.chat:
                entry["message"] = {"role": "assistant", "content": text}
            else:
                entry["text"] = (choice.prompt if self.request.echo else "") + text
            choices.append(entry | {"logprobs": logprobs, "finish_reason": self.finish[index]})
        return self._envelope("whole", choices) | {"usage": self.usage()}

    def usage(self) -> dict:
        """Prompt tokens once per prompt (its n choices share it), completion tokens of every choice."""
        usages = [u or {"prompt_tokens": 0, "completion_tokens": 0} for u in self.usages]
        prompt = sum(u["prompt_tokens"] for u in usages[:: self.request.n])
        completion = sum(u["completion_tokens"] for u in usages)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, index: int, delta, logprobs: list[dict], reason: str | None) -> dict:
        choice = {"index": index, ("delta" if self.request.chat else "text"): delta,
                  "logprobs": self._logprobs(index, logprobs), "finish_reason": reason}  # fmt: skip
        usage = {"usage": None} if self.request.include_usage else {}
        return self._envelope("chunk", [choice]) | usage

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        chat = self.request.chat
        obj = ("chat.completion.chunk" if kind == "chunk" else "chat.completion") if chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model,
                "choices": choices}  # fmt: skip

    def _logprobs(self, index: int, entries: list[dict]) -> dict | None:
        """OpenAI's shape: chat ``{"content": [...]}``; completions the legacy parallel lists."""
        if not self.request.logprobs:
            return None
        if self.request.chat:
            return {"content": entries, "refusal": None}
        offsets = []
        for entry in entries:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(entry["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}  # fmt: skip

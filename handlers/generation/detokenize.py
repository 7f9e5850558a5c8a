"""Incremental, UTF-8 safe detokenization with stop strings.

Decoding one token at a time is wrong for most tokenizers: a byte-level BPE token can hold half of a multi-byte
character (it decodes to "\\ufffd" until the rest arrives), and SentencePiece tokenizers drop a word's leading space
when a token is decoded alone. So, like TGI and vLLM, each step decodes a short window of tokens twice, with and
without the new ones, and emits the difference; the window starts with a few prompt tokens, so the first generated
word keeps its space. Text ending in "\\ufffd" is held back until the character is complete; an incomplete character
left when the request ends is dropped, never emitted.

Stop strings are matched on the text: the output ends before the first stop string, and while streaming, a suffix
that could be the start of a stop string is held back, so a client never sees a part of one.
"""

from __future__ import annotations

from typing import Any

PROMPT_CONTEXT_TOKENS = 6  # prompt tokens decoded with the first generated ones (leading spaces, merged bytes)


class Detokenizer:
    """One request's text: ``add(token_id)`` returns the new text a client may see now (often "")."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # the window decoded for context starts here
        self._read_offset = len(self._ids)  # tokens before this one are in ``text`` already
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # all complete text decoded so far (cut at a stop string once one is found)
        self.emitted = 0  # characters of ``text`` handed out already
        self.stopped = False  # a stop string was found; ``text`` ends before it

    def add(self, token_id: int) -> str:
        """Take one generated token (not EOS); return the delta that is safe to emit now."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self._append(new)
        return self._take(final=False)

    def finish(self) -> str:
        """The request ends (EOS, length, stop): return the text still held back (never a partial character)."""
        return self._take(final=True)

    def _append(self, new: str) -> None:
        start = len(self.text)
        self.text += new
        if not self._stop:
            return
        # A stop string can only begin at or after ``emitted`` (what could begin one was held back) and must end
        # in the new text; search from the earliest such place and cut at the first match.
        search_from = max(self.emitted, start - self._longest_stop + 1, 0)
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _take(self, final: bool) -> str:
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held_for_stop()
        end = max(end, self.emitted)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _held_for_stop(self) -> int:
        """Length of the longest suffix of the text that is the beginning of a stop string."""
        tail = self.text[max(self.emitted, len(self.text) - self._longest_stop + 1) :]
        for i in range(len(tail)):
            suffix = tail[i:]
            if any(s.startswith(suffix) for s in self._stop):
                return len(suffix)
        return 0

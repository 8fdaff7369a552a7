"""Incremental detokenization of one choice, with stop sequences.

The text of a choice is always ``decode(ids)`` of its tokens so far (special tokens skipped, no
space clean-up), so a streamed answer and a whole one are the same string. Streaming sends only
text that can no longer change: a trailing replacement character (an incomplete UTF-8
sequence) and a tail that could still grow into a stop sequence are held back until the next
token or the end.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class ChoiceText:
    """The text of one choice as tokens arrive."""

    __slots__ = ("eos", "finish", "finish_sent", "ids", "max_stop", "n_tokens", "scanned",
                 "sent", "stop", "text", "tokenizer")

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], eos: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.eos = eos
        self.max_stop = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of text already streamed
        self.scanned = 0  # characters of text already searched for stop sequences
        self.n_tokens = 0  # completion tokens, end-of-sequence included
        self.finish: str | None = None
        self.finish_sent = False

    def add(self, token: int | None, finish: str | None) -> bool:
        """Take one step's token and/or end; True when a stop sequence just ended the choice."""
        if self.finish is not None:
            return False
        if token is not None:
            self.n_tokens += 1
            if token not in self.eos:
                self.ids.append(token)
                self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False)
                if self.stop:
                    # the tail may have changed (replacement characters resolved): look back
                    start = max(0, self.scanned - self.max_stop - 4)
                    hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
                    if hits:
                        self.text = self.text[:min(hits)]
                        self.finish = "stop"
                        return True
                    self.scanned = len(self.text)
        if finish is not None:
            self.finish = finish
        return False

    def take_delta(self) -> str:
        """Text not yet streamed that is final (everything once the choice has ended)."""
        end = len(self.text)
        if self.finish is None:
            while end > self.sent and self.text[end - 1] == _REPLACEMENT:
                end -= 1
            for k in range(min(self.max_stop - 1, end - self.sent), 0, -1):
                tail = self.text[end - k:end]
                if any(s.startswith(tail) for s in self.stop):
                    end -= k
                    break
        if end <= self.sent:
            return ""
        delta = self.text[self.sent:end]
        self.sent = end
        return delta


__all__ = ["ChoiceText"]

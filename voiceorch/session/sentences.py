"""Cut streaming LLM text into speakable pieces, sans-I/O.

Feed text deltas as they arrive; :meth:`SentenceSplitter.feed` returns every sentence that is
now complete, so synthesis can start before the LLM has finished. A sentence ends at ``.``,
``!``, ``?`` or ``…`` followed by white space, or at a line break; a run-on longer than
``max_chars`` is cut at its last clause mark (``,`` ``;`` ``:`` dash) so that audio does not
wait for a long sentence. The very first piece is cut at its first clause mark once it holds
``first_clause_chars``, so the reply starts to sound as early as it can. Markdown marks, which
a speech reply should not contain but small models emit, are removed.
"""

from __future__ import annotations

import re

import attrs

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"[,;:]\s+|\s[–—-]\s+")
_MARKDOWN = re.compile(r"[*_#`]+|^\s*[-•]\s+|^\s*\d+\.\s+", re.MULTILINE)


def clean_for_speech(text: str) -> str:
    """Remove markdown marks and squeeze white space."""
    return " ".join(_MARKDOWN.sub("", text).split())


@attrs.define
class SentenceSplitter:
    max_chars: int = 160
    min_chars: int = 2
    first_clause_chars: int | None = 16
    _buffer: str = ""
    _emitted: int = 0

    def feed(self, delta: str) -> list[str]:
        """Add ``delta``; return the sentences it completed (cleaned, non-empty)."""
        self._buffer += delta
        out: list[str] = []
        while True:
            match = _SENTENCE_END.search(self._buffer)
            if match is None:
                break
            head, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            self._emit(head, out)
        if not out and not self._emitted and self.first_clause_chars is not None:
            first = next((m for m in _CLAUSE_END.finditer(self._buffer) if m.start() >= self.first_clause_chars), None)
            if first is not None:
                head, self._buffer = self._buffer[: first.start() + 1], self._buffer[first.end() :]
                self._emit(head, out)
        while len(self._buffer) > self.max_chars:
            cuts = [m for m in _CLAUSE_END.finditer(self._buffer) if m.start() >= self.min_chars]
            if not cuts:
                break
            last = cuts[-1]
            head, self._buffer = self._buffer[: last.start() + 1], self._buffer[last.end() :]
            self._emit(head, out)
        return out

    def flush(self) -> list[str]:
        """The text is complete: return what is left as a last sentence."""
        out: list[str] = []
        self._emit(self._buffer, out)
        self._buffer = ""
        return out

    def _emit(self, text: str, out: list[str]) -> None:
        cleaned = clean_for_speech(text)
        if len(cleaned) >= self.min_chars and any(c.isalnum() for c in cleaned):
            out.append(cleaned)
            self._emitted += 1

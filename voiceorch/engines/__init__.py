"""STT, LLM and TTS engines behind small interfaces; they know nothing of sessions.

This package re-exports only the interfaces (:mod:`voiceorch.engines.base`), so importing it
stays light. Every STT, LLM and TTS engine inherits :class:`EngineLifecycle` (``warm_up``,
``check_ready``, ``aclose``, ``limiter``, with do-nothing defaults), which the server calls
on each engine. Import the implementations from their modules, which pull in heavy libraries:

- :mod:`voiceorch.engines.whisper_windowed`: ``WindowedWhisperSTT`` (faster-whisper's model, the window
  sized to the utterance; the server's default)
- :mod:`voiceorch.engines.whisper_stt`: ``WhisperSTT`` (faster-whisper's ``transcribe``, 30 s window)
- :mod:`voiceorch.engines.piper_tts`: ``PiperTTS`` (Piper, onnxruntime)
- :mod:`voiceorch.engines.openai_llm`: ``OpenAICompatibleLLM`` (httpx, SSE)
- :mod:`voiceorch.engines.llama_server`: ``run_llama_server``, ``LlamaServerConfig``
- :mod:`voiceorch.engines.embedded`: paths of the embedded default models
"""

from .base import (
    SAMPLE_RATE as SAMPLE_RATE,
)
from .base import (
    SAMPLE_WIDTH as SAMPLE_WIDTH,
)
from .base import (
    ChatMessage as ChatMessage,
)
from .base import (
    EngineError as EngineError,
)
from .base import (
    EngineLifecycle as EngineLifecycle,
)
from .base import (
    Engines as Engines,
)
from .base import (
    LanguageModel as LanguageModel,
)
from .base import (
    Role as Role,
)
from .base import (
    SpeechToText as SpeechToText,
)
from .base import (
    TextToSpeech as TextToSpeech,
)

__all__ = [
    "SAMPLE_RATE",
    "SAMPLE_WIDTH",
    "ChatMessage",
    "EngineError",
    "EngineLifecycle",
    "Engines",
    "LanguageModel",
    "Role",
    "SpeechToText",
    "TextToSpeech",
]

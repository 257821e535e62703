"""voiceorch: a real-time voice-interaction orchestrator on Trio.

Layers, importing one way only:

- ``voiceorch.protocol``: the wire protocol, sans-I/O (imports nothing else of ours).
- ``voiceorch.engines``: STT, LLM and TTS behind small interfaces (know nothing of sessions).
- ``voiceorch.session``: one connection's session and the life of one turn.
- ``voiceorch.server`` and ``voiceorch.cli``: the WebSocket server and the command line.
"""

__version__ = "0.1.0"

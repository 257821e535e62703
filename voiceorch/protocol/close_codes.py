"""WebSocket close codes (RFC 6455 §7.4) the voice endpoints use: wire constants, like events."""

#: The session ended normally (the client left, or it sat idle too long).
CLOSE_NORMAL = 1000
#: The server is shutting down.
CLOSE_GOING_AWAY = 1001
#: The client broke a rule of the server (too slow to read, session too long).
CLOSE_POLICY = 1008
#: A message was too large to process.
CLOSE_MESSAGE_TOO_BIG = 1009
#: The server failed (a bug): the session is closed, nothing else is.
CLOSE_INTERNAL_ERROR = 1011
#: The server is full: try again later (or elsewhere).
CLOSE_TRY_AGAIN_LATER = 1013

"""The servers on top of the session machinery: the voice WebSocket and the process around it."""

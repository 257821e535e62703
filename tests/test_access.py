"""Access to the voice endpoint: tokens, origins and the session limit, over real loopback
WebSockets (no timing involved)."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

from session_harness import PUSH_TO_TALK, fake_engines
from voiceorch.server.access import AccessPolicy
from voiceorch.server.voice_ws import serve_voice
from voiceorch.telephony.signature import twilio_signature

TOKEN = "s3cret-t0ken"


@asynccontextmanager
async def voice_server(policy: AccessPolicy):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_voice(
                    fake_engines(), PUSH_TO_TALK, host="127.0.0.1", port=0, policy=policy, task_status=task_status
                )
            )
            yield f"ws://127.0.0.1:{server.port}/v1/voice"
            nursery.cancel_scope.cancel()


async def _session_created(ws) -> dict:
    event = json.loads(await ws.get_message())
    assert event["type"] == "session.created"
    return event


@pytest.mark.parametrize(
    "suffix, headers, expected",
    [
        ("", [], 401),
        ("", [(b"Authorization", b"Bearer wrong")], 401),
        ("?token=wrong", [], 401),
        ("", [(b"Authorization", f"Basic {TOKEN}".encode())], 401),
        ("", [(b"Authorization", f"Bearer {TOKEN}".encode())], None),
        (f"?token={TOKEN}", [], None),
    ],
)
async def test_a_token_is_required_when_configured(suffix, headers, expected, caplog):
    async with voice_server(AccessPolicy(token=TOKEN)) as url:
        if expected is None:
            async with trio_websocket.open_websocket_url(url + suffix, extra_headers=headers) as ws:
                await _session_created(ws)
        else:
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(url + suffix, extra_headers=headers):
                    pass
            assert info.value.status_code == expected
            assert b"token" in info.value.body
    assert TOKEN not in caplog.text  # never logged


@pytest.mark.parametrize(
    "origin, allowed",
    [(None, True), (b"https://app.example.com", True), (b"https://evil.example.net", False)],
)
async def test_browser_origins_outside_the_allowlist_are_refused(origin, allowed):
    headers = [] if origin is None else [(b"Origin", origin)]
    async with voice_server(AccessPolicy(allowed_origins=frozenset({"https://app.example.com"}))) as url:
        if allowed:
            async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
                await _session_created(ws)
        else:
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(url, extra_headers=headers):
                    pass
            assert info.value.status_code == 403


async def test_beyond_max_sessions_a_connection_is_closed_with_1013():
    async with voice_server(AccessPolicy(max_sessions=2)) as url:
        async with trio_websocket.open_websocket_url(url) as first:
            await _session_created(first)
            async with trio_websocket.open_websocket_url(url) as second:
                await _session_created(second)
                async with trio_websocket.open_websocket_url(url) as third:
                    with pytest.raises(trio_websocket.ConnectionClosed) as info:
                        await third.get_message()
                    assert info.value.reason.code == 1013
                    assert "at most 2 sessions" in info.value.reason.reason
                # the sessions already running are untouched
                await second.send_message(json.dumps({"type": "input_text", "text": "still here?"}))
                while True:
                    message = await second.get_message()
                    if isinstance(message, str) and json.loads(message)["type"] == "response.done":
                        break
            # a place is free again, as soon as the server has seen the second session end
            for _ in range(100):
                async with trio_websocket.open_websocket_url(url) as again:
                    try:
                        await _session_created(again)
                        break
                    except trio_websocket.ConnectionClosed:  # 1013: not yet
                        await trio.sleep(0.05)
            else:
                raise AssertionError("no session admitted after one ended")


TWILIO_TOKEN = "twilio-auth-t0ken"
TELNYX_TOKEN = "telnyx-stream-t0ken"
CARRIERS = AccessPolicy(
    token=TOKEN, twilio_auth_token=TWILIO_TOKEN, public_url="wss://voice.example.com", telnyx_stream_token=TELNYX_TOKEN
)


@pytest.mark.parametrize(
    "path, headers, expected",
    [
        ("/v1/twilio", [], 401),  # no signature (and the generic token does not stand in for it)
        ("/v1/twilio", [("Authorization", f"Bearer {TOKEN}")], 401),
        ("/v1/twilio", [("X-Twilio-Signature", twilio_signature("wrong", "wss://voice.example.com/v1/twilio"))], 403),
        ("/v1/twilio", [("X-Twilio-Signature", twilio_signature(TWILIO_TOKEN, "wss://elsewhere.com/v1/twilio"))], 403),
        (
            "/v1/twilio",
            [("X-Twilio-Signature", twilio_signature(TWILIO_TOKEN, "wss://voice.example.com/v1/twilio"))],
            None,
        ),
        ("/v1/telnyx", [], 401),
        ("/v1/telnyx", [("Authorization", f"Bearer {TOKEN}")], 401),
        ("/v1/telnyx", [("Authorization", f"Bearer {TELNYX_TOKEN}")], None),
        ("/v1/telnyx", [("Authorization", TELNYX_TOKEN)], None),
        ("/v1/vonage", [], 401),  # the generic token still guards the other paths
        ("/v1/vonage?token=" + TOKEN, [], None),
    ],
)
async def test_the_carriers_credentials_are_checked_on_their_paths(path, headers, expected, caplog):
    caplog.set_level(logging.INFO)
    async with voice_server(CARRIERS) as url:
        url = url.removesuffix("/v1/voice") + path
        raw = [(name.encode(), value.encode()) for name, value in headers]
        if expected is None:
            async with trio_websocket.open_websocket_url(url, extra_headers=raw) as ws:
                await ws.send_message(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        else:
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(url, extra_headers=raw):
                    pass
            assert info.value.status_code == expected
            (refusal,) = [r for r in caplog.records if r.getMessage() == "voice.refused"]
            assert refusal.fields["status"] == expected
    for secret in (TOKEN, TWILIO_TOKEN, TELNYX_TOKEN):
        assert secret not in caplog.text  # never logged

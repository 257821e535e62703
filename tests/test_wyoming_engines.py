"""Wyoming STT and TTS engines: framing, a FAKE server for failures, the real servers.

Rules: loopback only, ports chosen by the OS, a ``fail_after`` bound on every test that does
I/O. The FAKE server (tests/fake_wyoming_server.py) drives the error paths; the real
wyoming-faster-whisper and wyoming-piper, started here as child processes with the embedded
models (marker ``models``), prove the engines against what users run.
"""

from __future__ import annotations

import io
import json
import socket
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.event import read_event

from bench.engine_servers import EngineServers, find_command
from fake_wyoming_server import FakeWyomingServer
from session_harness import connected, fake_engines
from voiceorch.engines.base import SAMPLE_RATE, EngineError
from voiceorch.engines.fakes import FakeLLM, FakeSTT
from voiceorch.engines.wyoming_client import (
    MAX_BLOCK_BYTES,
    WyomingAddress,
    WyomingDecoder,
    WyomingProtocolError,
    encode_event,
)
from voiceorch.engines.wyoming_stt import WyomingSTT
from voiceorch.engines.wyoming_tts import WyomingTTS

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def speech(ms: int) -> bytes:
    return bytes(ms * SAMPLE_RATE // 1000 * 2)


# --- framing ---------------------------------------------------------------------------------


def _sample_events():
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    return [
        Transcript(text='Ünïcode and\nnewlines "quoted"').event(),
        AudioChunk(rate=22050, width=2, channels=1, audio=pcm + b"\n{" + pcm).event(),
        FakeWyomingServer().info().event(),
        AudioChunk(rate=16000, width=2, channels=1, audio=b"").event(),
    ]


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_decoder_reads_what_the_wyoming_package_writes(piece: int) -> None:
    wire = b"".join(encode_event(event) for event in _sample_events())
    decoder = WyomingDecoder()
    decoded = []
    for offset in range(0, len(wire), piece):
        decoder.receive_data(wire[offset : offset + piece])
        while (event := decoder.next_event()) is not None:
            decoded.append(event)
    # The package's own reader agrees, event by event.
    stream = io.BytesIO(wire)
    expected = [read_event(stream) for _ in _sample_events()]
    assert [(e.type, e.data, e.payload) for e in decoded] == [(e.type, e.data, e.payload) for e in expected]
    assert decoded[1].payload.count(b"\n") >= 1  # a newline inside a payload is not a frame end
    assert not decoder.has_partial_event


def test_decoder_merges_inline_data_of_old_servers() -> None:
    decoder = WyomingDecoder()
    header = {"type": "transcript", "data": {"text": "inline", "language": "en"}, "data_length": 17}
    decoder.receive_data(json.dumps(header).encode() + b"\n" + b'{"text": "block"}')
    event = decoder.next_event()
    assert (event.type, event.data) == ("transcript", {"text": "block", "language": "en"})


@pytest.mark.parametrize(
    "wire",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"data": {}}\n',
        b'{"type": 3}\n',
        b'{"type": "x", "payload_length": -1}\n',
        b'{"type": "x", "data_length": "3"}\n',
        b'{"type": "x", "data_length": true}\n',
        b'{"type": "x", "payload_length": %d}\n' % (MAX_BLOCK_BYTES + 1),
        b'{"type": "x", "data_length": 4}\n[12]',
        b'{"type": "x", "data": [1]}\n',
    ],
)
def test_decoder_rejects_what_is_not_wyoming(wire: bytes) -> None:
    decoder = WyomingDecoder()
    decoder.receive_data(wire)
    with pytest.raises(WyomingProtocolError):
        decoder.next_event()


# --- engines against the FAKE server ----------------------------------------------------------


@pytest.fixture
async def fake(nursery) -> FakeWyomingServer:
    server = FakeWyomingServer()
    await nursery.start(server.serve)
    return server


def stt_for(server: FakeWyomingServer, **kwargs) -> WyomingSTT:
    return WyomingSTT(address=WyomingAddress("127.0.0.1", server.port), **kwargs)


def tts_for(server: FakeWyomingServer, **kwargs) -> WyomingTTS:
    return WyomingTTS(address=WyomingAddress("127.0.0.1", server.port), **kwargs)


async def test_stt_sends_the_utterance_and_returns_the_transcript(fake: FakeWyomingServer) -> None:
    fake.text = "  hello   from  the fake "
    pcm = np.arange(16000, dtype="<i2").tobytes()  # 1 s, not a multiple of the chunk size
    with trio.fail_after(10):
        text = await stt_for(fake, language="en", model="tiny").transcribe(pcm[:-2000])
    assert text == "hello from the fake"
    types = [t for t, _ in fake.received[0]]
    assert types[:2] == ["transcribe", "audio-start"] and types[-1] == "audio-stop"
    assert set(types[2:-1]) == {"audio-chunk"}
    transcribe, start = fake.received[0][0][1], fake.received[0][1][1]
    assert (transcribe["language"], transcribe["name"]) == ("en", "tiny")
    assert (start["rate"], start["width"], start["channels"]) == (16000, 2, 1)


async def test_stt_reads_a_streamed_transcript(fake: FakeWyomingServer) -> None:
    fake.mode, fake.text = "streamed", "ask not what your country can do"
    with trio.fail_after(10):
        assert await stt_for(fake).transcribe(speech(300)) == "ask not what your country can do"


async def test_stt_empty_audio_makes_no_request(fake: FakeWyomingServer) -> None:
    with trio.fail_after(10):
        assert await stt_for(fake).transcribe(b"") == ""
    assert fake.connections == 0
    with pytest.raises(EngineError) as caught:
        await stt_for(fake).transcribe(b"\x00")
    assert caught.value.code == "stt_failed"


@pytest.mark.parametrize("mode", ["error", "close", "garbage"])
async def test_stt_server_failures_are_stt_failed(fake: FakeWyomingServer, mode: str) -> None:
    fake.mode = mode
    engine = stt_for(fake)
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await engine.transcribe(speech(300))
    assert caught.value.code == "stt_failed"
    if mode == "error":
        assert "the fake failed on purpose" in caught.value.message
    assert engine.limiter.statistics().borrowed_tokens == 0


async def test_stt_slow_server_times_out(fake: FakeWyomingServer) -> None:
    fake.mode = "stall"
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await stt_for(fake, timeout=0.3).transcribe(speech(300))
    assert caught.value.code == "stt_timeout"
    with trio.fail_after(10):
        await fake.client_disconnected.wait()  # our side closed the connection


async def test_dead_server_is_unavailable(caplog) -> None:
    address = WyomingAddress("127.0.0.1", free_port())
    with trio.fail_after(10):
        with pytest.raises(EngineError) as stt_error:
            await WyomingSTT(address=address).transcribe(speech(100))
        with pytest.raises(EngineError) as tts_error:
            await WyomingTTS(address=address).synthesize("Hello.")
        assert "cannot connect" in await WyomingTTS(address=address).check_ready()
        assert "cannot connect" in await WyomingSTT(address=address).check_ready()
        # serve comes up without the server (it may start later): a warning, not a crash
        await WyomingTTS(address=address).warm_up()
    assert (stt_error.value.code, tts_error.value.code) == ("stt_unavailable", "tts_unavailable")
    assert str(address) in stt_error.value.message
    warning = next(r for r in caplog.records if r.getMessage() == "tts.warm_up_failed")
    assert warning.fields["code"] == "tts_unavailable"


async def test_tts_streams_when_the_server_offers_it(fake: FakeWyomingServer) -> None:
    engine = tts_for(fake, voice="fake-voice")
    with trio.fail_after(10):
        first = await engine.synthesize("Hello there.")
        second = await engine.synthesize("Again.")
    assert engine.server_streams is True
    # describe once, on the first call's connection; then the streaming request each time
    assert [t for t, _ in fake.received[0]] == [
        "describe",
        "synthesize-start",
        "synthesize-chunk",
        "synthesize",
        "synthesize-stop",
    ]
    assert [t for t, _ in fake.received[1]] == ["synthesize-start", "synthesize-chunk", "synthesize", "synthesize-stop"]
    assert fake.received[0][2][1]["text"] == "Hello there."
    assert fake.received[0][1][1]["voice"] == {"name": "fake-voice"}
    # 4 chunks of 1024 samples at 22.05 kHz, resampled to 16 kHz
    expected = 4 * 1024 * SAMPLE_RATE / 22050
    assert len(first) == len(second)
    assert abs(len(first) / 2 - expected) <= 2
    tone = np.frombuffer(first, dtype="<i2").astype(np.float32)
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * SAMPLE_RATE / len(tone)
    assert abs(peak_hz - 440) < 10  # the same tone, at the new rate


async def test_tts_uses_one_synthesize_event_with_a_server_that_does_not_stream(fake: FakeWyomingServer) -> None:
    fake.supports_synthesize_streaming = False
    fake.rate = 16000
    engine = tts_for(fake)
    with trio.fail_after(10):
        audio = await engine.synthesize("Hello.")
    assert engine.server_streams is False
    assert [t for t, _ in fake.received[0]] == ["describe", "synthesize"]
    assert fake.received[0][1][1] == {"text": "Hello."}
    assert len(audio) == 4 * 1024 * 2  # 16 kHz already: passed through


@pytest.mark.parametrize("streaming", ["on", "off"])
async def test_tts_streaming_setting_skips_describe(fake: FakeWyomingServer, streaming: str) -> None:
    with trio.fail_after(10):
        audio = await tts_for(fake, streaming=streaming).synthesize("Hello.")
    assert audio
    types = [t for t, _ in fake.received[0]]
    assert "describe" not in types
    assert ("synthesize-start" in types) == (streaming == "on")


async def test_tts_blank_text_makes_no_request(fake: FakeWyomingServer) -> None:
    with trio.fail_after(10):
        assert await tts_for(fake).synthesize("  \n ") == b""
    assert fake.connections == 0


@pytest.mark.parametrize("mode", ["error", "close", "garbage"])
async def test_tts_server_failures_are_tts_failed(fake: FakeWyomingServer, mode: str) -> None:
    fake.mode = mode
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await tts_for(fake, streaming="off").synthesize("Hello.")
    assert caught.value.code == "tts_failed"


async def test_tts_refuses_audio_it_cannot_convert(fake: FakeWyomingServer, monkeypatch) -> None:
    import fake_wyoming_server

    original = fake_wyoming_server.AudioChunk

    def eight_bit(**kwargs):
        return original(**{**kwargs, "width": 1})

    monkeypatch.setattr(fake_wyoming_server, "AudioChunk", eight_bit)
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await tts_for(fake, streaming="off").synthesize("Hello.")
    assert caught.value.code == "tts_failed" and "sample width" in caught.value.message


async def test_tts_slow_server_times_out(fake: FakeWyomingServer) -> None:
    fake.mode = "stall"
    with trio.fail_after(10), pytest.raises(EngineError) as caught:
        await tts_for(fake, timeout=0.3, streaming="off").synthesize("Hello.")
    assert caught.value.code == "tts_timeout"


async def test_cancelling_a_synthesis_closes_the_connection_at_once(fake: FakeWyomingServer) -> None:
    fake.mode = "stall"  # audio-start and one chunk, then nothing until the client goes
    engine = tts_for(fake)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.synthesize, "A long sentence that takes the server a while.")
            await fake.first_audio_sent.wait()
            assert not fake.client_disconnected.is_set()
            nursery.cancel_scope.cancel()  # barge-in
        await fake.client_disconnected.wait()  # the server saw the connection close
    assert engine.limiter.statistics().borrowed_tokens == 0


async def test_a_session_survives_a_failing_remote_tts(fake: FakeWyomingServer) -> None:
    """Each failure is an ``error`` with its code and a failed response; then a turn works."""
    tts = tts_for(fake, timeout=0.5)
    engines = fake_engines(stt=FakeSTT(delay=0), llm=FakeLLM(first_delay=0, delta_delay=0, reply="Fine."), tts=tts)
    with trio.fail_after(30):
        async with connected(engines) as client:
            for mode, code in [("error", "tts_failed"), ("stall", "tts_timeout"), ("garbage", "tts_failed")]:
                fake.mode = mode
                await client.send({"type": "input_text", "text": "hello"})
                error = await client.until("error")
                done = await client.until("response.done")
                assert (error.code, error.turn_id, done.status) == (code, done.turn_id, "failed")
            fake.mode = "answer"
            await client.send({"type": "input_text", "text": "hello"})
            done = await client.until("response.done")
            assert done.status == "completed" and done.metrics.audio_ms > 0
            tts.address = WyomingAddress("127.0.0.1", free_port())  # the server is gone
            await client.send({"type": "input_text", "text": "hello"})
            error = await client.until("error")
            assert error.code == "tts_unavailable"
            assert (await client.until("response.done")).status == "failed"


@pytest.mark.parametrize("engine", ["stt", "tts"])
async def test_cancelling_a_turn_closes_its_remote_request(fake: FakeWyomingServer, engine: str) -> None:
    """``response.cancel`` while the remote STT (TTS) request is in flight: the response ends
    ``cancelled`` and the server sees its connection close; the next turn works."""
    fake.mode = "stall"
    remote = {"stt": stt_for(fake), "tts": tts_for(fake, streaming="off")}[engine]
    engines = fake_engines(
        **{engine: remote},
        **({"stt": FakeSTT(delay=0)} if engine == "tts" else {}),
        llm=FakeLLM(first_delay=0, delta_delay=0, reply="Fine."),
    )
    with trio.fail_after(30):
        async with connected(engines) as client:
            await client.send(speech(300))
            await client.send({"type": "input_audio.commit"})
            await client.until("response.created")
            await fake.request_received.wait()
            await client.send({"type": "response.cancel"})
            done = await client.until("response.done")
            assert done.status == "cancelled"
            await fake.client_disconnected.wait()
            fake.mode = "answer"
            await client.send(speech(300))
            await client.send({"type": "input_audio.commit"})
            assert (await client.until("response.done")).status == "completed"


# --- the real servers --------------------------------------------------------------------------


class WyomingServers(EngineServers):
    """wyoming-faster-whisper and wyoming-piper with the embedded models, on free ports
    (bench/engine_servers.py, which the bench's remote mode uses too)."""

    def __init__(self) -> None:
        for name in ("wyoming-faster-whisper", "wyoming-piper"):
            if find_command(name) is None:
                pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
        super().__init__(llm=False)


@pytest.fixture(scope="module")
def wyoming_servers() -> Iterator[WyomingServers]:
    servers = WyomingServers()
    try:
        yield servers
    finally:
        servers.stop()


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes())


def tcp_connections(port: int) -> list[tuple[str, str]]:
    """The loopback TCP connections of ``port`` (the listener left out), from /proc/net/tcp:
    ``(side, state)`` with side ``"client"`` (our end) or ``"server"``, and state ``"01"``
    established, ``"08"`` close-wait (the peer closed, this end not yet), ``"06"`` time-wait..."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.split(":")[1], 16) for address in fields[1:3])
        if fields[3] != "0A" and port in (local_port, remote_port):
            found.append(("server" if local_port == port else "client", fields[3]))
    return found


@pytest.mark.models
async def test_real_wyoming_faster_whisper_transcribes_jfk(wyoming_servers: WyomingServers) -> None:
    stt = WyomingSTT(address=WyomingAddress("127.0.0.1", wyoming_servers.stt_port), timeout=60)
    with trio.fail_after(120):
        assert await stt.check_ready() is None
        text = await stt.transcribe(read_wav(DATA / "jfk_16k.wav"))
    assert "ask not what your country can do for you" in text.lower()
    assert text == " ".join(text.split())


@pytest.mark.models
async def test_real_wyoming_piper_speaks_what_whisper_hears(wyoming_servers: WyomingServers) -> None:
    tts = WyomingTTS(address=WyomingAddress("127.0.0.1", wyoming_servers.tts_port), timeout=60)
    stt = WyomingSTT(address=WyomingAddress("127.0.0.1", wyoming_servers.stt_port), timeout=60)
    with trio.fail_after(120):
        audio = await tts.synthesize("Ask not what your country can do for you.")
        assert tts.server_streams is True  # wyoming-piper offers streaming synthesis
        heard = await stt.transcribe(audio)
    assert 1.0 < len(audio) / 2 / SAMPLE_RATE < 6.0
    assert "country" in heard.lower()


@pytest.mark.models
async def test_real_wyoming_piper_cancel_closes_both_ends(wyoming_servers: WyomingServers) -> None:
    port = wyoming_servers.tts_port
    tts = WyomingTTS(address=WyomingAddress("127.0.0.1", port), timeout=60, streaming="off")
    text = " ".join(f"This is sentence number {n} of a reply that is far too long." for n in range(12))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tts.synthesize, text)
            while ("client", "01") not in tcp_connections(port):  # the request is in flight
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()  # barge-in
        # Our end is closed at once; the server's end follows as soon as it notices (Piper
        # synthesizes without yielding, so after its current sentence).
        assert [state for side, state in tcp_connections(port) if side == "client" and state == "01"] == []
        while any(side == "server" and state in ("01", "08") for side, state in tcp_connections(port)):
            await trio.sleep(0.05)
        assert await tts.synthesize("Still here.")  # the server is fine


@pytest.mark.models
async def test_serve_with_remote_wyoming_stt_and_tts_holds_a_spoken_turn(wyoming_servers: WyomingServers) -> None:
    """``voiceorch serve --stt-url wyoming://... --tts-url wyoming://...``: the remote servers
    do the speech work (whisper's own log has the words), the embedded LLM answers."""
    from real_server import start_server
    from voiceorch.talk import TurnInput, configure, run_turn

    running = start_server("--stt-url", wyoming_servers.stt_url, "--tts-url", wyoming_servers.tts_url)
    try:
        with trio.fail_after(120):
            async with trio_websocket.open_websocket_url(running.url) as ws:
                await ws.get_message()  # session.created
                await configure(ws, vad=False)
                report = await run_turn(ws, TurnInput(wav=DATA / "jfk_16k.wav"))
                again = await run_turn(ws, TurnInput(text="Say that again, please."))
    finally:
        assert running.stop() == 0
    assert "ask not what your country can do for you" in report.transcript.lower()
    for turn in (report, again):
        assert turn.done.status == "completed", turn.errors
        assert turn.done.metrics.audio_ms > 500
        samples = np.frombuffer(bytes(turn.audio), dtype="<i2")
        assert np.abs(samples).max() > 1000  # speech, not silence
    assert "ask not what your country" in (wyoming_servers.dir / "stt.log").read_text().lower()
    assert not [line for line in running.log_lines() if line.get("level") == "error"]

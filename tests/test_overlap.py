"""Pause and decide: speech over a reply pauses it, then its transcript decides whether the reply
is interrupted (real words) or resumes (noise, a backchannel). The decision alone, the resume
point alone, then the session with fake engines and scripted transcripts under MockClock."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from session_harness import check_framing, connected, count_tasks, fake_engines
from test_barge_in import REPLY, SENTENCES, stream
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, fake_pcm
from voiceorch.session import SessionSettings
from voiceorch.session.overlap import Overlap, OverlapDecision, classify, words
from voiceorch.session.playback import Playback

BACKCHANNELS = p.DEFAULT_BACKCHANNELS

# --- the classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "expected"),
    [
        ("", Overlap.NOISE),
        ("  ", Overlap.NOISE),
        ("[BLANK_AUDIO]", Overlap.NOISE),
        ("(coughing)", Overlap.NOISE),
        ("*cough*", Overlap.NOISE),
        ("...", Overlap.NOISE),
        ("Mm-hmm.", Overlap.BACKCHANNEL),
        ("mm hm", Overlap.BACKCHANNEL),
        ("Mhm", Overlap.BACKCHANNEL),
        ("Uh-huh.", Overlap.BACKCHANNEL),
        ("Yeah, yeah.", Overlap.BACKCHANNEL),
        ("Okay.", Overlap.BACKCHANNEL),
        ("All right.", Overlap.BACKCHANNEL),
        ("I see.", Overlap.BACKCHANNEL),
        ("Stop.", Overlap.WORDS),
        ("Okay, stop.", Overlap.WORDS),
        ("Wait, stop. What time is it?", Overlap.WORDS),
        ("What time is it?", Overlap.WORDS),
    ],
)
def test_classify_each_kind_of_overlap(transcript, expected):
    assert classify(transcript, backchannels=BACKCHANNELS) is expected


def test_a_transcript_faster_than_speech_is_noise():
    # Whisper's repetition loop on a 0.6 s hummed "mm-hm", heard through a browser's processing.
    assert classify("And And And And And And And And And", backchannels=BACKCHANNELS, speech_ms=600) is Overlap.NOISE
    # The same hum within what 0.6 s could hold (5 words): still a hum (a browser test's espeak "mm-hmm").
    assert classify("And, and, and, and, and,", backchannels=BACKCHANNELS, speech_ms=600) is Overlap.NOISE
    assert classify("and and", backchannels=BACKCHANNELS) is Overlap.NOISE
    assert classify("And so my fellow Americans", backchannels=BACKCHANNELS, speech_ms=1900) is Overlap.WORDS
    # Real words looped by Whisper are still words (it heard them from 1.9 s of speech).
    looped = "And so my fellow Americans. And so my fellow Americans. And so"
    assert classify(looped, backchannels=BACKCHANNELS, speech_ms=1900) is Overlap.WORDS
    assert classify("one two three four five six seven", backchannels=BACKCHANNELS, speech_ms=300) is Overlap.NOISE
    # A looped word that is not one Whisper makes of sounds is a word ("Wait," 0.3 s into "Wait, stop.").
    assert classify("wait... wait... wait... wait...", backchannels=BACKCHANNELS, speech_ms=300) is Overlap.WORDS
    assert classify("No, no, no.", backchannels=BACKCHANNELS, speech_ms=300) is Overlap.WORDS
    # A loop of a backchannel ("Okay" said once, 0.5 s) is still a backchannel.
    assert classify("Okay... Okay... Okay... Okay... Okay", backchannels=BACKCHANNELS, speech_ms=500) is (
        Overlap.BACKCHANNEL
    )


def test_classify_counts_the_words_that_are_not_backchannels_against_min_words():
    assert classify("yeah stop", backchannels=BACKCHANNELS, min_words=2) is Overlap.TOO_FEW_WORDS
    assert classify("no stop", backchannels=BACKCHANNELS, min_words=2) is Overlap.WORDS
    # The list is the session's: without "yeah" in it, "yeah" is a real word.
    assert classify("Yeah.", backchannels=("mm-hm",)) is Overlap.WORDS
    assert words("Mm-HMM, it's fine!") == ["m", "hm", "it's", "fine"]


def test_a_decision_waits_for_a_transcript_of_the_speech_up_to_its_latest_pause():
    decision = OverlapDecision.start(10.0, decision_ms=2000, backchannels=BACKCHANNELS, min_words=1)
    assert decision.deadline == 12.0
    first = decision.on_pause(10.5)
    assert decision.deadline == 12.5  # decision_ms from the latest pause of the speech
    assert decision.on_pause(10.6) is None  # the same pause: asked already
    decision.on_speech_resumed()  # the user went on: the first transcript is of a part
    assert decision.on_transcript(first, "okay") is None
    second = decision.on_pause(11.0)
    assert second == first + 1
    assert decision.on_transcript(first, "okay") is None  # stale
    verdict = decision.on_transcript(second, "okay, what time is it?")
    assert verdict is not None and verdict.interrupt and verdict.overlap is Overlap.WORDS
    assert decision.on_pause(11.5) is None and decision.on_deadline(14.0) is None  # decided once


def test_no_transcript_by_the_deadline_interrupts():
    decision = OverlapDecision.start(10.0, decision_ms=500, backchannels=BACKCHANNELS, min_words=1)
    ticket = decision.on_pause(10.2)
    assert decision.on_deadline(10.6) is None
    verdict = decision.on_deadline(10.7)
    assert verdict is not None and verdict.interrupt and verdict.overlap is None
    assert decision.on_transcript(ticket, "mm-hm") is None  # too late


# --- where a paused reply resumes ----------------------------------------------------------


def _tone_with_gaps(parts: list[tuple[int, bool]]) -> bytes:
    """PCM of (ms, voiced) parts: a loud square wave where voiced, silence elsewhere."""
    out = bytearray()
    for ms, voiced in parts:
        for i in range(16 * ms):
            out += (8000 if voiced and (i // 8) % 2 else -8000 if voiced else 0).to_bytes(2, "little", signed=True)
    return bytes(out)


def test_the_resume_point_is_the_quiet_start_of_the_word_in_progress():
    playback = Playback()
    # "Here is everything." : "Here" 0-300, gap 300-340, "is" 340-500, gap 500-540, "everything." 540-1200
    audio = _tone_with_gaps([(300, True), (40, False), (160, True), (40, False), (660, True)])
    playback.add_sentence("Here is everything.", 1200)
    # Paused at 800 ms: in "everything." (letters 4+2+11: it starts at 6/17 of 1200 = 424 ms by
    # share); the quietest 10 ms within 120 ms before to 80 ms after that is the gap before it.
    at, heard = playback.resume_point(800, audio)
    assert 495 <= at <= 530 and heard == "Here is"
    # In the first word: the sentence's own start, exactly.
    assert playback.resume_point(150, audio) == (0.0, "")
    # Never past what was played (the estimate's window is cut there).
    at, heard = playback.resume_point(430, audio)
    assert at <= 430 and heard == "Here is"


def test_the_resume_point_after_whole_sentences_is_the_next_sentences_start():
    playback = Playback()
    playback.add_sentence("One.", 400)
    playback.add_sentence("Two three.", 800)
    audio = _tone_with_gaps([(400, True), (800, True)])
    assert playback.resume_point(400, audio) == (400.0, "One.")
    assert playback.resume_point(1200, audio) == (1200.0, "One. Two three.")


def test_a_stopped_and_rewound_playback_counts_positions_in_the_replys_audio():
    playback = Playback()
    playback.add_sentence("one two three four", 400)
    for i in range(10):
        playback.on_sent(10.0 + i * 0.01, 40)  # all 400 ms sent by 10.09, playing until 10.4
    assert playback.stop(10.25) == pytest.approx(250)  # the client dropped the rest
    assert playback.played_ms(11.0) == pytest.approx(250)  # and played nothing since
    playback.rewind(200)
    playback.on_sent(12.0, 40)
    assert playback.played_ms(12.02) == pytest.approx(220)
    assert playback.sent_ms == 440 and playback.position_ms == 240
    assert playback.heard_text(playback.played_ms(12.04)) == "one two"


# --- the session: each kind of overlap at each stage of a response -------------------------------

TOTAL_MS = sum(len(fake_pcm(s, 60.0)) for s in SENTENCES) / 32  # 2880 ms
#: Where the user starts speaking, after the response's first audio frame (None: before it).
STAGES = {
    "before_first_audio": None,
    "mid_sentence": 0.3,  # paused ~0.5 s in: inside "Sure thing." (660 ms)
    "last_sentence": 2.2,  # inside "Anything else?" (2040-2880 ms)
    "text_complete_audio_playing": 2.55,  # everything sent; the last 200 ms still playing
}
KINDS = {"noise": "", "backchannel": "Mm-hmm.", "one_word": "Stop.", "question": "What time is it?"}


def _engines(stage: str, overlap_text: str):
    return fake_engines(
        stt=FakeSTT(texts=[overlap_text], delay=0.2),
        llm=FakeLLM(first_delay=2.0 if stage == "before_first_audio" else 0.1),
        tts=FakeTTS(),
    )


async def _speak_over_at(client, stage: str) -> None:
    if STAGES[stage] is None:
        await client.until("response.created")
    else:
        while not isinstance(await client.next(), bytes):
            pass
        await trio.sleep(STAGES[stage])
    await stream(client, ("speech", 400), ("silence", 800))


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_of_overlap_at_each_stage(autojump_clock, stage, kind):
    engines = _engines(stage, KINDS[kind])
    async with connected(engines, SessionSettings()) as client:
        await wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        await client.send({"type": "input_text", "text": "tell me something"})
        await _speak_over_at(client, stage)
        paused = await client.until("response.paused", turn_id="turn_1")
        if stage == "before_first_audio":
            assert paused.played_ms == 0
        # Nothing of the response between its pause and the verdict.
        verdict = await client.until("response.resumed" if kind in ("noise", "backchannel") else "response.interrupted")
        between = client.log[client.log.index(paused) + 1 : client.log.index(verdict)]
        assert not any(isinstance(item, bytes) for item in between)
        done = await client.until("response.done", turn_id="turn_1")

        if kind in ("noise", "backchannel"):
            assert verdict.overlap == kind and verdict.transcript == KINDS[kind]
            assert verdict.resume_ms <= verdict.played_ms <= TOTAL_MS
            assert REPLY.startswith(verdict.heard_text)
            # The audio after the resume is the reply from resume_ms on, to its end.
            after = client.log[client.log.index(verdict) + 1 : client.log.index(done)]
            assert sum(len(item) for item in after if isinstance(item, bytes)) / 32 == pytest.approx(
                TOTAL_MS - verdict.resume_ms, abs=0.1
            )
            assert done.status == "completed" and done.text == REPLY
            # The overlap was no turn: one response, no transcript; the history has the whole reply.
            assert [e.turn_id for e in client.events("response.created")] == ["turn_1"]
            assert client.events("transcript.final")[1:] == []
            await client.send({"type": "input_text", "text": "and then?"})
            await client.until("response.done", turn_id="turn_2")
            history = [(m.role, m.content) for m in engines.llm.requests[1][1:]]
            assert history[:2] == [("user", "tell me something"), ("assistant", REPLY)]
        else:
            assert done.status == "interrupted" and done.text == verdict.heard_text
            assert verdict.played_ms == paused.played_ms  # the audio stopped at the pause
            # The words are the next turn, with the transcript that decided (no second STT).
            nxt = await client.until("response.done", turn_id="turn_2")
            assert nxt.status == "completed"
            assert client.events("transcript.final")[-1].text == KINDS[kind]
            assert len(engines.stt.calls) == 1
            history = [(m.role, m.content) for m in engines.llm.requests[1][1:]]
            assert history[0] == ("user", "tell me something")
            assert history[-1] == ("user", KINDS[kind])
        check_framing(client.log)
        await trio.sleep(5)
        await wait_all_tasks_blocked()
        assert client.session._unfinished == [] and not client.session._turns.judging
        assert count_tasks() == idle_tasks


async def test_speech_that_goes_on_after_a_backchannel_is_judged_whole(autojump_clock):
    # "Mm-hmm ... wait, what time is it?": the first pause's transcript comes back while the
    # user speaks again, so it decides nothing; the whole speech, at its next pause, interrupts.
    engines = fake_engines(stt=FakeSTT(texts=["Mm-hmm.", "Mm-hmm, wait, what time is it?"], delay=0.3))
    async with connected(engines, SessionSettings()) as client:
        await client.send({"type": "input_text", "text": "tell me something"})
        while not isinstance(await client.next(), bytes):
            pass
        await stream(client, ("speech", 300), ("silence", 250), ("speech", 600), ("silence", 800))
        interrupted = await client.until("response.interrupted")
        assert client.events("response.resumed") == []
        await client.until("response.done", turn_id="turn_2")
    assert client.events("transcript.final")[-1].text == "Mm-hmm, wait, what time is it?"
    assert len(engines.stt.calls) == 2 and engines.stt.calls[1] > engines.stt.calls[0]
    assert interrupted.turn_id == "turn_1"


async def test_too_few_words_resume_and_a_hung_transcription_interrupts_at_the_deadline(autojump_clock):
    engines = fake_engines(stt=FakeSTT(texts=["Stop.", "Stop it now."], delay=0.2))
    async with connected(engines, SessionSettings()) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {"turn_detection": {"interrupt_min_words": 2, "interrupt_decision_ms": 800}},
            }
        )
        updated = await client.until("session.updated")
        assert updated.session.turn_detection.interrupt_min_words == 2
        await client.send({"type": "input_text", "text": "tell me something"})
        while not isinstance(await client.next(), bytes):
            pass
        await stream(client, ("speech", 400), ("silence", 800))
        resumed = await client.until("response.resumed")
        assert resumed.overlap == "too_few_words"
        done = await client.until("response.done", turn_id="turn_1")
        assert done.status == "completed"

        # Speech-to-text that takes longer than the decision may: the reply stays stopped.
        engines.stt.delay = 30.0
        await client.send({"type": "input_text", "text": "again"})
        while not isinstance(await client.next(), bytes):
            pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 400), ("silence", 800))
            paused = await client.until("response.paused")
            paused_at = trio.current_time()
            await client.until("response.interrupted")
            # 0.8 s after the speech paused: the reply was paused 224 ms into the 400 ms of
            # speech (7 VAD chunks), and the pause in the speech counted 160 ms after its end.
            assert trio.current_time() - paused_at == pytest.approx((400 - 224 + 160) / 1000 + 0.8, abs=0.04)
        done = await client.until("response.done", turn_id="turn_2")
        assert done.status == "interrupted" and paused.turn_id == "turn_2"


async def test_immediate_mode_interrupts_without_a_pause(autojump_clock):
    engines = fake_engines(stt=FakeSTT(texts=["Mm-hmm."]))
    async with connected(engines, SessionSettings()) as client:
        await client.send({"type": "session.update", "session": {"turn_detection": {"interruption": "immediate"}}})
        await client.until("session.updated")
        await client.send({"type": "input_text", "text": "tell me something"})
        while not isinstance(await client.next(), bytes):
            pass
        await stream(client, ("speech", 400), ("silence", 800))
        done = await client.until("response.done", turn_id="turn_1")
    assert done.status == "interrupted"
    assert client.events("response.paused") == [] and client.events("response.resumed") == []


@pytest.mark.parametrize(
    "patch",
    [
        {"backchannels": "yeah"},  # not an array (it would be taken letter by letter)
        {"backchannels": [1]},
        {"backchannels": [""]},
        {"backchannels": ["x" * 41]},
        {"interruption": "later"},
        {"interrupt_min_words": 0},
        {"interrupt_decision_ms": 50},
    ],
)
def test_bad_turn_detection_fields_are_refused(patch):
    frame = {"type": "session.update", "session": {"turn_detection": patch}}
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(json.dumps(frame))
    assert info.value.code == "invalid_event"


def test_a_session_update_sets_the_backchannels_and_the_mode():
    patch = {"backchannels": ["mm-hm", "yep"], "interruption": "immediate"}
    update = p.parse_client_event(json.dumps({"type": "session.update", "session": {"turn_detection": patch}}))
    config = update.session.apply(p.SessionConfig(instructions=""))
    assert config.turn_detection.backchannels == ("mm-hm", "yep")
    assert config.turn_detection.interruption == "immediate"
    assert config.turn_detection.interrupt_min_words == 1  # the rest keeps its value


def test_the_overlap_bench_counts_false_interruptions_per_mode():
    from bench.overlap import summarize

    samples = [
        {"mode": "immediate", "kind": "noise", "outcome": "interrupted", "audio_stop_ms": 220.0, "decision_ms": 220.0},
        {"mode": "immediate", "kind": "backchannel", "outcome": "ignored"},
        {"mode": "immediate", "kind": "words", "outcome": "interrupted", "audio_stop_ms": 230.0, "decision_ms": 230.0},
        {
            "mode": "pause_and_decide",
            "kind": "noise",
            "outcome": "resumed",
            "audio_stop_ms": 225.0,
            "decision_ms": 900.0,
        },
        {"mode": "pause_and_decide", "kind": "backchannel", "outcome": "interrupted", "decision_ms": 800.0},
        {"mode": "pause_and_decide", "kind": "words", "outcome": "resumed", "decision_ms": 700.0, "repeat_ms": 60.0},
    ]
    summary = summarize(samples)
    assert summary["immediate"]["false_interruption_rate"] == 0.5
    assert summary["immediate"]["real_interruptions_missed"] == 0
    assert summary["pause_and_decide"]["false_interruptions"] == 1
    assert summary["pause_and_decide"]["real_interruptions_missed"] == 1
    assert summary["pause_and_decide"]["speech_to_decision_ms"] == {"p50": 800.0, "max": 900.0, "n": 3}

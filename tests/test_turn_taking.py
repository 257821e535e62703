"""The turn-taking state machine alone: scripted speech probabilities, a plain clock value, no I/O."""

from __future__ import annotations

import attrs
import pytest

from voiceorch import protocol as p
from voiceorch.session import turn_taking as tt

CHUNK = 1024  # one 32 ms VAD chunk of 16 kHz s16le
CHUNK_S = 0.032
IMMEDIATE = p.TurnDetection(interruption="immediate")


class Script:
    """Drives a :class:`TurnTaking` with scripted VAD output ("S": a speech chunk, "_": silence)."""

    def __init__(self, **kwargs) -> None:
        self.machine = tt.TurnTaking(lambda: None, **kwargs)  # the stream is never asked: we script it
        self.now = 0.0
        self.started: list[tt.Response] = []

    def feed(self, pattern: str) -> list[tt.Action]:
        actions: list[tt.Action] = []
        for mark in pattern:
            self.now += CHUNK_S
            for action in self.machine.audio(bytes(CHUNK), self.now):
                if isinstance(action, tt.DetectSpeech):
                    assert len(action.chunks) == 1
                    actions += self.machine.vad(action, [1.0 if mark == "S" else 0.0], self.now)
                else:
                    actions.append(action)
        self.started += [a.response for a in actions if isinstance(a, tt.StartResponse)]
        return actions


def events(actions: list[tt.Action]) -> list[str]:
    return [a.event.TYPE for a in actions if isinstance(a, tt.Emit)]


def kinds(actions: list[tt.Action]) -> list[str]:
    """Action class names, and for events their wire name without ``input_audio.``."""
    return [
        type(a).__name__ if not isinstance(a, tt.Emit) else a.event.TYPE.removeprefix("input_audio.") for a in actions
    ]


def test_speech_then_silence_speculates_in_the_pause_and_confirms_at_the_window():
    s = Script()
    assert kinds(s.feed("SSSSSSSSSS")) == ["speech_started"]
    pause = s.feed("_____")  # 160 ms of silence: the pause begins
    assert kinds(pause) == ["StartResponse"]
    (spec,) = s.started
    assert spec.speculative and spec.turn_id == "turn_1" and len(spec.audio) > 0
    end = s.feed("___________")  # 512 ms in all: the window closes
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]
    assert end[-1].response is spec and not spec.speculative
    assert end[1].event.turn_id == "turn_1"
    assert s.machine.responding


def test_speech_resuming_in_the_pause_drops_the_speculation_and_reuses_its_id():
    s = Script()
    s.feed("SSSSSSSSSS_____")
    (spec,) = s.started
    resumed = s.feed("SS")
    assert kinds(resumed) == ["CancelResponse"] and resumed[0].response is spec and spec.cancelled
    s.machine.response_started(spec)
    s.machine.response_ended(spec)
    s.feed("SSSS" + "_" * 16)
    assert [r.turn_id for r in s.started] == ["turn_1", "turn_1"]  # the client never saw the first
    assert s.started[1].audio.__len__() > len(spec.audio)  # the whole utterance, both parts


def test_no_speculation_when_it_is_off():
    s = Script(speculate_after_ms=None)
    s.feed("SSSSSSSSSS_____")
    assert s.started == []
    end = s.feed("___________")
    assert kinds(end) == ["speech_stopped", "committed", "StartResponse"]
    assert not s.started[0].speculative


def confirmed_turn(s: Script) -> tt.Response:
    s.feed("SSSSSSSSSS" + "_" * 16)
    (response,) = s.started
    s.machine.response_started(response)
    return response


def test_barge_in_interrupts_first_and_carries_untranscribed_audio_into_the_next_turn():
    s = Script(turn_detection=IMMEDIATE)
    first = confirmed_turn(s)
    speech = s.feed("SSSSSSS")  # 224 ms >= interrupt_min_speech_ms 200
    assert kinds(speech)[:1] == ["speech_started"]
    assert any(isinstance(a, tt.Interrupt) and a.response is first for a in speech)
    first_interrupt = next(i for i, a in enumerate(speech) if isinstance(a, tt.Interrupt))
    assert first_interrupt < len(speech)  # (the barge-in is decided in the batch that reached it)
    s.machine.response_ended(first)
    s.feed("_" * 16)
    second = s.started[1]
    assert second.audio.startswith(first.audio)  # the interrupted turn's words were never transcribed


def test_barge_in_does_not_carry_a_turn_whose_words_were_transcribed():
    s = Script(turn_detection=IMMEDIATE)
    first = confirmed_turn(s)
    s.machine.response_transcribed(first)
    s.feed("SSSSSSS")
    s.machine.response_ended(first)
    s.feed("_" * 16)
    assert not s.started[1].audio.startswith(first.audio)


def test_barge_in_comes_before_the_events_of_the_same_batch():
    s = Script(turn_detection=IMMEDIATE)
    first = confirmed_turn(s)
    machine = s.machine
    for _ in range(7):  # seven speech chunks judged in one batch
        s.now += CHUNK_S
        (asked,) = machine.audio(bytes(CHUNK), s.now)
    actions = machine.vad(tt.DetectSpeech(asked.detector, []), [1.0] * 7, s.now)
    assert kinds(actions) == ["Interrupt", "speech_started"]
    assert actions[0].response is first and first.cancelled


def test_short_speech_over_a_response_is_ignored():
    s = Script()
    first = confirmed_turn(s)
    assert kinds(s.feed("SSSSS" + "_" * 16)) == ["speech_started", "speech_stopped"]  # 160 ms: a cough
    assert len(s.started) == 1 and not first.cancelled


def test_without_interrupt_response_speech_over_a_response_queues_behind_it():
    s = Script(turn_detection=p.TurnDetection(interrupt_response=False))
    first = confirmed_turn(s)
    s.feed("SSSSSSSSSS" + "_" * 16)
    assert not first.cancelled and len(s.started) == 2


def test_a_typed_turn_supersedes_the_responses_in_progress():
    s = Script(turn_detection=p.TurnDetection(interrupt_response=False))
    first = confirmed_turn(s)
    s.feed("SSSSSSSSSS_____")  # a speculation in the next pause
    spec = s.started[1]
    actions = s.machine.text("  hello ")
    assert kinds(actions) == ["CancelResponse", "StartResponse", "CancelResponse"]
    assert [a.response for a in actions] == [spec, actions[1].response, first]
    assert actions[1].response.text == "hello" and actions[1].response.turn_id == "turn_2"
    (empty,) = s.machine.text("  ")
    assert empty.code == "invalid_event"


def test_audio_that_stops_in_the_pause_ends_the_turn_by_the_clock():
    s = Script()
    s.feed("SSSSSSSSSS_____")
    deadline = s.machine.deadline()
    assert deadline is not None
    # The rest of the window (512 - 160 ms, in whole chunks) plus the margin, from the last frame.
    assert deadline == pytest.approx(s.now + (500 - 160) / 1000 + tt.AUDIO_STOPPED_MARGIN_S)
    assert s.machine.tick(deadline - 0.001) == []
    end = s.machine.tick(deadline)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]
    assert s.machine.deadline() is None


def test_commit_of_nothing_is_an_error_and_commit_ends_the_turn():
    s = Script(turn_detection=p.TurnDetection(type="none"))
    assert s.machine.commit() == [tt.Fail("input_audio_buffer_empty", "there is no audio to commit")]
    assert s.feed("SSSS") == []  # push-to-talk: no speech detection at all
    actions = s.machine.commit()
    assert kinds(actions) == ["committed", "StartResponse"]
    assert actions[0].event.audio_ms == 4 * 32


def test_a_full_queue_refuses_more_turns():
    s = Script(turn_detection=p.TurnDetection(type="none"), max_pending_turns=2)
    assert kinds(s.machine.text("one")) == ["StartResponse"]
    assert kinds(s.machine.text("two")) == ["StartResponse", "CancelResponse"]
    (busy,) = s.machine.text("three")
    assert busy.code == "busy"
    s.machine.response_started(s.machine._responses[0])
    assert kinds(s.machine.text("three")) == ["StartResponse", "CancelResponse"]


def test_input_buffer_bound():
    s = Script(turn_detection=p.TurnDetection(type="none"), max_input_audio_ms=64)
    assert s.feed("SS") == []
    (full,) = s.feed("SSS")
    assert full.code == "input_audio_buffer_full"
    assert s.machine.input_bytes == 2 * CHUNK


def test_shutting_down_refuses_the_turn_that_ends_and_drops_the_speculation():
    s = Script()
    s.feed("SSSSSSSSSS_____")
    (spec,) = s.started
    assert kinds(s.machine.stop_new_turns()) == ["CancelResponse"]
    end = s.feed("___________")
    assert kinds(end) == ["speech_stopped", "Fail"] and end[1].code == "server_shutting_down"
    assert s.machine.input_bytes == 0


def test_cancel_response():
    s = Script()
    (none,) = s.machine.cancel_response()
    assert none.code == "no_active_response"
    first = confirmed_turn(s)
    assert kinds(s.machine.cancel_response()) == ["CancelResponse"] and first.cancelled


def test_clear_forgets_speech_in_progress_and_a_stale_vad_answer():
    s = Script()
    s.now += CHUNK_S
    (asked,) = s.machine.audio(bytes(CHUNK), s.now)
    actions = s.machine.clear()
    assert kinds(actions) == ["cleared"] and actions[0].event.audio_ms == 32
    assert s.machine.vad(asked, [1.0], s.now) == []  # the detector it asked is gone


def test_switching_to_push_to_talk_drops_the_speculation():
    s = Script()
    s.feed("SSSSSSSSSS_____")
    actions = s.machine.configure(attrs.evolve(p.TurnDetection(), type="none"))
    assert kinds(actions) == ["CancelResponse"] and s.machine.detector is None


# --- semantic_vad: scripted verdicts of the end-of-turn model -------------------------------------

SEMANTIC = p.TurnDetection(type="semantic_vad")


def judges(actions: list[tt.Action]) -> list[tt.Judge]:
    return [a for a in actions if isinstance(a, tt.Judge)]


def semantic(**kwargs) -> Script:
    kwargs.setdefault("turn_detection", SEMANTIC)
    kwargs.setdefault("end_of_turn_model", True)
    return Script(**kwargs)


def test_semantic_a_finished_turn_ends_after_a_short_silence():
    s = semantic()
    s.feed("SSSSSSSSSS")
    pause = s.feed("_____")  # 160 ms: speculation and a judgement of the turn so far, at once
    assert kinds(pause) == ["StartResponse", "Judge"]
    (asked,) = judges(pause)
    assert asked.silence_ms == 160 and asked.audio == s.started[0].audio
    spec = s.started[0]
    s.machine.response_started(spec)
    assert s.machine.verdict(asked, 0.9, s.now) == []  # finished, but only 160 ms of silence yet
    assert s.machine.response_transcript(spec, "What time is it?", s.now) == []
    assert s.feed("_") == []  # 192 ms
    end = s.feed("_")  # 224 ms: past the 200 ms of a finished turn
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]
    assert end[0].event.audio_ms == 10 * 32  # dated at the start of the silence


def test_semantic_speculation_may_start_before_the_first_judgement():
    """Speculation at 64 ms of silence (its words come sooner); the audio is still judged at 160 ms."""
    s = semantic(speculate_after_ms=64)
    s.feed("SSSSSSSSSS")
    assert kinds(s.feed("__")) == ["StartResponse"]  # 64 ms: the answer starts, nothing judged
    spec = s.started[0]
    s.machine.response_started(spec)
    assert s.machine.response_transcript(spec, "What time is it?", s.now) == []  # words, no verdict yet
    assert s.feed("__") == []  # 128 ms
    (asked,) = judges(s.feed("__"))  # 160 ms: judged; 192 ms
    assert asked.silence_ms == 160 and asked.audio.startswith(spec.audio)  # and the silence since
    assert s.machine.verdict(asked, 0.9, s.now) == []  # finished, but not 200 ms of silence yet
    assert kinds(s.feed("_")) == ["speech_stopped", "committed", "ConfirmResponse"]  # 224 ms


def test_semantic_waits_for_the_speculations_words_before_ending():
    s = semantic()
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))
    spec = s.started[0]
    s.machine.response_started(spec)
    s.machine.verdict(asked, 0.9, s.now)
    assert s.feed("____") == []  # 288 ms: the model says finished, the words are not in yet
    end = s.machine.response_transcript(spec, "What time is it?", s.now)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_semantic_words_that_cannot_end_a_sentence_wait_up_to_the_cap():
    s = semantic(turn_detection=attrs.evolve(SEMANTIC, eagerness="high"))  # cap 1 s
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))
    spec = s.started[0]
    s.machine.response_started(spec)
    s.machine.verdict(asked, 0.95, s.now)
    s.machine.response_transcript(spec, "I'd like to book a table for", s.now)
    waiting = s.feed("_" * 12)  # 544 ms
    assert "speech_stopped" not in kinds(waiting)
    rejudge = s.feed("_")  # 576 ms: 400 ms after the first judgement, judged again
    (again,) = judges(rejudge)
    assert again.silence_ms == 576
    assert s.machine.verdict(again, 0.95, s.now) == []
    assert "speech_stopped" not in kinds(s.feed("_" * 13))  # 992 ms
    end = s.feed("_")  # 1024 ms: the cap of eagerness "high"
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_semantic_an_unfinished_verdict_keeps_listening_and_judges_again():
    s = semantic(speculate_after_ms=None)  # no speculation: the model alone decides
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))  # still judged at the pause start
    assert s.started == []
    s.machine.verdict(asked, 0.2, s.now)
    assert kinds(s.feed("_" * 12)) == []  # 544 ms
    (again,) = judges(s.feed("_"))
    end = s.machine.verdict(again, 0.8, s.now)
    assert kinds(end) == ["speech_stopped", "committed", "StartResponse"]


def test_semantic_speech_resuming_drops_the_speculation_and_ignores_the_late_verdict():
    s = semantic()
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))
    assert kinds(s.feed("SS")) == ["CancelResponse"]
    assert s.machine.verdict(asked, 1.0, s.now) == []
    assert kinds(s.feed("SSS")) == []
    assert "speech_stopped" not in kinds(s.feed("_" * 10))  # no verdict for the new pause yet


def test_semantic_audio_that_stops_ends_the_turn_by_the_clock():
    s = semantic(speculate_after_ms=None)
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))
    deadline = s.machine.deadline()
    assert deadline == pytest.approx(s.now + (2000 - 160) / 1000 + tt.AUDIO_STOPPED_MARGIN_S)  # judging: the cap
    s.machine.verdict(asked, 0.9, s.now)
    deadline = s.machine.deadline()  # finished: the 200 ms of a finished turn, by the clock
    assert deadline == pytest.approx(s.now + (200 - 160) / 1000 + tt.AUDIO_STOPPED_MARGIN_S)
    assert s.machine.tick(deadline - 0.001) == []
    assert kinds(s.machine.tick(deadline)) == ["speech_stopped", "committed", "StartResponse"]


def test_semantic_without_a_model_judges_by_the_transcript_alone():
    s = semantic(end_of_turn_model=False)
    s.feed("SSSSSSSSSS")
    assert kinds(s.feed("_____")) == ["StartResponse"]  # no Judge
    spec = s.started[0]
    s.machine.response_started(spec)
    assert s.feed("___") == []  # 256 ms: the words are awaited
    end = s.machine.response_transcript(spec, "Is the sun a star?", s.now)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_semantic_a_queued_speculation_is_not_waited_for():
    s = semantic()
    s.feed("SSSSSSSSSS")
    (asked,) = judges(s.feed("_____"))
    s.machine.verdict(asked, 0.9, s.now)  # the speculation is still queued: its words may be long
    end = s.feed("__")
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_switching_between_server_and_semantic_vad():
    s = Script()
    s.machine.configure(SEMANTIC)
    assert s.machine.detector.silence_ms == 2000
    s.machine.configure(p.TurnDetection(silence_duration_ms=700))
    assert s.machine.detector.silence_ms == 700
    s.feed("SSSSSSSSSS")
    assert judges(s.feed("_" * 30)) == []


# --- transcription in pieces, cut at the speaker's pauses ------------------------------------------


def pieces_of(actions: list[tt.Action]) -> list[tt.Piece]:
    return [a.piece for a in actions if isinstance(a, tt.TranscribePiece)]


def test_pieces_are_cut_at_pauses_and_the_turn_keeps_only_the_rest():
    s = Script(transcribe_pieces=True, speculate_after_ms=160)
    s.feed("SSSSSSSSSS")
    pause = s.feed("_____")
    (first,) = pieces_of(pause)
    assert kinds(pause) == ["TranscribePiece", "StartResponse"]  # the piece first: the speculation reuses it
    assert len(first.audio) == 15 * CHUNK and first.earlier == ()
    spec = s.started[0]
    assert spec.pieces == (first,) and spec.rest == b""  # nothing left to transcribe at the pause
    s.feed("SSSSSS")  # speech resumes: the speculation goes, the piece stays
    (second,) = pieces_of(s.feed("_____"))
    assert second.earlier == (first,) and len(second.audio) == 11 * CHUNK
    assert s.started[1].pieces == (first, second)
    # Deltas in order, whatever order the words come in.
    assert s.machine.piece_transcribed(second, "four people.") == []
    deltas = s.machine.piece_transcribed(first, "A table for")
    assert [a.event.delta for a in deltas] == ["A table for", " four people."]
    end = s.feed("_" * 11)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_without_speculation_the_turn_transcribes_the_speech_after_the_last_piece():
    s = Script(transcribe_pieces=True, turn_detection=p.TurnDetection(silence_duration_ms=500))
    s.machine.speculate_after_ms = None  # (pieces still need the pause point)
    s.machine.detector.pause_ms = 160
    s.feed("SSSSSSSSSS")
    (first,) = pieces_of(s.feed("_____"))
    s.feed("SSSSSS" + "_" * 16)
    turn = s.started[0]
    assert turn.pieces[0] is first and len(turn.pieces) == 2  # the final pause cut a piece too
    assert turn.rest == b""  # no speech after the last cut
    assert len(turn.audio) == sum(len(piece.audio) for piece in turn.pieces) + 11 * CHUNK


def test_pieces_of_speech_that_makes_no_turn_are_cancelled():
    s = Script(transcribe_pieces=True)
    s.feed("SSSSSSSSSS")
    (piece,) = pieces_of(s.feed("_____"))
    actions = s.machine.clear()
    assert any(isinstance(a, tt.CancelPiece) and a.piece is piece for a in actions)


def test_the_pieces_of_an_interrupted_turn_are_cancelled_and_its_audio_carried_whole():
    s = Script(transcribe_pieces=True, turn_detection=IMMEDIATE)
    s.feed("SSSSSSSSSS")
    (piece,) = pieces_of(s.feed("_____"))
    s.feed("_" * 11)
    first = s.started[0]
    s.machine.response_started(first)
    barge = s.feed("SSSSSSS")
    assert [type(a).__name__ for a in barge if not isinstance(a, tt.Emit)][:2] == ["Interrupt", "CancelPiece"]
    s.machine.response_ended(first)
    s.feed("_____")
    assert s.started[-1].pieces == () and s.started[-1].audio.startswith(first.audio)  # transcribed whole


# --- pause and decide (the default): speech over a response is judged by its transcript --------


def test_speech_over_a_response_pauses_it_and_a_backchannel_resumes_it_and_is_no_turn():
    s = Script()
    first = confirmed_turn(s)
    speech = s.feed("SSSSSSS")
    assert kinds(speech) == ["speech_started", "Pause"] and speech[1].response is first and first.paused
    assert s.machine.judging and not first.cancelled
    (ask,) = s.feed("_____")  # the speech pauses: transcribe it so far
    assert isinstance(ask, tt.Transcribe) and ask.deadline == pytest.approx(s.now + 4.0)  # 4 s from this pause
    actions = s.machine.overlap_transcript(ask.ticket, "Mm-hmm.", s.now)
    assert kinds(actions) == ["Resume"] and actions[0].overlap == "backchannel" and not first.paused
    assert kinds(s.feed("_" * 12)) == ["speech_stopped"]  # ignored: no turn
    assert len(s.started) == 1 and s.machine.input_bytes <= (300 + 150 + 64) * 32


def test_real_words_interrupt_and_are_the_next_turn_with_their_transcript():
    s = Script()
    first = confirmed_turn(s)
    s.machine.response_transcribed(first)  # (else its audio would lead the next turn's, untranscribed)
    s.feed("S" * 60)  # 1.9 s: time enough for its six words
    (ask,) = s.feed("_____")
    actions = s.machine.overlap_transcript(ask.ticket, "Wait, stop. What time is it?", s.now)
    # Interrupted, and the speech (in its pause) answered speculatively with the known words.
    assert kinds(actions) == ["Interrupt", "StartResponse"] and first.cancelled
    second = actions[1].response
    assert second.speculative and second.text == "Wait, stop. What time is it?"
    s.machine.response_ended(first)
    assert kinds(s.feed("_" * 12)) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_a_transcript_of_a_part_of_the_speech_decides_nothing():
    s = Script()
    confirmed_turn(s)
    s.feed("SSSSSSS")
    (ask,) = s.feed("_____")
    assert kinds(s.feed("SSS")) == []  # the user speaks on (the pause had no speculation)
    assert s.machine.overlap_transcript(ask.ticket, "Okay.", s.now) == []
    (again,) = s.feed("_____")
    assert again.ticket == ask.ticket + 1 and len(again.audio) > len(ask.audio)
    assert kinds(s.machine.overlap_transcript(again.ticket, "Okay, and then?", s.now))[0] == "Interrupt"


def test_no_verdict_by_the_deadline_interrupts_even_while_audio_keeps_coming():
    s = Script(turn_detection=attrs.evolve(p.TurnDetection(), interrupt_decision_ms=500))
    first = confirmed_turn(s)
    s.feed("SSSSSSS")
    s.feed("_____")  # transcription asked for; it never comes
    actions = s.feed("S" * 20)  # 640 ms more speech
    assert "Interrupt" in kinds(actions) and first.cancelled and not s.machine.judging
    # The speech goes on as the user's turn, committed when it ends.
    s.machine.response_ended(first)
    assert kinds(s.feed("_" * 16))[-2:] == ["committed", "ConfirmResponse"]  # (speculated in its pause)


def test_the_deadline_passes_by_the_clock_when_the_audio_stops():
    s = Script(turn_detection=attrs.evolve(p.TurnDetection(), interrupt_decision_ms=500), speculate_after_ms=None)
    first = confirmed_turn(s)
    s.feed("SSSSSSS")
    assert s.machine.deadline() == pytest.approx(s.now + 0.5, abs=0.04)
    assert s.machine.tick(s.now + 0.1) == []
    assert kinds(s.machine.tick(s.machine.deadline())) == ["Interrupt"] and first.cancelled


def test_more_words_than_the_speech_could_hold_are_a_hallucination_and_resume():
    s = Script()
    first = confirmed_turn(s)
    s.feed("S" * 19)  # 0.6 s of voiced sound
    (ask,) = s.feed("_____")
    actions = s.machine.overlap_transcript(ask.ticket, "And And And And And And And And And", s.now)
    assert kinds(actions) == ["Resume"] and actions[0].overlap == "noise" and not first.cancelled


def test_speech_over_a_response_cancelled_before_it_could_pause_it_is_a_turn():
    # (The soak found it: response.cancel right after the speech began, then no turn at all.)
    s = Script()
    first = confirmed_turn(s)
    s.feed("SSSSS")  # speech starts over the response...
    s.machine.cancel_response()  # ...which the client cancels
    s.machine.response_ended(first)
    assert kinds(s.feed("SSSS")) == []  # long enough to barge in: nothing to pause
    assert kinds(s.feed("_" * 16))[-2:] == ["committed", "ConfirmResponse"]


def scored(actions: list[tt.Action]) -> list[tt.ScoreWords]:
    return [a for a in actions if isinstance(a, tt.ScoreWords)]


def speech_then_pause(s: Script, verdict: float, speech: str = "SSSSSSSSSS") -> tt.Response:
    """Speech, then 160 ms of silence: the speculation starts and the audio model says ``verdict``."""
    s.feed(speech)
    (asked,) = judges(s.feed("_____"))
    spec = s.started[-1]
    s.machine.response_started(spec)
    assert s.machine.verdict(asked, verdict, s.now) == []
    return spec


def test_semantic_the_words_are_scored_and_a_low_score_waits_up_to_the_cap():
    s = semantic(turn_detection=attrs.evolve(SEMANTIC, eagerness="high"), text_end_of_turn_model=True)
    spec = speech_then_pause(s, 0.95)
    (score,) = scored(s.machine.response_transcript(spec, "Call my sister until her that.", s.now))
    assert score.text == "Call my sister until her that."
    assert s.feed("____") == []  # 288 ms: finished by the audio, but the score is not in yet
    assert s.machine.deadline() == pytest.approx(s.now + (1000 - 288) / 1000 + tt.AUDIO_STOPPED_MARGIN_S)
    assert s.machine.words_scored(score, 0.004, s.now) == []  # unfinished words: keep listening
    assert "speech_stopped" not in kinds(s.feed("_" * 22))  # 992 ms (judged again on the way)
    assert kinds(s.feed("_"))[-3:] == ["speech_stopped", "committed", "ConfirmResponse"]  # the cap


def test_semantic_a_high_score_ends_the_turn_when_it_comes():
    s = semantic(text_end_of_turn_model=True)
    spec = speech_then_pause(s, 0.9)
    (score,) = scored(s.machine.response_transcript(spec, "What time is it?", s.now))
    assert s.feed("__") == []  # 224 ms
    end = s.machine.words_scored(score, 0.8, s.now)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_semantic_words_the_rule_already_holds_or_a_failed_score_or_a_stale_one():
    s = semantic(text_end_of_turn_model=True)
    spec = speech_then_pause(s, 0.9)
    # Words that cannot end a sentence are not scored: the rule holds them already.
    assert scored(s.machine.response_transcript(spec, "a table for", s.now)) == []
    # Speech resumes: the next pause's score is asked anew and the old one is ignored.
    spec = speech_then_pause(s, 0.9, speech="SSS")
    (score,) = scored(s.machine.response_transcript(spec, "a table for four.", s.now))
    assert s.machine.words_scored(tt.ScoreWords("a table for four."), 0.0, s.now) == []  # not the one asked
    # A failed score (None) leaves the words to the rule and the audio verdict: the turn ends.
    s.feed("__")
    end = s.machine.words_scored(score, None, s.now)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]


def test_semantic_without_a_text_model_nothing_is_scored():
    s = semantic()
    spec = speech_then_pause(s, 0.9)
    s.feed("__")
    end = s.machine.response_transcript(spec, "Call my sister until her that.", s.now)
    assert kinds(end) == ["speech_stopped", "committed", "ConfirmResponse"]  # cut: no text model

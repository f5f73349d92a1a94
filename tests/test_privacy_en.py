"""English personal data with NER on by default: the recognizers, the labelled corpus and the
evaluation that compares them with Presidio as it ships."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.privacy import build_analyzer, ner_languages
from pipeline.privacy.corpus_en import SOURCES, LabelledText, english_texts
from pipeline.privacy.evaluate import (
    analyzer_detector,
    presidio_stock,
    pushpilot_detector,
    read_labelled,
    score_detector,
    token_counts,
)
from pipeline.privacy.text import find_entities_batch

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))
HANDWRITTEN = Path(__file__).with_name("privacy_en_handwritten.txt")
_MARK = re.compile(r"\[\[(.+?)\|([A-Z_]+)\]\]")


def marked_texts(path: Path) -> list[LabelledText]:
    """Texts written with their personal data marked [[value|LABEL]], one per line."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        parts, spans, at, last = [], [], 0, 0
        for mark in _MARK.finditer(line):
            parts.append(line[last : mark.start()])
            at += mark.start() - last
            value, label = mark.groups()
            spans.append((at, at + len(value), label))
            parts.append(value)
            at += len(value)
            last = mark.end()
        parts.append(line[last:])
        items.append(LabelledText("".join(parts), tuple(spans), "handwritten"))
    return items


@pytest.fixture(scope="module")
def analyzer():
    return build_analyzer(None, languages=("en",))


def spans(analyzer, text: str) -> set[tuple[str, str]]:
    [found] = find_entities_batch([text], analyzer)
    return {(s.entity_type, text[s.start : s.end]) for s in found}


def test_english_ner_is_on_by_default(analyzer):
    assert ner_languages(analyzer) == ["en"]
    assert ("PERSON", "Katherine Reid") in spans(analyzer, "The refund went to Katherine Reid yesterday.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ship it to 221B Baker Street, London NW1 6XE please.",
         ("ADDRESS", "221B Baker Street, London NW1 6XE")),
        ("New address: 84141 Hernandez Way Apt. 12, Davisshire, OR 97201.",
         ("ADDRESS", "84141 Hernandez Way Apt. 12, Davisshire, OR 97201")),
        ("shipped to 1150 W Broadway, Vancouver BC V6H 1G8", ("ADDRESS", "1150 W Broadway, Vancouver BC V6H 1G8")),
        ("card 2720 4477 9937 9167 was declined", ("CREDIT_CARD", "2720 4477 9937 9167")),
        ("call me on (267)202-3410x5679 today", ("PHONE_NUMBER", "(267)202-3410x5679")),
        ("office line +44(0)141 496 0194", ("PHONE_NUMBER", "+44(0)141 496 0194")),
        ("reach me at 0469-582-669", ("PHONE_NUMBER", "0469-582-669")),
        ("your passport number J11578156 is on file", ("US_PASSPORT", "J11578156")),
        ("Driver's license: K869-7127-8898 (GA)", ("US_DRIVER_LICENSE", "K869-7127-8898")),
        ("she moved to Peru at the age of 54.", ("AGE", "54")),
        ("Invoice to Fagan and Sons by Friday.", ("ORGANIZATION", "Fagan and Sons")),
        ("DOB: 05/27/1971", ("DATE_TIME", "05/27/1971")),
    ],
)
def test_values_spacy_misses_are_found_by_shape_or_cue(analyzer, text, expected):
    assert expected in spans(analyzer, text)


@pytest.mark.parametrize(
    "text",
    [
        "Order ORD-83246820 shipped on Saturday; tracking 1Z1234A123456789. Total $47.48.",
        "Release 7.12.18 fixes the login loop reported through the app.",
        "Dear Sir or Madam, the account moves from Thursday.",
        "Ticket 684991 closed after 47 hours.",
        "Reminder: the stand-up moved to 4:15 pm on Monday.",
    ],
)
def test_look_alikes_and_field_words_are_left_alone(analyzer, text):
    assert spans(analyzer, text) == set()


def test_a_bare_digit_run_is_a_phone_only_after_a_cue(analyzer):
    assert ("PHONE_NUMBER", "0289018522") in spans(analyzer, "call back on 0289018522")
    assert not any(t == "PHONE_NUMBER" for t, _ in spans(analyzer, "Batch 0289018522 was packed."))


def test_corpus_is_the_same_for_a_seed_and_its_spans_hold_the_values():
    first, again, other = english_texts(3, 200), english_texts(3, 200), english_texts(4, 200)
    assert first == again and first != other
    assert {item.source for item in first} == set(SOURCES)
    for item in first:
        for start, end, label in item.spans:
            value = item.text[start:end]
            assert value and value == value.strip(), (label, value)
        if item.source == "plain":
            assert item.spans == ()
        else:
            assert item.spans
    share_plain = sum(item.source == "plain" for item in english_texts(5, 2000)) / 2000
    assert 0.10 < share_plain < 0.20


def test_corpus_refuses_unknown_sources():
    with pytest.raises(ValueError, match="unknown"):
        english_texts(0, 10, sources=("support", "tweets"))
    assert {i.source for i in english_texts(0, 20, sources=("chat",))} == {"chat"}


def test_token_counts_are_untyped_and_per_token():
    item = LabelledText("Call Ann Lee on 555 0100 now", ((5, 12, "PERSON"), (16, 24, "PHONE_NUMBER")), "t")
    # "Ann" found (typed anything), "Lee" missed, phone found, "now" flagged wrongly.
    tp, fp, fn, gold, hit = token_counts(item, [(5, 8), (16, 24), (25, 28)])
    assert (tp, fp, fn) == (3, 1, 1)
    assert gold == {"PERSON": 2, "PHONE_NUMBER": 2} and hit == {"PERSON": 1, "PHONE_NUMBER": 2}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 1"),
        ('{"spans": []}', "line 1"),
        ('{"text": "abc", "spans": [[0, 9, "PERSON"]]}', "line 1"),
        ('{"text": "abc", "spans": [[2, 1, "PERSON"]]}', "line 1"),
    ],
)
def test_bad_labelled_lines_are_refused_with_their_line(line, problem):
    with pytest.raises(ValueError, match=problem):
        read_labelled([line])


@pytest.mark.slow
def test_ours_beats_presidio_as_it_ships_on_texts_of_another_seed(analyzer):
    """The floor the issue asks for, on texts generated apart from the ones rules were read on."""
    items = english_texts(11, 300)
    ours = score_detector(items, pushpilot_detector(analyzer))
    model = analyzer.nlp_engine.models[0]["model_name"]
    stock = score_detector(items, analyzer_detector(presidio_stock(model)))
    assert ours.f2 >= 0.85 and ours.f2 > stock.f2 + 0.05, (ours.f2, stock.f2)
    assert ours.worst_source_f2() >= 0.80


@pytest.mark.slow
def test_ours_beats_presidio_as_it_ships_on_texts_written_by_hand(analyzer):
    """Other registers than the generator's (bookings, HR, health, posts), marked by hand."""
    items = marked_texts(HANDWRITTEN)
    assert len(items) == 40 and sum(not i.spans for i in items) == 6
    ours = score_detector(items, pushpilot_detector(analyzer))
    model = analyzer.nlp_engine.models[0]["model_name"]
    stock = score_detector(items, analyzer_detector(presidio_stock(model)))
    print(f"\nhandwritten: ours P {ours.precision:.3f} R {ours.recall:.3f} F2 {ours.f2:.3f}; "
          f"stock Presidio + spaCy F2 {stock.f2:.3f}")
    assert ours.f2 >= 0.85 and ours.f2 > stock.f2, (ours.f2, stock.f2)


def test_corpus_and_eval_commands_write_and_score_a_labelled_file(tmp_path: Path):
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state")}
    out = tmp_path / "texts.jsonl"

    def pushpilot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PUSHPILOT, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    made = pushpilot("privacy", "corpus", "--out", str(out), "--texts", "60", "--seed", "2")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["texts"] == 60
    assert read_labelled(out.read_text(encoding="utf-8").splitlines()) == english_texts(2, 60)

    scored = pushpilot("privacy", "eval", "--input", str(out))
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout.strip().splitlines()[-1])
    assert report["texts"] == 60
    assert set(report["detectors"]) == {"pushpilot", "pushpilot, NER off", "presidio patterns",
                                        "presidio + spaCy"}
    assert "presidio + spaCy" in scored.stdout and "F2" in scored.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "spans": []}\n{"text": 3}\n', encoding="utf-8")
    refused = pushpilot("privacy", "eval", "--input", str(bad))
    assert refused.returncode != 0 and "line 2" in refused.stderr
    assert pushpilot("privacy", "corpus", "--out", str(tmp_path / "x.txt")).returncode != 0


def test_eval_in_chinese_reports_recall_per_type_beside_presidio(tmp_path: Path):
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state")}
    proc = subprocess.run([PUSHPILOT, "privacy", "eval", "--language", "zh", "--texts", "80"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = report["detectors"]["pushpilot"]["recall"]
    assert ours["EMAIL_ADDRESS"] >= 0.95 and ours["PHONE_NUMBER (mobile)"] >= 0.95
    assert "presidio patterns" in report["detectors"]
    wrong = subprocess.run([PUSHPILOT, "privacy", "eval", "--language", "fr"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "--language" in wrong.stderr

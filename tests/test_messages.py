"""The parts of a newsgroup message that the models read (pipeline/messages.py)."""
from __future__ import annotations

from pipeline.messages import content, subject
from pipeline.models import weight_subject

MESSAGE = (
    "From: ann@example.org (Ann)\nSubject: Re: RE: Orbit of the shuttle\nOrganization: NASA\nLines: 9\n\n"
    "In article <1993Apr1.1@example.org> bob@example.org (Bob) writes:\n"
    "> Subject: the quoted one\n> The shuttle flies low.\n"
    "| also quoted\n"
    "It flies at 300 km.\n\nAnn\n"
)


def test_subject_is_read_from_the_header_block_only():
    assert subject(MESSAGE) == " Re: RE: Orbit of the shuttle"
    assert subject("From: a\n\nSubject: in the body\n") is None
    assert subject("Subject: no body") == " no body"
    assert subject("") is None


def test_content_is_the_subject_and_the_own_words_of_the_body():
    assert content(MESSAGE) == "Orbit of the shuttle\nIt flies at 300 km.\n\nAnn"
    assert content("Subject: only a header") == "only a header"  # no blank line: no body
    assert content("From: a\n\n> all quoted\n") == ""
    assert content("") == ""


def test_a_text_without_a_header_block_is_all_body():
    """prepare.remove: headers leaves the body alone: its first paragraph is kept."""
    assert content("First paragraph.\n\nSecond one.") == "First paragraph.\n\nSecond one."
    assert content("    indented: table\n\nSecond one.") == "indented: table\n\nSecond one."
    assert content("Archive-name: faq\nLast-modified: 1993\n\nThe FAQ.") == "The FAQ."


def test_the_tfidf_models_repeat_the_same_subject():
    assert weight_subject(MESSAGE, 3) == (MESSAGE + "\n Re: RE: Orbit of the shuttle" * 2).lower()
    assert weight_subject(MESSAGE, 1) == MESSAGE.lower()

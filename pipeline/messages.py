"""The parts of a newsgroup message: the header block (up to the first blank line), its Subject
line, and the body with the quoted text of earlier messages."""
from __future__ import annotations

import re

_SUBJECT = re.compile(r"^Subject:(.*)$", re.MULTILINE)
_REPLY = re.compile(r"^(re:\s*)+", re.IGNORECASE)
_HEADER = re.compile(r"^[^\s:]+:")  # "Name: value"; a line starting with a space or tab continues it


def subject(text: str) -> str | None:
    """The Subject header as written (without "Subject:"), searched in the header block only,
    not in quoted or forwarded text; None without one."""
    end = text.find("\n\n")
    match = _SUBJECT.search(text, 0, end if end >= 0 else len(text))
    return match.group(1) if match else None


def is_header_block(block: str) -> bool:
    """Header lines ("Name: value"), perhaps continued on lines starting with a space or tab."""
    headers = [(bool(_HEADER.match(line)), line) for line in block.splitlines()]
    return any(h for h, _ in headers) and all(h or line[:1] in (" ", "\t") for h, line in headers)


def content(text: str) -> str:
    """What the message says in its own words: the subject (without "Re:") and the body, without
    the other header lines and without quoted text and its attribution lines ("In article <...>
    ... writes:", lines starting with ">" or "|", as scikit-learn's remove=("quotes",) finds them).
    A sentence encoder reads only the start of a document: in the raw message most of that is
    addresses and host names. A text without a header block (prepare.remove: headers) is all body."""
    from sklearn.datasets._twenty_newsgroups import strip_newsgroup_quoting

    head, _, body = text.partition("\n\n")
    if not is_header_block(head):
        head, body = "", text
    title = _REPLY.sub("", (subject(head) or "").strip())
    return f"{title}\n{strip_newsgroup_quoting(body).strip()}".strip()

"""The repository stands on its own: no tracked file points a reader at something it lacks.

Facts about the reference implementation live in docs/reference.md and published figures in
docs/anchors.md. A bare name of such a document (without ``docs/``), a ticket number, or a
design note the repository does not hold sends a reader nowhere, so each fails this test with
the file and line to fix.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# This file spells out examples of what it forbids, so it does not scan itself.
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# A document name not preceded by a path or a word character; "docs/" before it is checked
# separately so that any other folder (which holds no such file) is reported too.
BARE_DOCUMENT = re.compile(r"(?<![\w.-])(?:reference|anchors|data_sources)\.md(?!\w)")
# A ticket by number: the word followed by a number, or a hash and digits standing alone
# (a hex colour such as "#1f77b4" continues with letters and is not matched).
TICKET = re.compile(r"\bissues?\s*#?\s*\d+|(?<![\w&/#])#\d+(?![\w-])", re.IGNORECASE)
DESIGN_NOTE = re.compile(r"\bdesign\s+card", re.IGNORECASE)
DOCS_LINK = re.compile(r"(?<![\w.-])docs/([\w-]+\.md)")


def tracked_text_files() -> list[tuple[str, str]]:
    """(path, text) of every tracked file that is text; binary files are skipped."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in listing.decode().split("\0"):
        path = ROOT / name
        if not name or name == THIS_FILE or not path.is_file():  # deleted in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def offending_lines(check) -> list[str]:
    found = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if check(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def _bare_document(line: str) -> bool:
    return any(line[max(0, m.start() - 5):m.start()] != "docs/"
               for m in BARE_DOCUMENT.finditer(line))


def test_documents_are_named_by_their_place_in_docs():
    found = offending_lines(_bare_document)
    assert not found, "name the document by its path in docs/:\n" + "\n".join(found)


def test_named_docs_exist():
    found = offending_lines(lambda line: any(not (ROOT / "docs" / m.group(1)).is_file()
                                             for m in DOCS_LINK.finditer(line)))
    assert not found, "these lines name a file docs/ does not hold:\n" + "\n".join(found)


def test_no_ticket_numbers():
    found = offending_lines(lambda line: TICKET.search(line) is not None)
    assert not found, ("say what is meant instead of a ticket number (readers cannot see the "
                       "tracker):\n" + "\n".join(found))


def test_no_design_notes_outside_the_repository():
    found = offending_lines(lambda line: DESIGN_NOTE.search(line) is not None)
    assert not found, "give the reason itself, not a document the repository lacks:\n" + \
        "\n".join(found)


@pytest.mark.parametrize("line, bad", [
    ("see reference.md 2.1", True),
    ("see docs/reference.md 2.1", False),
    ("see experiments/anchors.md", True),
    ("the data_sources.md file", True),
    ("fixed in issue 6", True),
    ("Issue 10's goal", True),
    ("closes #12", True),
    ('color="#1f77b4"', False),
    ("# 1 is a comment", False),
    ("the design card says", True),
    ("anchors.csv and its markdown twin", False),
])
def test_the_patterns_catch_what_they_should(line, bad):
    flagged = (_bare_document(line) or TICKET.search(line) is not None
               or DESIGN_NOTE.search(line) is not None)
    assert flagged == bad

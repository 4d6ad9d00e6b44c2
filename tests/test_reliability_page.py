"""docs/RELIABILITY.md names the tests behind each promise: every one it names must exist."""

import os
import re

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "RELIABILITY.md")
TESTS = os.path.dirname(__file__)


def test_every_test_the_page_names_exists():
    page = open(DOCS).read()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", page))
    files = set(re.findall(r"`(test_[a-z0-9_]+\.py)`", page))
    defined = set()
    for name in os.listdir(TESTS):
        if name.startswith("test_") and name.endswith(".py"):
            defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", open(os.path.join(TESTS, name)).read(), re.M))
    assert named, "the page names no tests"
    assert named - {f[:-3] for f in files} <= defined, sorted(named - {f[:-3] for f in files} - defined)
    assert all(os.path.exists(os.path.join(TESTS, f)) for f in files)

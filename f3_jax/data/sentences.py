"""A seeded generator of varied English sentences for the demo corpus.

Numbers, prices, dates, times, phone-like digit strings and short everyday phrases, one to three
clauses per utterance so that lengths vary (about 2 to 10 seconds of speech). Transcripts are
unique: a repeat is drawn again, so no two utterances share a transcript by accident.
"""

from __future__ import annotations

import random

_NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Frank",
    "Grace",
    "Hugo",
    "Iris",
    "Jamal",
    "Kate",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Sam",
    "Tara",
    "Victor",
]
_ITEMS = [
    "apples",
    "batteries",
    "books",
    "candles",
    "chairs",
    "cups",
    "envelopes",
    "eggs",
    "lamps",
    "lemons",
    "notebooks",
    "oranges",
    "pencils",
    "plates",
    "stamps",
    "towels",
]
_PLACES = [
    "the library",
    "the station",
    "the bakery",
    "the office",
    "the park",
    "the museum",
    "the pharmacy",
    "the post office",
    "the market",
    "the school",
    "the harbor",
]
_CITIES = [
    "Boston",
    "Denver",
    "Chicago",
    "Seattle",
    "Portland",
    "Austin",
    "Phoenix",
    "Atlanta",
    "Detroit",
    "Miami",
]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_PHRASES = [
    "Could you close the window, please?",
    "I think it is going to rain later.",
    "Let's meet in front of {place}.",
    "Thank you so much for your help.",
    "Please remember to bring your umbrella.",
    "{name} will call you back this evening.",
    "The coffee here is surprisingly good.",
    "Turn left after the second traffic light.",
    "Do you know where I left my keys?",
    "We should leave a little earlier tomorrow.",
    "{name} is waiting for us at {place}.",
    "The kids are playing in the garden.",
    "Can I pay with a card?",
    "That sounds like a great idea.",
    "Sorry, I did not catch your name.",
    "The soup needs a little more salt.",
]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _time(r: random.Random) -> str:
    return f"{r.randint(1, 12)}:{r.choice([0, 5, 10, 15, 20, 30, 40, 45, 50]):02d} " + r.choice(
        ["AM", "PM"]
    )


def _date(r: random.Random) -> str:
    return f"{r.choice(_MONTHS)} {_ordinal(r.randint(1, 28))}, {r.randint(1950, 2030)}"


_TEMPLATES = [
    lambda r: f"The train to {r.choice(_CITIES)} leaves at {_time(r)}.",
    lambda r: f"I bought {r.randint(2, 99)} {r.choice(_ITEMS)} for {r.randint(1, 250)} dollars.",
    lambda r: f"{r.choice(_NAMES)} was born on {_date(r)}.",
    lambda r: f"Our meeting moved to {r.choice(_DAYS)} at {_time(r)}.",
    lambda r: f"The total comes to {r.randint(1, 999)} dollars and {r.randint(1, 99)} cents.",
    lambda r: (
        f"Please call me back at {r.randint(200, 999)} {r.randint(100, 999)} "
        f"{r.randint(1000, 9999)}."
    ),
    lambda r: f"There are {r.randint(3, 5000)} people waiting at {r.choice(_PLACES)}.",
    lambda r: (
        f"The package should arrive on {r.choice(_DAYS)}, {r.choice(_MONTHS)} "
        f"{_ordinal(r.randint(1, 28))}."
    ),
    lambda r: (
        f"It is {r.randint(-10, 40)} degrees outside and the wind is at "
        f"{r.randint(2, 60)} kilometers per hour."
    ),
    lambda r: f"Room {r.randint(100, 999)} is on floor number {r.randint(1, 30)}.",
    lambda r: (
        f"{r.choice(_NAMES)} ran {r.randint(2, 42)} kilometers in {r.randint(10, 240)} minutes."
    ),
    lambda r: f"The store at {r.choice(_PLACES)} opens at {_time(r)} on {r.choice(_DAYS)}s.",
    lambda r: f"In {r.randint(1900, 2030)}, the town had {r.randint(1000, 900000)} residents.",
    lambda r: r.choice(_PHRASES).format(name=r.choice(_NAMES), place=r.choice(_PLACES)),
    lambda r: r.choice(_PHRASES).format(name=r.choice(_NAMES), place=r.choice(_PLACES)),
    lambda r: r.choice(_PHRASES).format(name=r.choice(_NAMES), place=r.choice(_PLACES)),
]


def sentence(r: random.Random) -> str:
    """One utterance: 1 to 3 clauses."""
    n = r.choices([1, 2, 3], weights=[4, 4, 2])[0]
    return " ".join(r.choice(_TEMPLATES)(r) for _ in range(n))


def unique_sentences(n: int, seed: int) -> list[str]:
    """n distinct transcripts, the same for the same seed."""
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        s = sentence(r)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out

"""A small offline context for the examples: filler prose with a few facts to find."""
import random

FACTS = {"Lisbon": "4817", "Osaka": "2093", "Quito": "7351"}
FILLER = [
    "The river bends twice before it reaches the old mill.",
    "Most of the orchard was planted in the spring after the flood.",
    "A narrow road climbs from the harbour to the upper town.",
    "The library keeps its oldest maps in a cool, dry room.",
    "Every market day the square fills with carts before dawn.",
    "The bridge was rebuilt in stone when the wooden one burned.",
]


def context(sentences: int = 40, seed: int = 0) -> str:
    """`sentences` filler sentences with each fact placed at a random point."""
    rng = random.Random(seed)
    lines = [rng.choice(FILLER) for _ in range(sentences)]
    for city, number in FACTS.items():
        lines.insert(rng.randrange(len(lines)), f"The special magic number for {city} is {number}.")
    return " ".join(lines)


def question(city: str) -> str:
    return f"\nQuestion: What is the special magic number for {city}? Answer: The special magic number for {city} is"

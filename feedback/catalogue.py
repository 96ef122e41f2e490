"""A synthetic product catalogue and questions about it whose answers are known.

The loop's demonstration task: a seeded catalogue of products (name, SKU, price, colour, size,
material, stock), and questions a customer asks about one product. Each prompt carries the
catalogue entries of the asked product and of a few others (a system message), so the answer can
be read from the prompt; the reference answer is a fixed sentence or two naming the fact, long
enough that prompt and answer pass the curation's 50-token length filter.

The task metric is :func:`correct`: the asked fact is present in an answer, and no other listed
product's value of the same attribute is. :func:`parse_question` recovers the question (fact and
distractors) from the prompt alone, so answers from live traffic can be checked without knowing
the seed that made them.

The golden set is frozen: ``python -m feedback.catalogue PATH`` writes it (default
``evaluation/golden/catalogue.jsonl``); its references come from the catalogue, never from a model.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Attribute = Literal["price", "colour", "size", "material", "stock"]
ATTRIBUTES: tuple[Attribute, ...] = ("price", "colour", "size", "material", "stock")

GOLDEN_SEED = 20261129  # the golden set's catalogue; training and demo traffic use other seeds
GOLDEN_COUNT = 40
GOLDEN_PATH = Path("evaluation/golden/catalogue.jsonl")

_ADJECTIVES = (
    "Aurora", "Boreal", "Cascade", "Drift", "Ember", "Fjord", "Granite", "Harbor", "Ivy", "Juniper",
    "Kestrel", "Lumen", "Meadow", "Nimbus", "Orchard", "Pioneer", "Quarry", "Ridge", "Summit", "Tundra",
)  # fmt: skip
_NOUNS = (
    "Desk Lamp", "Backpack", "Water Bottle", "Rain Jacket", "Coffee Mug", "Knit Scarf", "Camp Stool",
    "Notebook", "Cutting Board", "Throw Blanket", "Bike Bell", "Tea Kettle", "Plant Pot", "Wall Clock",
    "Travel Pillow", "Tote Bag",
)  # fmt: skip
# No value contains another, and no product name contains a value, as a whole word: finding one in
# an answer never finds a second.
_COLOURS = ("slate grey", "forest green", "navy blue", "coral", "ivory", "charcoal", "mustard", "burgundy")
_SIZES = ("compact", "standard", "oversized", "slim", "family")
_MATERIALS = ("oak", "walnut", "steel", "linen", "wool", "leather", "bamboo", "ceramic")

SYSTEM = (
    "You are the shop assistant of Flywheel Outfitters. Answer the customer's question from the "
    "catalogue entries below in one or two full sentences.\n\nCatalogue:\n"
)
_CARD = "- SKU {sku}: {name}; price {price}; colour {colour}; size {size}; material {material}; stock {stock} units"
_CARD_RE = re.compile(
    r"^- SKU (?P<sku>\S+): (?P<name>[^;]+); price (?P<price>\$\d+\.\d\d); colour (?P<colour>[^;]+); "
    r"size (?P<size>[^;]+); material (?P<material>[^;]+); stock (?P<stock>\d+) units$"
)
QUESTIONS: Mapping[Attribute, tuple[str, ...]] = {
    "price": ("How much does the {name} cost?", "What is the price of the {name}?"),
    "colour": ("What colour is the {name}?", "Which colour does the {name} come in?"),
    "size": ("What size is the {name}?", "Which size is the {name} sold in?"),
    "material": ("What is the {name} made of?", "Which material is the {name} made from?"),
    "stock": ("How many {name} units are in stock?", "How many of the {name} do you have in stock?"),
}
ANSWERS: Mapping[Attribute, str] = {
    "price": "The {name} costs {price}. That is the catalogue price for SKU {sku}.",
    "colour": "The {name} comes in {colour}. That is the colour listed for SKU {sku}.",
    "size": "The {name} is sold in the {size} size. That is the size listed for SKU {sku}.",
    "material": "The {name} is made of {material}. That is the material listed for SKU {sku}.",
    "stock": "We have {stock} units of the {name} in stock. That is the count listed for SKU {sku}.",
}


@dataclass(frozen=True)
class Product:
    """One catalogue entry."""

    sku: str
    name: str
    price: str  # "$34.99"
    colour: str
    size: str
    material: str
    stock: int

    def value(self, attribute: Attribute) -> str:
        """The product's value of ``attribute`` as written in the catalogue."""
        return str(getattr(self, attribute))


@dataclass(frozen=True)
class Question:
    """A customer question about one product, with its prompt and reference answer."""

    id: str
    attribute: Attribute
    product: Product
    messages: tuple[Mapping[str, str], ...]
    answer: str  # the reference: a full sentence or two stating the fact
    distractors: tuple[str, ...]  # other listed products' values of the same attribute

    @property
    def completion(self) -> str:
        """The reference answer, under the dataset row's name for it."""
        return self.answer

    @property
    def fact(self) -> str:
        """The key fact a correct answer states."""
        return self.product.value(self.attribute)

    def example(self, source: str = "catalogue") -> dict[str, object]:
        """The question as one dataset row (``id``, ``messages``, ``completion``, ``source``)."""
        return {
            "id": self.id,
            "messages": [dict(m) for m in self.messages],
            "completion": self.answer,
            "source": source,
        }


def build_catalogue(seed: int, size: int = 60) -> list[Product]:
    """``size`` products with distinct names, drawn from ``seed`` (the same seed, the same catalogue)."""
    rng = random.Random(seed)
    names = [f"{adjective} {noun}" for adjective in _ADJECTIVES for noun in _NOUNS]
    if not 1 <= size <= len(names):
        raise ValueError(f"size must be in 1..{len(names)}, got {size}")
    products = []
    for index, name in enumerate(rng.sample(names, size)):
        cents = rng.choice((0, 49, 95, 99))
        products.append(
            Product(
                sku=f"FW-{1000 + rng.randrange(9000)}-{index:02d}",
                name=name,
                price=f"${rng.randint(4, 399)}.{cents:02d}",
                colour=rng.choice(_COLOURS),
                size=rng.choice(_SIZES),
                material=rng.choice(_MATERIALS),
                stock=rng.randint(0, 250),
            )
        )
    return products


def make_questions(
    products: Sequence[Product], seed: int, count: int, *, id_prefix: str = "catalogue", listed: int = 3
) -> list[Question]:
    """``count`` questions, each about one product, with ``listed`` catalogue entries in its prompt."""
    if not 1 <= listed <= len(products):
        raise ValueError(f"listed must be in 1..{len(products)}, got {listed}")
    rng = random.Random(seed)
    questions = []
    for index in range(count):
        shown = rng.sample(list(products), listed)
        asked, attribute = shown[0], rng.choice(ATTRIBUTES)
        rng.shuffle(shown)
        system = SYSTEM + "\n".join(_CARD.format(**vars(p)) for p in shown)
        user = rng.choice(QUESTIONS[attribute]).format(name=asked.name)
        questions.append(
            Question(
                id=f"{id_prefix}-{seed}-{index:04d}",
                attribute=attribute,
                product=asked,
                messages=({"role": "system", "content": system}, {"role": "user", "content": user}),
                answer=ANSWERS[attribute].format(**vars(asked)),
                distractors=_distractors(shown, asked, attribute),
            )
        )
    return questions


def parse_question(messages: Sequence[Mapping[str, str]]) -> Question | None:
    """The question a catalogue prompt asks (fact and distractors), or None for any other prompt."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    if not system.startswith(SYSTEM):
        return None
    shown = []
    for line in system[len(SYSTEM) :].splitlines():
        match = _CARD_RE.match(line)
        if match is None:
            return None
        fields = match.groupdict()
        shown.append(Product(**{**fields, "stock": int(fields["stock"])}))  # type: ignore[arg-type]
    for product in shown:
        for attribute, templates in QUESTIONS.items():
            if user in (template.format(name=product.name) for template in templates):
                return Question(
                    id="",
                    attribute=attribute,
                    product=product,
                    messages=tuple(messages),
                    answer=ANSWERS[attribute].format(**vars(product)),
                    distractors=_distractors(shown, product, attribute),
                )
    return None


def correct(question: Question, answer: str) -> bool:
    """Whether ``answer`` states the asked fact and no other listed product's value of it."""
    if not _mentions(answer, question.attribute, question.fact):
        return False
    return not any(_mentions(answer, question.attribute, value) for value in question.distractors)


def golden_examples() -> list[dict[str, object]]:
    """The frozen golden set's rows (source "golden"): references from the catalogue."""
    products = build_catalogue(GOLDEN_SEED)
    return [q.example("golden") for q in make_questions(products, GOLDEN_SEED, GOLDEN_COUNT, id_prefix="golden")]


def write_jsonl(rows: Sequence[Mapping[str, object]], path: Path) -> None:
    """One JSON object per line, keys sorted, so the same rows always give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


def _distractors(shown: Sequence[Product], asked: Product, attribute: Attribute) -> tuple[str, ...]:
    values = {p.value(attribute) for p in shown if p is not asked and p.value(attribute) != asked.value(attribute)}
    return tuple(sorted(values))


def _mentions(answer: str, attribute: Attribute, value: str) -> bool:
    if attribute in ("price", "stock"):
        # A number counts only whole: 34.99 is not in 134.99, and 17 is not in 17.5 or FW-1017.
        number = re.escape(value.lstrip("$"))
        return re.search(rf"(?<![\d.,-]){number}(?!\d|[.,]\d)", answer) is not None
    words = r"\s+".join(re.escape(word) for word in value.split())
    return re.search(rf"\b{words}\b", answer, flags=re.IGNORECASE) is not None


def main(argv: Sequence[str] | None = None) -> None:
    """Write the golden set: ``python -m feedback.catalogue [PATH]``."""
    parser = argparse.ArgumentParser(description="Write the frozen catalogue golden set as JSONL.")
    parser.add_argument("path", nargs="?", type=Path, default=GOLDEN_PATH, help=f"output file (default {GOLDEN_PATH})")
    path = parser.parse_args(argv).path
    write_jsonl(golden_examples(), path)
    print(f"wrote {GOLDEN_COUNT} golden examples to {path}")


if __name__ == "__main__":
    main()

"""Generate the JSON-extraction dataset: order messages → JSON with fixed keys.

Training and held-out lines draw from disjoint pools of names, cities, products, quantities and
phrasings, so held-out accuracy measures generalisation, not memory.

    python examples/json_extraction/generate.py --out data/json --train 300 --heldout 100
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = ('Extract the order from the customer message. Reply with JSON only, with exactly the keys '
          '"name", "city", "product" and "quantity" (an integer).')

FIRST = {
    "train": ["Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
              "Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
              "Uma", "Victor", "Wanda", "Xavier", "Yara", "Zoltan", "Amara", "Bilal", "Carmen", "Diego"],
    "heldout": ["Anouk", "Bartek", "Celine", "Dariusz", "Esme", "Florin", "Gwen", "Henrik", "Ilse",
                "Jovan", "Kirsi", "Luca", "Maren", "Nikos", "Olga", "Pavel", "Renata", "Soren"],
}
LAST = {
    "train": ["Martin", "Rossi", "Nakamura", "Okafor", "Schmidt", "Dubois", "Kowalski", "Silva",
              "Hansen", "Novak", "Patel", "Moreau", "Fischer", "Costa", "Lindqvist", "Haddad"],
    "heldout": ["Varga", "Eriksen", "Petrov", "Almeida", "Brandt", "Quispe", "Tanaka", "Mbeki",
                "Horvat", "Castell"],
}
CITY = {
    "train": ["Lyon", "Porto", "Munich", "Krakow", "Osaka", "Lagos", "Denver", "Quebec", "Leeds",
              "Turin", "Bergen", "Seville", "Utrecht", "Ghent", "Tampere", "Brno", "Cork", "Basel"],
    "heldout": ["Graz", "Malmo", "Bilbao", "Aarhus", "Rouen", "Gdansk", "Kyoto", "Perth",
                "Halifax", "Verona", "Tartu", "Split"],
}
PRODUCT = {
    "train": ["desk lamp", "office chair", "coffee grinder", "yoga mat", "water bottle", "bookshelf",
              "hand mixer", "rain jacket", "phone stand", "wool blanket", "camping stove", "tea kettle",
              "standing desk", "bike helmet", "garden hose", "laptop sleeve", "picture frame", "wall clock"],
    "heldout": ["table fan", "steam iron", "travel pillow", "chess set", "flower pot", "shoe rack",
                "toaster", "sleeping bag", "cutting board", "floor rug", "night light", "sun hat"],
}
QUANTITY = {
    "train": [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25],
    "heldout": [9, 11, 14, 16, 18, 30, 40],
}
# Training phrasings are built from clauses in random combinations (thousands of shapes);
# held-out phrasings are whole sentences whose wording appears nowhere in training.
GREETINGS = ["", "Hi,", "Hello!", "Good morning,", "Hey there,", "Dear team,", "Hi again,"]
WHO = ["this is {name}", "my name is {name}", "{name} here", "I'm {name}", "it's {name} writing",
       "{name} speaking"]
WHERE = ["from {city}", "in {city}", "based in {city}", "living in {city}", "over in {city}"]
WHAT = ["I'd like to order {q} units of {product}", "please send {q} x {product}",
        "I need {q} {product} items", "could I get {q} of your {product}",
        "put me down for {q} {product} units", "please reserve {q} of the {product} for me",
        "I want {q} {product} sets", "can you ship {q} units of {product}"]
TRAIN_SHAPES = [
    "{greet} {who} {where}. {what}.",
    "{greet} {what}. Thanks, {name} ({city})",
    "{what}, {who} {where}.",
    "Order request: {product}, quantity {q}. Customer: {name}, {city}.",
    "New order - {name} / {city} / {product} / qty {q}",
    "{greet} {what}. Name: {name}. City: {city}.",
    "{who} {where}: {what}.",
]
HELDOUT_TEMPLATES = [
    "Dear shop, my name is {name} and I am based in {city}. I wish to purchase {q} units of {product}.",
    "Quick one: {q} x {product} for {name}, delivery address in {city}.",
    "{city} customer {name} is asking for {q} of the {product}.",
    "Could you please prepare {q} {product} items? Thanks, {name} ({city})",
    "Ordering {q} pieces of {product}. Regards, {name}, {city}.",
    "Greetings from {city}! {name} would like to get {q} units of your {product}.",
]


def phrase(split: str, fields: dict, rng: random.Random) -> str:
    values = {"q": fields["quantity"], **fields}
    if split == "heldout":
        return rng.choice(HELDOUT_TEMPLATES).format(**values)
    parts = {"greet": rng.choice(GREETINGS), "who": rng.choice(WHO).format(**values),
             "where": rng.choice(WHERE).format(**values), "what": rng.choice(WHAT).format(**values)}
    text = rng.choice(TRAIN_SHAPES).format(**parts, **values).strip()
    return text[0].upper() + text[1:]


def make(split: str, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        fields = {
            "name": f"{rng.choice(FIRST[split])} {rng.choice(LAST[split])}",
            "city": rng.choice(CITY[split]),
            "product": rng.choice(PRODUCT[split]),
            "quantity": rng.choice(QUANTITY[split]),
        }
        text = phrase(split, fields, rng)
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(fields)},
        ]})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/json"))
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    write(args.out / "train.jsonl", make("train", args.train, rng))
    write(args.out / "heldout.jsonl", make("heldout", args.heldout, rng))
    print(f"wrote {args.train} training and {args.heldout} held-out lines to {args.out}")


if __name__ == "__main__":
    main()

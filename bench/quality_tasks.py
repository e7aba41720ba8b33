"""The quality suite's tasks: generated train / validation / test splits, each scored by an exact rule.

Each task teaches a skill and asks for it on values and phrasings that training never shows:

- ``extraction``: a sentence about a person → JSON ``{"name", "age", "occupation", "city"}``;
  right when the answer equals the reference as JSON.
- ``classification``: a support ticket → its intent, one of five labels; right when the answer is
  exactly the label.
- ``style``: a customer question → an answer that starts with "Hi!" and ends with the sign-off line
  "— Ada, Tunesmith Support" (a persona the examples teach; the system message does not state it);
  right when both rules hold (what lies between is not scored).
- ``tool_calls``: a travel request → one call of one of three tools, arguments copied from the
  request; right when the function name is equal and the arguments are equal JSON.
- ``json_extraction``: the README's example (``examples/json_extraction/generate.py``) as it is.

Pools are disjoint by construction: training draws names, cities, occupations, products,
restaurants and numbers from pools that leave out every validation and test value, and its sentence
templates are not the validation's or the test's. Validation is built like the test (unseen values,
unseen templates) from pools of its own, so the guard's choice of epoch sees neither the test's
values nor its phrasings; json_extraction has one held-out pool, so there validation shares the
test's values and templates (its lines are still not test lines).

``tool_calls`` trains OpenAI's own tool format: each line carries ``tools`` and the assistant turn
is a ``tool_calls`` message, rendered by tunesmith's template as ``<tool_call>{"name": …,
"arguments": {…}}</tool_call>`` — what a user fine-tuning tool use sends, rather than a JSON answer
in the assistant's content that only resembles it. The model's answer is that text, so the scorer
reads the call back out of it (``parse_tool_call``).

Everything is a function of the seed: the same seed gives the same lines.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.eval.metrics import json_equal
from tunesmith.jsonvalues import parse_json, same_json

SPLITS = ("train", "validation", "test")
SIZES = {"train": 200, "validation": 30, "test": 100}
QUICK_SIZES = {"train": 20, "validation": 8, "test": 8}
JSON_EXTRACTION = Path(__file__).resolve().parent.parent / "examples" / "json_extraction" / "generate.py"


@dataclass(frozen=True)
class Pools:
    """What a held-out split draws from that training never does."""

    values: frozenset[str]
    templates: tuple[str, ...]  # user messages, str.format fields for the values


@dataclass
class Task:
    name: str
    rule: str  # what the score checks, in words
    splits: dict[str, list[dict]]  # train, validation, test: chat lines as tunesmith reads them
    score: Callable[[str, dict], bool]  # a greedy answer to a line's prompt → right or not
    reference: Callable[[dict], str]  # the answer a perfect model gives to a line
    max_tokens: int  # enough for every reference answer
    unseen: dict[str, Pools]  # validation, test


# --- pools -----------------------------------------------------------------------------------------

HELD_OUT = {  # split → field → values; training never draws these
    "validation": {
        "first": ["Octavia", "Benedikt", "Ludovica", "Caspian", "Theodora", "Lorcan", "Elowen", "Florian",
                  "Marisol", "Anselm"],
        "last": ["Abernethy", "Bergstrom", "Calderwood", "Delacroix", "Fairbairn", "Gustafsson", "Hawthorne",
                 "Ivanova", "Jorgensen", "Kavanagh"],
        "city": ["Aberdeen", "Bologna", "Dijon", "Esbjerg", "Freiburg", "Ghent", "Heraklion", "Olomouc",
                 "Uppsala", "Leiden"],
        "occupation": ["archivist", "welder", "jeweller", "potter", "sculptor", "courier", "midwife", "optician"],
        "product": ["hedge trimmer", "bread maker", "wine cooler", "heated blanket", "garden gnome", "pizza oven"],
        "restaurant": ["Abernethy Steakhouse", "Osteria Bergstrom", "Calderwood Noodle Bar", "Izakaya Delacroix"],
    },
    "test": {
        "first": ["Thaddeus", "Ottilie", "Casimir", "Philippa", "Evander", "Rosalind", "Leopold", "Imogen",
                  "Barnaby", "Clementine", "Ignatius", "Marguerite", "Lysander", "Henrietta", "Peregrine",
                  "Seraphina", "Alaric", "Wilhelmina", "Cosimo", "Drusilla"],
        "last": ["Ashcombe", "Brightwater", "Castellanos", "Drummond", "Featherstone", "Grunewald",
                 "Hollingsworth", "Ironside", "Jankowska", "Kilbride", "Lindqvist", "Mastroianni", "Northcott",
                 "Ostrowski", "Pennywhistle", "Quennell", "Rautenberg", "Szabo", "Trevelyan", "Vandermeer"],
        "city": ["Ljubljana", "Trondheim", "Cagliari", "Brno", "Tampere", "Leuven", "Coimbra", "Plovdiv",
                 "Valletta", "Innsbruck", "Bergamo", "Groningen", "Rijeka", "Kaunas", "Debrecen", "Lausanne",
                 "Dundee", "Galway", "Poznan", "Salamanca"],
        "occupation": ["glassblower", "cartographer", "sommelier", "blacksmith", "beekeeper", "locksmith",
                       "surveyor", "upholsterer", "watchmaker", "stonemason", "puppeteer", "taxidermist",
                       "zookeeper", "perfumer", "luthier", "falconer", "chimney sweep", "bookbinder", "harpist",
                       "ferryman"],
        "product": ["espresso machine", "air purifier", "rice cooker", "standing desk", "smart thermostat",
                    "baby monitor", "dash cam", "sewing machine", "massage chair", "waffle iron",
                    "pressure washer", "soundbar", "dehumidifier", "leaf blower", "foot spa"],
        "restaurant": ["Osteria Lindqvist", "Ashcombe Steakhouse", "Taverna Drummond", "Izakaya Northcott",
                       "Featherstone Noodle Bar", "Trattoria Quennell", "Grunewald Brasserie", "Bistro Kilbride"],
    },
}
# Numbers: training's and the held-out splits' never meet (the ranges are disjoint, and held-out
# amounts have cents, training's none).
AGES = {"train": [a for a in range(18, 80) if a not in (19, 24, 27, 33, 38, 45, 53, 57, 62, 66, 69, 74)],
        "validation": [27, 53, 66], "test": [19, 24, 33, 38, 45, 57, 62, 69, 74]}
PEOPLE = {"train": list(range(1, 13)), "validation": [14, 16, 20], "test": [13, 15, 17, 18, 19]}
OCCUPATIONS = """teacher nurse plumber accountant architect baker carpenter chef dentist designer electrician
engineer farmer firefighter florist gardener hairdresser journalist lawyer librarian mechanic musician painter
pharmacist photographer pilot programmer scientist tailor translator veterinarian waiter writer cashier economist
geologist butcher receptionist psychologist surgeon barista dancer actor plasterer roofer shepherd fisherman
lecturer salesperson""".split() + ["police officer", "bus driver", "web developer", "social worker", "flight attendant"]
PRODUCTS = """lamp kettle blender toaster heater camera speaker router printer monitor keyboard tablet laptop phone
charger vacuum fan clock radio drone scooter helmet tent backpack sofa mattress pillow mug grill
microwave""".split() + \
    ["lawn mower", "coffee grinder", "desk chair", "water filter", "electric toothbrush", "garden hose", "hair dryer",
     "bike lock", "yoga mat", "power bank"]
RESTAURANT_KINDS = ["Bistro", "Trattoria", "Grill", "Kitchen", "Diner", "Cantina", "Tavern", "Brasserie"]


@functools.cache
def _json_extraction():
    """examples/json_extraction/generate.py, loaded by path (the examples are no package)."""
    spec = importlib.util.spec_from_file_location("json_extraction_generate", JSON_EXTRACTION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _held_words() -> set[str]:
    return {w.casefold() for split in HELD_OUT.values() for values in split.values() for v in values for w in v.split()}


@functools.cache
def _training_pools() -> dict[str, list[str]]:
    """Real first names, surnames and cities (Faker, GeoNames, as json_extraction draws them) that are
    no held-out word: thousands, so a training value rarely repeats and the model must learn to copy."""
    held = _held_words()
    first, last, cities = _json_extraction().real_pools()
    return {name: [v for v in pool if v.casefold() not in held]
            for name, pool in (("first", first), ("last", last), ("city", cities))}


def _draw(split: str, field: str, rng: random.Random) -> str:
    if split != "train":
        return rng.choice(HELD_OUT[split][field])
    if field == "occupation":
        return rng.choice(OCCUPATIONS)
    if field == "product":
        return rng.choice(PRODUCTS)
    if field == "restaurant":
        return f"{rng.choice(RESTAURANT_KINDS)} {_draw(split, 'last', rng)}" if rng.random() < 0.5 else \
            f"{_draw(split, 'last', rng)} {rng.choice(RESTAURANT_KINDS)}"
    return rng.choice(_training_pools()[field])


def _article(text: str) -> str:
    """"a" or "an" before ``text`` (a word or a number, as it is spoken)."""
    spoken_vowel = text[0] in "8" or text in ("11", "18") if text[0].isdigit() else text[0].lower() in "aeiou"
    return f"{'an' if spoken_vowel else 'a'} {text}"


def _pools(split: str, fields: list[str], templates: dict[str, list[str]], numbers=()) -> Pools:
    values = {v for f in fields for v in HELD_OUT[split][f]} | {str(n) for n in numbers}
    return Pools(frozenset(values), tuple(templates[split]))


def _generate(line: Callable[[str, random.Random], dict], name: str, sizes: dict[str, int], seed: int) -> dict:
    """Each split from a generator of its own: one split's size never changes another's lines."""
    splits = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}:{name}:{split}")
        splits[split] = [line(split, rng) for _ in range(sizes[split])]
    return splits


def _chat(system: str, user: str, assistant: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def _content(row: dict) -> str:
    return row["messages"][-1]["content"]


def _json_score(answer: str, row: dict) -> bool:
    return json_equal(answer.strip(), _content(row))


# --- extraction ------------------------------------------------------------------------------------

EXTRACTION_SYSTEM = ('Extract the person from the text. Reply with JSON only, with exactly the keys "name", '
                     '"age" (an integer), "occupation" and "city".')
EXTRACTION_TEMPLATES = {
    "train": [
        "Meet {name}, {a_age}-year-old {occupation} from {city}.",
        "{name} is {age} years old and works as {a_occupation} in {city}.",
        "This is {name} from {city}. {name} is {a_occupation}, aged {age}.",
        "Name: {name}\nAge: {age}\nJob: {occupation}\nCity: {city}",
        "{name} ({age}), {occupation}, lives in {city}.",
        "In {city}, {a_occupation} named {name} just turned {age}.",
        "{city}: {name}, {age}, {occupation}.",
        "Say hello to {name}! {age} years young, {occupation} by trade, living in {city}.",
        "I am {name}, {a_occupation} from {city}, and I am {age}.",
        "{name}, {occupation}, age {age}, from {city}",
    ],
    "validation": [
        "Please add {name} to the directory: {occupation}, {age} years of age, resident of {city}.",
        "{name} | {city} | {occupation} | {age}",
        "Yesterday I met {a_occupation} from {city} called {name}, who told me they are {age}.",
    ],
    "test": [
        "Profile -- name: {name}; years: {age}; trade: {occupation}; based in {city}",
        "Born {age} years ago, {name} now works in {city} as {a_occupation}.",
        "Record for {name}: {a_age}-year-old resident of {city}, employed as {a_occupation}.",
        "Who: {name}. Where: {city}. What: {occupation}. How old: {age}.",
        "{city} welcomes {name}, {a_occupation} of {age}.",
    ],
}


def extraction(sizes: dict[str, int], seed: int) -> Task:
    def line(split: str, rng: random.Random) -> dict:
        person = {"name": f"{_draw(split, 'first', rng)} {_draw(split, 'last', rng)}", "age": rng.choice(AGES[split]),
                  "occupation": _draw(split, "occupation", rng), "city": _draw(split, "city", rng)}
        text = rng.choice(EXTRACTION_TEMPLATES[split]).format(
            **person, a_age=_article(str(person["age"])), a_occupation=_article(person["occupation"]))
        return _chat(EXTRACTION_SYSTEM, text, json.dumps(person))

    return Task("extraction", "exact JSON equality", _generate(line, "extraction", sizes, seed), _json_score,
                _content, 64, {s: _pools(s, ["first", "last", "city", "occupation"], EXTRACTION_TEMPLATES, AGES[s])
                               for s in ("validation", "test")})


# --- classification --------------------------------------------------------------------------------

LABELS = ("billing", "shipping", "returns", "technical", "account")
CLASSIFICATION_SYSTEM = ("Classify the customer's support ticket. Reply with one word: billing, shipping, returns, "
                         "technical or account.")
TICKETS = {  # split → label → phrasings
    "train": {
        "billing": ["I was charged twice for my {product}.",
                    "Why is there an extra fee on my invoice for the {product}?",
                    "The price I paid for the {product} is higher than the one on your website.",
                    "Can you send me a receipt for the {product} I bought?",
                    "My card was billed but the {product} order shows as unpaid.",
                    "Please refund the duplicate payment for my {product}.",
                    "The discount code was not applied when I paid for the {product}.",
                    "I need an invoice with my company's tax number for the {product}."],
        "shipping": ["Where is my {product}? It was supposed to arrive last week.",
                     "The tracking number for my {product} does not work.",
                     "Can you deliver the {product} to my office instead of my home?",
                     "My {product} has been stuck in transit for ten days.",
                     "How long does delivery of the {product} take to Canada?",
                     "The courier left my {product} with the wrong neighbour.", "Has my {product} shipped yet?",
                     "Can I upgrade to express shipping for the {product}?"],
        "returns": ["I want to send the {product} back, it is the wrong size.",
                    "How do I return the {product} I ordered?",
                    "The {product} arrived broken, can I exchange it?", "Can I get a return label for my {product}?",
                    "I changed my mind about the {product}, can I still return it?",
                    "The {product} does not match the photos, I would like to return it.",
                    "What is your return policy for the {product}?",
                    "I sent the {product} back two weeks ago, when will you process the return?"],
        "technical": ["My {product} will not turn on after the update.",
                      "The app keeps crashing when I connect my {product}.",
                      "How do I reset my {product} to factory settings?",
                      "The {product} shows an error on the display.",
                      "My {product} disconnects from the Wi-Fi every few minutes.",
                      "The battery of my {product} drains within an hour.",
                      "The firmware update for the {product} failed halfway.",
                      "The {product} makes a loud buzzing noise when it runs."],
        "account": ["I cannot log in to my account.", "How do I change the email address on my account?",
                    "Please delete my account and all my data.",
                    "I forgot my password and the reset email never arrives.",
                    "Someone else may have access to my account.", "How can I add a second user to my account?",
                    "My account was locked after too many login attempts.", "I want to change the name on my profile."],
    },
    "validation": {
        "billing": ["My bank statement lists a payment to you for a {product} that I never made.",
                    "You billed me the full price although the {product} was on sale."],
        "shipping": ["The parcel with my {product} never showed up at my door.",
                     "Which carrier is bringing my {product}, and when?"],
        "returns": ["Is it too late to bring back the {product} I purchased last month?",
                    "The {product} I got is not what I ordered; where do I send it back to?"],
        "technical": ["Every time I press the power button the {product} just beeps and nothing happens.",
                      "The screen of my {product} flickers and goes dark."],
        "account": ["I no longer remember which email I used to sign up.",
                    "Please switch my profile over to my new phone number."],
    },
    "test": {
        "billing": ["There are two identical charges on my credit card for one {product}.",
                    "The amount taken for the {product} does not match what my order confirmation said.",
                    "Could you explain the extra charge labelled service fee for my {product}?",
                    "I paid for the {product} with a gift card but was charged on my card as well."],
        "shipping": ["My {product} still has not been delivered and the estimated date has passed.",
                     "The delivery van came while I was out; how do I get my {product} now?",
                     "Can the {product} be sent to a pick-up point near me?",
                     "The package with the {product} says delivered, but nothing is here."],
        "returns": ["The {product} is not what I expected; please tell me how to send it back for a refund.",
                    "Can I swap the {product} for a different colour?",
                    "The {product} came damaged and I want to give it back.",
                    "Do I have to pay the postage to return the {product}?"],
        "technical": ["The {product} freezes as soon as I open the settings menu.",
                      "After charging all night the {product} still shows an empty battery.",
                      "The {product} no longer pairs with my phone over Bluetooth.",
                      "Whenever I start the {product} it restarts itself after a few seconds."],
        "account": ["I am locked out and cannot sign in with my usual password.",
                    "How do I update the phone number linked to my profile?",
                    "Please close my customer profile for good.",
                    "I would like to turn on two-factor authentication for my login."],
    },
}


def classification(sizes: dict[str, int], seed: int) -> Task:
    def line(split: str, rng: random.Random) -> dict:
        label = rng.choice(LABELS)
        text = rng.choice(TICKETS[split][label]).format(product=_draw(split, "product", rng))
        return _chat(CLASSIFICATION_SYSTEM, text, label)

    templates = {split: [t for label in LABELS for t in TICKETS[split][label]] for split in SPLITS}
    return Task("classification", "the answer is exactly the label", _generate(line, "classification", sizes, seed),
                lambda answer, row: answer.strip() == _content(row), _content, 8,
                {s: _pools(s, ["product"], templates) for s in ("validation", "test")})


# --- style -----------------------------------------------------------------------------------------

STYLE_SYSTEM = "You are the support assistant of Tunesmith, a shop for home and garden goods."
GREETING, SIGN_OFF = "Hi!", "\n— Ada, Tunesmith Support"
QUESTIONS = {  # split → (question, answer body)
    "train": [
        ("How do I clean my {product}?",
         "To clean your {product}, unplug it, wipe it with a damp cloth and let it dry before using it again."),
        ("Do you have the {product} in stock?", "Yes, the {product} is in stock and ships within two working days."),
        ("Is there a warranty on the {product}?",
         "Every {product} comes with a two-year warranty that covers manufacturing faults."),
        ("Can I pick up my {product} at your store in {city}?",
         "Yes, you can pick up your {product} at our {city} store once you get the ready-for-pickup email."),
        ("What are your opening hours in {city}?", "Our {city} store is open from 9 am to 6 pm, Monday to Saturday."),
        ("How much does shipping to {city} cost?",
         "Shipping to {city} is free for orders over 50 euros and costs 5 euros below that."),
        ("My {product} arrived without a manual. Where can I find one?",
         "You can download the manual for the {product} from the support page of our website."),
        ("Can I pay for the {product} in instalments?",
         "Yes, at checkout you can split the price of the {product} into three monthly payments."),
        ("Does the {product} work outdoors?",
         "The {product} is made for indoor use, so please keep it away from rain and frost."),
        ("Do you sell spare parts for the {product}?",
         "Yes, spare parts for the {product} are listed under Accessories on its product page."),
    ],
    "validation": [
        ("How heavy is the {product}?", "The {product} weighs about three kilograms without its packaging."),
        ("Is the {product} available in another colour?",
         "The {product} comes in white and in black; pick the colour on its product page."),
        ("Do you offer a discount on the {product} for students in {city}?",
         "Students in {city} get ten percent off the {product} with a valid student card."),
    ],
    "test": [
        ("Is the {product} safe to use around small children?",
         "The {product} is safe around children when used as the manual describes; keep it out of their reach "
         "when it is not in use."),
        ("Could you gift-wrap the {product} for me?",
         "Of course, choose gift wrapping at checkout and we will wrap the {product} for you."),
        ("Which batteries does the {product} need?", "The {product} runs on mains power and needs no batteries."),
        ("Do you ship the {product} abroad, for example to {city}?",
         "Yes, we ship the {product} to {city} and most other cities abroad within a week."),
        ("I lost the receipt for my {product}. Is that a problem?",
         "Not at all: your order number is enough to prove that you bought the {product}."),
        ("Can I try the {product} in your {city} shop before buying it?",
         "Yes, the {city} shop has a {product} on display that you can try."),
    ],
}


def follows_style(answer: str) -> bool:
    """Starts with the greeting and ends with the sign-off on a line of its own."""
    return answer.strip().startswith(GREETING) and answer.strip().endswith(SIGN_OFF)


def style(sizes: dict[str, int], seed: int) -> Task:
    def line(split: str, rng: random.Random) -> dict:
        question, body = rng.choice(QUESTIONS[split])
        values = {"product": _draw(split, "product", rng), "city": _draw(split, "city", rng)}
        return _chat(STYLE_SYSTEM, question.format(**values), f"{GREETING} {body.format(**values)}{SIGN_OFF}")

    templates = {split: [q for q, _ in QUESTIONS[split]] for split in SPLITS}
    return Task("style", f"starts with {GREETING!r} and ends with the line {SIGN_OFF.strip()!r}",
                _generate(line, "style", sizes, seed), lambda answer, row: follows_style(answer), _content, 96,
                {s: _pools(s, ["product", "city"], templates) for s in ("validation", "test")})


# --- tool calls ------------------------------------------------------------------------------------

TOOLS_SYSTEM = "You are a travel assistant. Answer every request with one call of one of the functions."


def _tool(name: str, description: str, **properties: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {k: {"type": t} for k, t in properties.items()}, "required": list(properties)}}}


TOOLS = [_tool("get_weather", "Weather forecast for a city", city="string", day="string"),
         _tool("book_table", "Reserve a restaurant table", restaurant="string", people="integer", day="string"),
         _tool("convert_currency", "Convert an amount of money", amount="number", **{"from": "string", "to": "string"})]
DAYS = {"today": "today", "tomorrow": "tomorrow",
        **{f"on {d}": d for d in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")}}
CURRENCIES = ["EUR", "USD", "GBP", "JPY", "CHF", "SEK", "CAD", "AUD"]
REQUESTS = {  # split → tool → phrasings
    "train": {
        "get_weather": ["What will the weather be in {city} {when}?", "Will it rain in {city} {when}?",
                        "Forecast for {city} {when}, please.", "I am heading to {city} {when}. How is the weather?"],
        "book_table": ["Book a table for {people} at {restaurant} {when}.",
                       "Can you reserve {restaurant} for {people} people {when}?",
                       "We are {people}; get us a table at {restaurant} {when}.",
                       "Table at {restaurant} for {people} guests {when}, thanks."],
        "convert_currency": ["How much is {amount} {from} in {to}?", "Convert {amount} {from} to {to}.",
                             "I have {amount} {from}. What is that in {to}?", "{amount} {from} to {to}, please."],
    },
    "validation": {
        "get_weather": ["Is {city} going to be sunny {when}?"],
        "book_table": ["Please hold a table for {people} diners at {restaurant} {when}."],
        "convert_currency": ["Tell me the {to} value of {amount} {from}."],
    },
    "test": {
        "get_weather": ["Planning a picnic in {city} {when} - what does the forecast say?",
                        "Any chance of snow in {city} {when}?"],
        "book_table": ["My family of {people} would like to eat at {restaurant} {when}; please book it.",
                       "Reserve {restaurant} {when}, party of {people}."],
        "convert_currency": ["What do I get for {amount} {from} if I change it into {to}?",
                             "Exchange {amount} {from} into {to}: how much is that?"],
    },
}
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _amount(split: str, rng: random.Random) -> int | float:
    """Training amounts are whole numbers from 21 up, held-out ones have cents: no held-out amount, and no
    held-out number of people, is ever a training number."""
    if split == "train":
        return rng.randrange(21, 1000)
    return rng.randrange(10, 1000) + (0.5 if split == "validation" else rng.choice([0.25, 0.75]))


def tool_call_text(name: str, arguments: dict) -> str:
    """A call as tunesmith's chat template renders it (``models/chatml.py``)."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def parse_tool_call(answer: str) -> tuple[str, object] | None:
    """(name, arguments) of an answer that is exactly one tool call, else None."""
    calls = _TOOL_CALL.findall(answer)
    if len(calls) != 1 or _TOOL_CALL.sub("", answer).strip():
        return None
    ok, call = parse_json(calls[0])
    if not ok or not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
        return None
    return call["name"], call["arguments"]


def _call(row: dict) -> tuple[str, dict]:
    function = row["messages"][-1]["tool_calls"][0]["function"]
    return function["name"], json.loads(function["arguments"])


def _right_call(answer: str, row: dict) -> bool:
    got, (name, arguments) = parse_tool_call(answer), _call(row)
    return got is not None and got[0] == name and same_json(got[1], arguments)


def tool_calls(sizes: dict[str, int], seed: int) -> Task:
    def line(split: str, rng: random.Random) -> dict:
        tool, when = rng.choice([t["function"]["name"] for t in TOOLS]), rng.choice(list(DAYS))
        values = {"city": _draw(split, "city", rng), "restaurant": _draw(split, "restaurant", rng),
                  "people": rng.choice(PEOPLE[split]), "amount": _amount(split, rng),
                  "from": rng.choice(CURRENCIES), "to": rng.choice(CURRENCIES), "when": when}
        arguments = {"get_weather": {"city": values["city"], "day": DAYS[when]},
                     "book_table": {"restaurant": values["restaurant"], "people": values["people"], "day": DAYS[when]},
                     "convert_currency": {"amount": values["amount"], "from": values["from"], "to": values["to"]}}[tool]
        call = {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": json.dumps(arguments)}}
        return {"tools": TOOLS, "messages": [
            {"role": "system", "content": TOOLS_SYSTEM},
            {"role": "user", "content": rng.choice(REQUESTS[split][tool]).format(**values)},
            {"role": "assistant", "tool_calls": [call]}]}

    templates = {split: [t for phrasings in REQUESTS[split].values() for t in phrasings] for split in SPLITS}
    return Task("tool_calls", "one tool call; function name equal, arguments equal as JSON",
                _generate(line, "tool_calls", sizes, seed), _right_call, lambda row: tool_call_text(*_call(row)), 64,
                {s: _pools(s, ["city", "restaurant"], templates, PEOPLE[s]) for s in ("validation", "test")})


# --- json_extraction -------------------------------------------------------------------------------

def json_extraction(sizes: dict[str, int], seed: int) -> Task:
    """The README's example: training lines as ``generate.py --seed SEED`` writes them, test lines its
    held-out lines (the README's for seed 0, 100 lines), validation more held-out lines."""
    generate = _json_extraction()
    seeds = {"train": seed, "validation": f"{seed}:validation", "test": f"{seed}:heldout"}
    splits = {split: generate.make("train" if split == "train" else "heldout", sizes[split], random.Random(s))
              for split, s in seeds.items()}
    held = generate.HELDOUT
    pools = Pools(frozenset({v for field in ("first", "last", "city", "product") for v in held[field]}
                            | {str(q) for q in held["quantity"]}), tuple(generate.HELDOUT_TEMPLATES))
    return Task("json_extraction", "exact JSON equality", splits, _json_score, _content, 64,
                {"validation": pools, "test": pools})


TASKS: dict[str, Callable[[dict[str, int], int], Task]] = {
    "extraction": extraction, "classification": classification, "style": style, "tool_calls": tool_calls,
    "json_extraction": json_extraction}
DEFAULT_TRAIN = {"json_extraction": 300}  # as the README's numbers were measured


def make_task(name: str, seed: int = 0, quick: bool = False, train_lines: int | None = None) -> Task:
    """``train_lines``: that many training lines instead of the task's usual number. Each split has its own
    generator, so the first N lines of a larger training split are the smaller one's and the validation
    and test lines do not change: runs at several sizes differ only in how much they train on."""
    sizes = dict(QUICK_SIZES) if quick else {**SIZES, "train": DEFAULT_TRAIN.get(name, SIZES["train"])}
    if train_lines is not None:
        sizes["train"] = train_lines
    return TASKS[name](sizes, seed)


def prompt_of(row: dict) -> list[dict]:
    """The conversation a line asks: every message before its answer."""
    return row["messages"][:-1]

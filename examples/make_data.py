"""Write the example data sets of docs/your_own_model.md (deterministic, no downloads).

    python examples/make_data.py

Two tasks about the capital cities of countries, split by country so that every held-out
row asks about a country the training rows never mention:

- ``prefs/``: conversational preference pairs (TRL's ``prompt``/``chosen``/``rejected``
  message lists). The rule a person would state: *prefer the correct capital, said in a few
  words*. A rejected answer either names the wrong city (another country's capital) or
  rambles — hedges at length, sometimes with the right city buried in it.
- ``verifier/``: conversational prompts with an ``answer`` column, for online methods with
  the reward ``verifier/reward.py:correct`` (1 when the reply is the capital's name and
  nothing else).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Countries whose capital is not disputed, with the capital's usual English name.
CAPITALS = [
    ("Afghanistan", "Kabul"), ("Albania", "Tirana"), ("Algeria", "Algiers"), ("Andorra", "Andorra la Vella"),
    ("Angola", "Luanda"), ("Argentina", "Buenos Aires"), ("Armenia", "Yerevan"), ("Australia", "Canberra"),
    ("Austria", "Vienna"), ("Azerbaijan", "Baku"), ("Bahrain", "Manama"), ("Bangladesh", "Dhaka"),
    ("Belarus", "Minsk"), ("Belgium", "Brussels"), ("Belize", "Belmopan"), ("Bhutan", "Thimphu"),
    ("Botswana", "Gaborone"), ("Brazil", "Brasilia"), ("Bulgaria", "Sofia"), ("Burundi", "Gitega"),
    ("Cambodia", "Phnom Penh"), ("Cameroon", "Yaounde"), ("Canada", "Ottawa"), ("Chad", "N'Djamena"),
    ("Chile", "Santiago"), ("China", "Beijing"), ("Colombia", "Bogota"), ("Costa Rica", "San Jose"),
    ("Croatia", "Zagreb"), ("Cuba", "Havana"), ("Cyprus", "Nicosia"), ("Czechia", "Prague"),
    ("Denmark", "Copenhagen"), ("Djibouti", "Djibouti"), ("Dominican Republic", "Santo Domingo"),
    ("Ecuador", "Quito"), ("Egypt", "Cairo"), ("El Salvador", "San Salvador"), ("Eritrea", "Asmara"),
    ("Estonia", "Tallinn"), ("Ethiopia", "Addis Ababa"), ("Fiji", "Suva"), ("Finland", "Helsinki"),
    ("France", "Paris"), ("Gabon", "Libreville"), ("Georgia", "Tbilisi"), ("Germany", "Berlin"),
    ("Ghana", "Accra"), ("Greece", "Athens"), ("Guatemala", "Guatemala City"), ("Guinea", "Conakry"),
    ("Guyana", "Georgetown"), ("Haiti", "Port-au-Prince"), ("Honduras", "Tegucigalpa"), ("Hungary", "Budapest"),
    ("Iceland", "Reykjavik"), ("India", "New Delhi"), ("Indonesia", "Jakarta"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Ireland", "Dublin"), ("Italy", "Rome"), ("Jamaica", "Kingston"),
    ("Japan", "Tokyo"), ("Jordan", "Amman"), ("Kenya", "Nairobi"), ("Kuwait", "Kuwait City"),
    ("Kyrgyzstan", "Bishkek"), ("Laos", "Vientiane"), ("Latvia", "Riga"), ("Lebanon", "Beirut"),
    ("Liberia", "Monrovia"), ("Libya", "Tripoli"), ("Lithuania", "Vilnius"), ("Luxembourg", "Luxembourg"),
    ("Madagascar", "Antananarivo"), ("Malawi", "Lilongwe"), ("Malaysia", "Kuala Lumpur"), ("Mali", "Bamako"),
    ("Malta", "Valletta"), ("Mauritania", "Nouakchott"), ("Mexico", "Mexico City"), ("Moldova", "Chisinau"),
    ("Monaco", "Monaco"), ("Mongolia", "Ulaanbaatar"), ("Montenegro", "Podgorica"), ("Morocco", "Rabat"),
    ("Mozambique", "Maputo"), ("Namibia", "Windhoek"), ("Nepal", "Kathmandu"), ("Netherlands", "Amsterdam"),
    ("New Zealand", "Wellington"), ("Nicaragua", "Managua"), ("Niger", "Niamey"), ("Nigeria", "Abuja"),
    ("North Korea", "Pyongyang"), ("North Macedonia", "Skopje"), ("Norway", "Oslo"), ("Oman", "Muscat"),
    ("Pakistan", "Islamabad"), ("Panama", "Panama City"), ("Paraguay", "Asuncion"), ("Peru", "Lima"),
    ("Philippines", "Manila"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"), ("Qatar", "Doha"),
    ("Romania", "Bucharest"), ("Russia", "Moscow"), ("Rwanda", "Kigali"), ("Saudi Arabia", "Riyadh"),
    ("Senegal", "Dakar"), ("Serbia", "Belgrade"), ("Sierra Leone", "Freetown"), ("Singapore", "Singapore"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Somalia", "Mogadishu"), ("South Korea", "Seoul"),
    ("South Sudan", "Juba"), ("Spain", "Madrid"), ("Sudan", "Khartoum"), ("Suriname", "Paramaribo"),
    ("Sweden", "Stockholm"), ("Switzerland", "Bern"), ("Syria", "Damascus"), ("Taiwan", "Taipei"),
    ("Tajikistan", "Dushanbe"), ("Thailand", "Bangkok"), ("Togo", "Lome"), ("Tunisia", "Tunis"),
    ("Turkey", "Ankara"), ("Turkmenistan", "Ashgabat"), ("Uganda", "Kampala"), ("Ukraine", "Kyiv"),
    ("United Arab Emirates", "Abu Dhabi"), ("United Kingdom", "London"), ("United States", "Washington"),
    ("Uruguay", "Montevideo"), ("Uzbekistan", "Tashkent"), ("Venezuela", "Caracas"), ("Vietnam", "Hanoi"),
    ("Yemen", "Sanaa"), ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"),
]

# Questions for the preference pairs: plain questions, as a user would ask them.
PREF_QUESTIONS = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "What's the capital city of {c}?",
]
# Verifier prompts ask for the bare name, which the reward checks.
VERIFIER_QUESTIONS = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "Capital of {c}?",
    "What's the capital city of {c}?",
    "Tell me the capital of {c}.",
    "{c}: what is its capital?",
    "Which city is {c}'s capital?",
    "The capital of {c} is which city?",
    "Do you know the capital of {c}?",
]
# The system message asks for the bare name, which the reward checks; it also replaces the
# model's long default system prompt, which keeps prompts short.
VERIFIER_SYSTEM = "Answer with the name of the city only."
GOOD = ["{a}.", "The capital of {c} is {a}.", "{a}", "It's {a}."]
WRONG = ["{w}.", "The capital of {c} is {w}.", "{w}", "It's {w}."]
RAMBLING = [
    "That is a great question! Capitals can be tricky, and many people are not sure about them. There are "
    "several large cities in {c}, and each of them is important in its own way, so it is hard to say.",
    "I'm not completely sure, but I think it might be {a}, although it could also be another city. You may "
    "want to check an atlas or an encyclopedia to be certain about this.",
    "Well, {c} is a fascinating country with a long history, beautiful landscapes and a rich culture. Its "
    "capital, which I believe is {a}, is home to many people and has many famous buildings.",
]


def split_countries(seed: int = 0, held_out: float = 0.4) -> tuple[list, list]:
    """Shuffle the countries with ``seed`` and cut off ``held_out`` of them for evaluation."""
    rows = list(CAPITALS)
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * (1 - held_out))
    return rows[:cut], rows[cut:]


def pref_rows(countries: list, rng: random.Random) -> list[dict]:
    """One pair per (country, question); half the rejected answers are wrong, half ramble."""
    others = [a for _, a in CAPITALS]
    rows = []
    for c, a in countries:
        for q in PREF_QUESTIONS:
            w = rng.choice([x for x in others if x != a])
            bad = rng.choice(WRONG if rng.random() < 0.5 else RAMBLING)
            rows.append({"prompt": [{"role": "user", "content": q.format(c=c)}],
                         "chosen": [{"role": "assistant", "content": rng.choice(GOOD).format(c=c, a=a)}],
                         "rejected": [{"role": "assistant", "content": bad.format(c=c, a=a, w=w)}]})
    rng.shuffle(rows)
    return rows


def verifier_rows(countries: list, rng: random.Random) -> list[dict]:
    rows = [{"prompt": [{"role": "system", "content": VERIFIER_SYSTEM}, {"role": "user", "content": q.format(c=c)}],
             "answer": a}
            for c, a in countries for q in VERIFIER_QUESTIONS]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{path.relative_to(HERE.parent)}: {len(rows)} rows")


def main() -> None:
    train, held_out = split_countries()
    rng = random.Random(0)
    write_jsonl(HERE / "prefs" / "train.jsonl", pref_rows(train, rng))
    write_jsonl(HERE / "prefs" / "eval.jsonl", pref_rows(held_out, rng))
    write_jsonl(HERE / "verifier" / "prompts.jsonl", verifier_rows(train, rng))
    write_jsonl(HERE / "verifier" / "eval.jsonl", verifier_rows(held_out, rng))


if __name__ == "__main__":
    main()

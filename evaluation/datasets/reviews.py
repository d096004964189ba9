"""Amazon reviews (`canrager/amazon_reviews_mcauley_1and5`, the copy SAEBench uses) offline: a
generated stand-in, and a local copy.

API (stable; mirrors `bios`):

- `review_texts(category, rating, n, *, part="train", seed=0, path=None) -> list[str]`: n
  reviews of one product category ("Books") and rating ("1.0" or "5.0").
- `reviews_dataset(split="biased"|"balanced", categories=("Books", "CDs_and_Vinyl"), n=1000, *,
  part="train", seed=0, path=None) -> LabelledTexts` with label columns "category" and "rating"
  (strings, "1.0"/"5.0"). Biased: n/2 of (categories[0], "1.0") and n/2 of (categories[1],
  "5.0") (SAEBench's pairing: rating 1.0 with the first category); balanced: n/4 per quadrant.
- `CATEGORIES` (name -> the original's integer code), `RATINGS` ("1.0", "5.0"),
  `STAND_IN_CATEGORIES`.

A local copy (`path`, see `common.read_table`) has the columns SAEBench reads: `text` (the
review), `category` (integer code as in `CATEGORIES`, or the name) and `rating` (1.0 or 5.0;
other ratings are ignored).

The stand-in names no category: the product shows through what it is and does (some cues are
shared by related categories, e.g. phones and electronics), and the sentiment through praise or
complaint, with hedges, negations ("not bad at all"), a contrary remark in many reviews and
only a faint remark ("It does the job.") in some. Its
numbers cannot be compared with SAEBench's published ones.
"""

from __future__ import annotations

import numpy as np

from saelab.base.errors import UserError
from saelab.evaluation.datasets.common import (
    LabelledTexts,
    check_columns,
    check_part,
    generate_part,
    read_table,
    sample_rows,
    stream_seed,
    two_label_split,
)

CATEGORIES = {
    "All_Beauty": 0, "Toys_and_Games": 1, "Cell_Phones_and_Accessories": 2,
    "Industrial_and_Scientific": 3, "Gift_Cards": 4, "Musical_Instruments": 5, "Electronics": 6,
    "Handmade_Products": 7, "Arts_Crafts_and_Sewing": 8, "Baby_Products": 9,
    "Health_and_Household": 10, "Office_Products": 11, "Digital_Music": 12,
    "Grocery_and_Gourmet_Food": 13, "Sports_and_Outdoors": 14, "Home_and_Kitchen": 15,
    "Subscription_Boxes": 16, "Tools_and_Home_Improvement": 17, "Pet_Supplies": 18,
    "Video_Games": 19, "Kindle_Store": 20, "Clothing_Shoes_and_Jewelry": 21,
    "Patio_Lawn_and_Garden": 22, "Unknown": 23, "Books": 24, "Automotive": 25,
    "CDs_and_Vinyl": 26, "Beauty_and_Personal_Care": 27, "Amazon_Fashion": 28,
    "Magazine_Subscriptions": 29, "Software": 30, "Health_and_Personal_Care": 31,
    "Appliances": 32, "Movies_and_TV": 33,
}  # fmt: skip
"""Category name -> its integer code in the original (as SAEBench's dataset_info)."""
RATINGS = ("1.0", "5.0")
COLUMNS = ("text", "category", "rating")

# -- the stand-in -----------------------------------------------------------------------------

_PRODUCTS = {
    "Books": (["novel", "memoir", "paperback", "biography", "cookbook"],
              ["the plot", "the characters", "the prose", "the ending", "the chapters"]),
    "CDs_and_Vinyl": (["album", "record", "LP", "box set", "live recording"],
                      ["the songs", "the vocals", "the pressing", "the mix", "the b-sides"]),
    "Software": (["program", "app", "license", "antivirus suite", "photo editor"],
                 ["the installer", "the updates", "the interface", "the activation", "the features"]),
    "Electronics": (["headphones", "speaker", "TV", "charger", "webcam"],
                    ["the sound", "the battery", "the screen", "the cable", "the remote"]),
    "Pet_Supplies": (["dog bed", "cat litter", "leash", "fish tank filter", "chew toy"],
                     ["my dog", "the cats", "the smell", "the size", "my puppy"]),
    "Office_Products": (["stapler", "desk organizer", "printer paper", "gel pens", "binder"],
                        ["the ink", "the clips", "the drawers", "the pages", "the labels"]),
    "Industrial_and_Scientific": (["lab thermometer", "safety goggles", "multimeter", "pipette set", "nitrile gloves"],
                                  ["the readings", "the calibration", "the seal", "the gauge", "the tolerance"]),
    "Toys_and_Games": (["board game", "puzzle", "action figure", "building set", "stuffed bear"],
                       ["my kids", "the pieces", "the rules", "my nephew", "the paint"]),
    "Cell_Phones_and_Accessories": (["phone case", "screen protector", "car mount", "charging cable", "phone"],
                                    ["the camera", "the battery", "the grip", "the screen", "the signal"]),
    "Musical_Instruments": (["guitar strings", "keyboard", "drum pedal", "ukulele", "microphone stand"],
                            ["the tone", "the tuning", "the keys", "the frets", "the sound"]),
}  # fmt: skip
"""Per category: product nouns, and aspects a review talks about."""
_POSITIVE = [
    "I love this {item}; {aspect} turned out excellent.",
    "Five stars: {aspect} exceeded my expectations.",
    "Best {item} I have bought in years, and {aspect} felt perfect.",
    "Not bad at all, {aspect} actually seemed great.",
    "I was skeptical, but {aspect} won me over completely.",
    "Works exactly as described and {aspect} turned out superb.",
    "Highly recommend this {item} to anyone.",
    "I would happily buy this {item} again.",
]
_NEGATIVE = [
    "I regret buying this {item}; {aspect} turned out terrible.",
    "One star: {aspect} fell apart within a week.",
    "Worst {item} I have owned, and {aspect} felt like a joke.",
    "Not worth it, {aspect} turned out a real letdown.",
    "I wanted to like it, but {aspect} ruined it.",
    "It does not work as described and {aspect} seemed awful.",
    "Save your money and skip this {item}.",
    "I returned the {item} the next day.",
]
_CONTRARY = {
    "5.0": ["Shipping was slow, though.", "The box arrived a bit dented.",
            "{Aspect} could be slightly better.", "It was pricier than I hoped."],
    "1.0": ["The packaging was nice, at least.", "{Aspect} seemed fine at first.",
            "Delivery was fast, I will give them that.", "The price was reasonable."],
}  # fmt: skip
_WEAK_SENTIMENT = {
    "5.0": ["It does the job.", "No complaints so far.", "It is fine for what it is.",
            "It was what I expected.", "Could not ask for much more at this price."],
    "1.0": ["It does the job, barely.", "Not what I expected.", "It is fine, I suppose.",
            "Could have been better at this price.", "I expected a bit more."],
}  # fmt: skip
"""Faint sentiment, alone in some reviews (as in many short real ones)."""
_NEUTRAL = [
    "I bought it as a gift.",
    "It arrived on Tuesday.",
    "I have used it for about a month now.",
    "My partner picked this one.",
    "I compared a few options before ordering.",
    "This is my second purchase from this seller.",
]
_SHARED = [
    (("Electronics", "Cell_Phones_and_Accessories", "Software"), "It needed a firmware update before it would work properly."),
    (("Electronics", "Cell_Phones_and_Accessories"), "The charging port sits on the side."),
    (("Books", "CDs_and_Vinyl", "Software"), "I got the digital version as well."),
    (("Toys_and_Games", "Pet_Supplies"), "It survived a lot of chewing and rough play."),
    (("Office_Products", "Industrial_and_Scientific"), "We ordered a box of them for the workplace."),
    (("Musical_Instruments", "CDs_and_Vinyl", "Electronics"), "The audio is what matters most to me."),
    (("Books", "Toys_and_Games"), "My daughter reads along with it every night."),
]  # fmt: skip
"""Weak category cues, each true of several categories."""

WEAK_SENTIMENT_RATE = 0.3
"""Share of stand-in reviews whose only sentiment is a faint remark."""
CONTRARY_RATE = 0.6
"""Share of stand-in reviews with one remark of the opposite sentiment."""
WEAK_RATE = 0.3
"""Share of stand-in reviews whose only category cue is one shared with other categories."""
STAND_IN_CATEGORIES = tuple(_PRODUCTS)


def _one_review(category: str, rating: str, rng: np.random.Generator) -> str:
    items, aspects = _PRODUCTS[category]
    weak = [t for owners, t in _SHARED if category in owners]
    if weak and rng.random() < WEAK_RATE:
        item, aspect = "item", rng.choice(["the quality", "the design", "the value", "it"])
        extra = [rng.choice(weak)]
    else:
        item, aspect = rng.choice(items), rng.choice(aspects)
        extra = [rng.choice(weak)] if weak and rng.random() < 0.3 else []
    if rng.random() < WEAK_SENTIMENT_RATE:
        sentences = [rng.choice(_WEAK_SENTIMENT[rating])]
        sentences += [f"I ordered the {item} last month."] if item != "item" else []
    else:
        pool = _POSITIVE if rating == "5.0" else _NEGATIVE
        picks = rng.choice(len(pool), size=1 + int(rng.random() < 0.5), replace=False)
        sentences = [pool[i].format(item=item, aspect=aspect) for i in picks]
    sentences += extra
    if rng.random() < CONTRARY_RATE:
        sentences.append(rng.choice(_CONTRARY[rating]).format(Aspect=aspect.capitalize()))
    if rng.random() < 0.6:
        sentences.append(rng.choice(_NEUTRAL))
    order = rng.permutation(len(sentences))
    text = " ".join(sentences[i] for i in order)
    return text[0].upper() + text[1:]


def _stand_in(category: str, rating: str, n: int, part: str, seed: int) -> list[str]:
    if category not in _PRODUCTS:
        raise UserError(
            f"the Amazon reviews stand-in has no category {category!r}: choose from "
            f"{', '.join(STAND_IN_CATEGORIES)} (or give a local copy with --dataset)"
        )
    rng = stream_seed(seed, part, "reviews", category, rating)
    return generate_part(lambda r: _one_review(category, rating, r), n, part, rng)


# -- a local copy -----------------------------------------------------------------------------


def _local(category: str, rating: str, n: int, part: str, seed: int, path: str) -> list[str]:
    frame = read_table(path)[part]
    check_columns(frame, COLUMNS, path, "Amazon reviews")
    by_code = {v: k for k, v in CATEGORIES.items()}
    cats = np.array(
        [v if isinstance(v, str) else by_code.get(v, str(v)) for v in frame["category"]]
    )
    ratings = np.array([f"{float(v):.1f}" for v in frame["rating"]])
    texts = frame["text"].astype(str).to_numpy()[(cats == category) & (ratings == rating)]
    rng = stream_seed(seed, part, "reviews", category, rating)
    return sample_rows(list(texts), n, rng, f"{category}/{rating} ({part})", path)


# -- the API ----------------------------------------------------------------------------------


def review_texts(
    category: str,
    rating: str,
    n: int,
    *,
    part: str = "train",
    seed: int = 0,
    path: str | None = None,
) -> list[str]:
    """n reviews of one category and rating, generated (`path=None`) or from a local copy."""
    check_part(part)
    if category not in CATEGORIES:
        raise UserError(f"unknown category {category!r}: choose from {', '.join(CATEGORIES)}")
    rating = f"{float(rating):.1f}" if str(rating).replace(".", "", 1).isdigit() else str(rating)
    if rating not in RATINGS:
        raise UserError(f"unknown rating {rating!r}: choose 1.0 or 5.0")
    if path is None:
        return _stand_in(category, rating, n, part, seed)
    return _local(category, rating, n, part, seed, path)


def reviews_dataset(
    split: str = "biased",
    categories: tuple[str, str] = ("Books", "CDs_and_Vinyl"),
    n: int = 1000,
    *,
    part: str = "train",
    seed: int = 0,
    path: str | None = None,
) -> LabelledTexts:
    """A biased or balanced split of two categories, labels "category" and "rating"."""
    return two_label_split(
        lambda c, s, k: review_texts(c, s, k, part=part, seed=seed, path=path),
        ("category", "rating"),
        tuple(categories),
        RATINGS,
        split,
        n,
        path or "stand-in",
        seed,
    )

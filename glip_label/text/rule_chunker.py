"""Noun phrases from closed word lists and a few positional rules: no model, no download.

The stand-in for the official demo's NLTK chunker (`find_noun_phrases` in
`maskrcnn_benchmark/engine/predictor_glip.py`) where spaCy is missing, and in tests. Its rules are
listed on `RuleBasedChunker`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from glip_label.text.phrases import Phrase

# Words are runs of letters/digits joined by "-" or an apostrophe ("t-shirt", "man's", "don't");
# decimal numbers stay whole; any other non-space character is a token of its own (punctuation).
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:[-'’][^\W_]+)*|\S")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DETERMINERS = _words(
    "a an the this that these those some any each every another no either neither such what which whose "
    "many several few all both half most more less much enough"
)
PREDETERMINERS = frozenset({"all", "both", "half", "such", "what"})  # "all the people", "such a day"
POSSESSIVE_DETERMINERS = _words("my your his her its our their")
NUMBERS = _words(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds "
    "thousand thousands million dozen dozens couple pair"
)
# Adjectives and intensifiers that often stand before a noun. They matter in two places: they are not a
# head noun (so "-ing" after them is a modifier, "a red riding hood"), and a phrase made only of them
# without a determiner ("blue" in "the sky is blue") is dropped.
ADJECTIVES = _words(
    """
    red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige tan
    maroon navy teal turquoise cyan magenta colorful colourful dark light bright pale striped spotted checkered
    plaid
    small large big little huge giant tiny tall short long wide narrow thick thin round square rectangular
    triangular flat tiny high low deep shallow heavy full empty open closed
    old new young ancient modern vintage antique fresh ripe raw cooked hot cold warm cool wet dry clean dirty
    busy crowded quiet empty beautiful pretty cute ugly nice good bad great fine happy sad angry funny
    wooden metal metallic plastic glass stone brick leather paper electric digital
    left right front back top bottom upper lower middle inner outer main first second third last next other
    same different whole single double various several own
    very really quite extremely rather fairly too so
    close far nearby near
    """
)
PREPOSITIONS = _words(
    """
    of in on at with by for from to into onto upon over under near behind above below beside besides between
    beneath underneath through throughout across along alongside around round about against among amongst
    toward towards during past off out via atop within without inside outside like unlike than as per
    down up after before beyond despite except since until till versus vs
    """
)
CONJUNCTIONS = _words("and or but nor yet so while whereas because although though if unless where when")
PRONOUNS = _words(
    """
    i me we us you he him she they them it itself himself herself themselves myself yourself ourselves
    mine yours hers ours theirs someone somebody something anyone anybody anything everyone everybody
    everything nobody nothing none who whom there here
    it's that's there's here's he's she's what's who's let's i'm you're we're they're i've you've we've
    they've i'll you'll we'll they'll i'd you'd he'd she'd we'd they'd
    """
)
# Closed list of verbs and auxiliaries common in image captions (base, -s, past forms; the -ing and -ed
# forms after a noun are caught by suffix). An open-class verb not listed here is only found by the
# "verb before an object" rule below.
VERBS = _words(
    """
    is are was were be been being am has have had having do does did done could will would shall should
    might must sit sits sat sitting stands stood lie lies lay lays laid hold holds held look looks ride
    rides rode walk walks walked runs ran plays played eat eats ate eaten drank wear wears wore worn carry
    carries carried flew flown jump jumps jumped wait waits waited watched showed shown contain contains
    see sees saw seen get gets got go goes went gone come comes came make makes made take takes took taken
    give gives gave use uses used throw throws threw thrown catches caught hits swings kick kicks poses
    posed smiles talk talks read reads write writes pull pulls push pushes fills covers seem seems appear
    appears become becomes includes attend attends perform performs arrive arrives
    """
)
# Left out on purpose because they are as often nouns: can, may, park, stand, drink, watch, show, fly,
# run, play, cover, cut, smile, swing, feature(s), leave(s), flies, drinks, watches, shows.
ADVERBS = _words(
    """
    not never also just only even still already almost nearly together away back again then now often
    always sometimes soon ago up down outside inside around nearby here there very
    """
)
# Words ending in -ing / -ed that are usually nouns, so the "-ing/-ed after a noun is a verb" rule
# must not split "a brick building" or "a chocolate frosting".
ING_NOUNS = _words(
    """
    thing things string strings spring springs swing swings sling king kings ring rings wing wings sting
    building buildings ceiling ceilings clothing painting paintings railing railings evening morning
    wedding weddings pudding icing frosting topping toppings awning awnings bedding sibling siblings
    dumpling dumplings seating lighting fencing crossing landing clearing opening drawing drawings carving
    stuffing dressing stocking stockings parking housing siding flooring shelving piping wiring filling
    serving servings offering lining setting settings ending meeting meetings gathering outing reading
    """
)
ED_NOUNS = _words("speed breed greed tweed creed steed reed seed weed feed need shed sled bed")
# Token sequences that act as one preposition or as a pronoun ("each other"); matched before single words.
MULTIWORD_BOUNDARIES: tuple[tuple[str, ...], ...] = tuple(
    sorted(
        (
            tuple(s.split())
            for s in (
                "in front of",
                "on top of",
                "to the left of",
                "to the right of",
                "left of",
                "right of",
                "next to",
                "close to",
                "out of",
                "in between",
                "because of",
                "instead of",
                "each other",
                "one another",
            )
        ),
        key=len,
        reverse=True,
    )
)
_APOSTROPHES = str.maketrans({"’": "'"})


@dataclass(frozen=True)
class _Token:
    text: str
    lower: str
    start: int
    end: int


class RuleBasedChunker:
    """Noun phrases from closed word lists and a few positional rules; no model, no download.

    Deterministic and dependency-free, so tests and offline machines can extract phrases; less
    accurate than spaCy on unusual sentences. The rules, in order:

    1. Tokenise with ``_TOKEN_RE`` keeping character offsets (words may contain "-" and apostrophes).
    2. Boundaries end the current phrase and are never part of one: punctuation, the multi-word
       prepositions of ``MULTIWORD_BOUNDARIES`` ("next to", "left of", "each other", and "in front of" /
       "on top of", whose "front"/"top" spaCy and NLTK would return as phrases with nothing to ground),
       prepositions, conjunctions, pronouns and contractions ("it's", anything with "n't"), adverbs,
       and the verbs/auxiliaries of ``VERBS``.
    3. A determiner, possessive determiner or number ("a", "his", "two") starts a new phrase when the
       current one already holds a word ("a man two dogs" → "a man" | "two dogs"); a determiner directly
       followed by another one is a boundary unless it is a predeterminer ("all the", but "that the").
    4. A word ending in -ing or -ed (except the nouns of ``ING_NOUNS``/``ED_NOUNS``) is a verb, hence a
       boundary, when it follows a noun in the current phrase ("a man riding") or starts a phrase with
       nothing before it ("riding a bike"); after a determiner or adjective it is a modifier
       ("a parked car", "a sleeping cat").
    5. Any other word directly followed by a determiner is a verb when it follows a noun of the current
       phrase or starts a phrase ("actor attends the premiere", "she watches the TV"); after a noun, a
       following number counts too ("holds 2 cups"). So is a word right after a standalone "to"
       ("trying to catch a frisbee").
    6. Everything else joins the phrase: adjectives/colours (``ADJECTIVES``), possessive nouns ("man's"),
       nouns used as modifiers and the head noun ("a busy city street").
    7. A finished phrase loses trailing determiners/numbers; it is dropped if nothing else remains, and
       dropped if it has no determiner and no noun (a lone "blue" or "close").
    """

    name = "rule-based-v1"

    def chunk(self, caption: str) -> list[Phrase]:
        tokens = [
            _Token(m.group(), m.group().lower().translate(_APOSTROPHES), m.start(), m.end())
            for m in _TOKEN_RE.finditer(caption)
        ]
        phrases: list[Phrase] = []
        current: list[tuple[_Token, str]] = []  # (token, role) with role in det, num, adj, mod, noun

        def flush() -> None:
            phrase = _finish_phrase(caption, current)
            if phrase is not None:
                phrases.append(phrase)
            current.clear()

        index = 0
        after_to = False  # previous token was a standalone "to" (infinitive marker or preposition)
        while index < len(tokens):
            multiword = _match_multiword(tokens, index)
            if multiword:
                flush()
                index += multiword
                after_to = False
                continue
            token = tokens[index]
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            role = self._role(token, following, current, after_to)
            after_to = token.lower == "to"
            if role is None:
                flush()
            else:
                if role in ("det", "num") and any(r not in ("det", "num") for _, r in current):
                    flush()
                current.append((token, role))
            index += 1
        flush()
        return phrases

    __call__ = chunk

    def chunk_many(self, captions: Iterable[str]) -> list[list[Phrase]]:
        return [self.chunk(caption) for caption in captions]

    @staticmethod
    def _role(token: _Token, following: _Token | None, current: list[tuple[_Token, str]], after_to: bool) -> str | None:
        """The token's role in a phrase, or None when it is a boundary (rules 2-6)."""
        word = token.lower
        if not word[0].isalnum():
            return None
        if word in PRONOUNS or "n't" in word or word in CONJUNCTIONS or word in PREPOSITIONS:
            return None
        if word in VERBS or (word in ADVERBS and word not in ADJECTIVES):
            return None
        next_word = following.lower if following is not None else ""
        next_is_det = next_word in DETERMINERS or next_word in POSSESSIVE_DETERMINERS
        if word in DETERMINERS or word in POSSESSIVE_DETERMINERS:
            if next_is_det and word not in PREDETERMINERS:
                return None  # "that the ...": a conjunction/pronoun here, not a determiner
            if word in ("that", "which", "what", "whose") and current:
                return None  # a relative pronoun after a phrase: "a bus that is parked"
            return "det"
        if word in NUMBERS or word[0].isdigit():
            return "num"
        has_noun = any(role == "noun" for _, role in current)
        if _is_participle(word):
            if has_noun or not current:
                return None
            return "mod"
        if word in ADJECTIVES:
            return "adj"
        if after_to and not current:
            return None  # infinitive: "to catch"
        if (has_noun and (next_is_det or next_word in NUMBERS or next_word[:1].isdigit())) or (
            not current and next_is_det
        ):
            return None  # a verb before its object: "actor attends the premiere", "she watches the TV"
        if word.endswith("'s"):
            return "mod"
        return "noun"


def _is_participle(word: str) -> bool:
    if word.endswith("ing"):
        return len(word) >= 5 and word not in ING_NOUNS
    if word.endswith("ed"):
        return len(word) >= 5 and word not in ED_NOUNS
    return False


def _match_multiword(tokens: list[_Token], index: int) -> int:
    for sequence in MULTIWORD_BOUNDARIES:
        end = index + len(sequence)
        if end <= len(tokens) and all(tokens[index + k].lower == word for k, word in enumerate(sequence)):
            return len(sequence)
    return 0


def _finish_phrase(caption: str, items: list[tuple[_Token, str]]) -> Phrase | None:
    """Rule 7: trim trailing determiners/numbers, drop phrases without a noun or a determiner."""
    items = list(items)
    while items and items[-1][1] in ("det", "num"):
        items.pop()
    if not items:
        return None
    roles = {role for _, role in items}
    if "noun" not in roles and not roles & {"det", "num"}:
        return None
    if roles <= {"det", "num"}:
        return None
    start, end = items[0][0].start, items[-1][0].end
    return Phrase(caption[start:end], start, end)

"""Which language a model answered in: a small rule-based identifier for the problem set's languages.

``identify_language(text)`` returns one of :data:`LABELS`: a language of the problem set
(zh en es ar ja ko sw), ``"none"`` for a text without letters (digits and punctuation only, e.g.
``" 120"``), ``"latin"`` for Latin-script letters whose language cannot be decided, or
``"other"`` for a script that no language of the set uses (Cyrillic, Greek, Hebrew, ...).

Method (pure Python, deterministic, no model or dependency):

1. The text is NFKC-normalized (full-width Latin and half-width katakana become their ordinary
   forms) and its letters are counted per script with :func:`interp_tl.prompts.char_script`;
   digits, punctuation and symbols are not letters. No letter at all gives ``"none"``.
2. The script family with the most letters decides: Hangul gives ``ko``, Arabic gives ``ar``,
   Han (CJK ideographs together with hiragana and katakana) gives ``ja`` when any kana is present
   and ``zh`` otherwise (Japanese text nearly always has kana; Chinese has none), Latin goes on to
   step 3, and any other script gives ``"other"``. Ties between families go to the first in the
   order Han, Arabic, Hangul, Latin (a set language's script wins over stray Latin letters such as
   the ``C`` of ``C(5, 3)``), then other scripts alphabetically.
3. Latin-script text is scored for en, es and sw by word evidence: the lowercased text is split
   into runs of letters (accented letters included), and each word found in exactly one language's
   word list scores one for that language; a word in two lists (``la``, ``una``, ``a``) counts for
   none. A language's word list is the vocabulary of its packaged problem templates and answer
   sentence (placeholders removed) plus a hand-written list of common function words. Each of the
   Spanish-only characters ñ á é í ó ú ü ¿ ¡ scores one more for es. The highest score wins; a tie at the top or no
   evidence at all gives ``"latin"``.

Pitfall: the word lists are short, so a Latin-script answer in another language (French, Latin
variable names only, ``x = 5``) is ``"latin"``, and short answers with one common word are decided
by that one word.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache

from interp_tl.errors import BadInputError
from interp_tl.prompts import char_script, load_answer_forms, load_templates

#: The problem set's languages that the identifier knows, in the packaged order.
LANGUAGES: tuple[str, ...] = ("zh", "en", "es", "ar", "ja", "ko", "sw")

#: Every label :func:`identify_language` can return, in the order :func:`language_counts` uses.
LABELS: tuple[str, ...] = (*LANGUAGES, "none", "latin", "other")

#: Latin-script languages scored by word evidence.
LATIN_LANGUAGES: tuple[str, ...] = ("en", "es", "sw")

#: Hand-written common words (function words and the vocabulary of a math answer) per language.
COMMON_WORDS: Mapping[str, frozenset[str]] = {
    "en": frozenset(
        "the of and to a an in is it that this for on with as are be by we so or not but from at which there "
        "then therefore because answer when what how if each all has have was will can its first two three one "
        "number numbers equals result value times plus divided multiply remainder sum".split()
    ),
    "es": frozenset(
        "el la los las de del que y es en un una por para con no se lo al como más pero su sus son entre cuando "
        "cuál cual qué este esta esto entonces porque tanto respuesta resultado tenemos dos tres cuatro cinco "
        "igual suma resto número números primer primero también sobre sin muy hay ser o a".split()
    ),
    "sw": frozenset(
        "na ya wa kwa ni za la cha vya katika kama hii hiyo huo hilo lakini au pia sana kuwa kwamba hivyo baada "
        "kabla sababu basi jibu ili yake wake zake kila moja mbili tatu nne tano sita saba nane tisa kumi jumla "
        "hapa sasa bado tena zaidi chini juu ndani nje yetu yao sisi wao mimi wewe yeye".split()
    ),
}

#: Characters that only Spanish, of the three Latin-script languages, writes.
SPANISH_CHARS = frozenset("ñáéíóúü¿¡")

_FAMILY_ORDER: tuple[str, ...] = ("HAN", "ARABIC", "HANGUL", "LATIN")
_FAMILY_LABEL: Mapping[str, str] = {"ARABIC": "ar", "HANGUL": "ko"}
_HAN_SCRIPTS = frozenset({"CJK UNIFIED", "CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA"})
_KANA_SCRIPTS = frozenset({"HIRAGANA", "KATAKANA"})
_WORD = re.compile(r"[^\W\d_]+")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _words(text: str) -> list[str]:
    """The lowercased runs of letters of ``text`` (accented letters kept, digits and ``_`` split)."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _word_owner() -> Mapping[str, str]:
    """``{word: language}`` for every word in exactly one Latin-script language's word list."""
    templates = load_templates()
    owners: dict[str, set[str]] = {}
    for lang in LATIN_LANGUAGES:
        vocab = set(COMMON_WORDS[lang])
        for template in [*templates[lang].values(), load_answer_forms()[lang]]:
            vocab.update(_words(_PLACEHOLDER.sub(" ", template)))
        for word in vocab:
            owners.setdefault(word, set()).add(lang)
    return {word: langs.pop() for word, langs in owners.items() if len(langs) == 1}


def _family(script: str) -> str:
    """The script family a letter's script belongs to (HAN groups ideographs and kana)."""
    return "HAN" if script in _HAN_SCRIPTS else script


def _family_rank(family: str) -> tuple[int, str]:
    """Tie-break order of families: Han, Arabic, Hangul, Latin, then others alphabetically."""
    if family in _FAMILY_ORDER:
        return _FAMILY_ORDER.index(family), ""
    return len(_FAMILY_ORDER), family


def latin_scores(text: str) -> dict[str, int]:
    """Word-evidence scores of ``text`` for each Latin-script language (step 3 of the method).

    Args:
        text: any text; only its Latin-script words and Spanish-only characters count.

    Returns:
        ``{language: score}`` for en, es and sw, in that order.
    """
    owner = _word_owner()
    scores = dict.fromkeys(LATIN_LANGUAGES, 0)
    normalized = unicodedata.normalize("NFKC", text)
    for word in _words(normalized):
        lang = owner.get(word)
        if lang is not None:
            scores[lang] += 1
    scores["es"] += sum(1 for char in normalized.lower() if char in SPANISH_CHARS)
    return scores


def _latin_label(text: str) -> str:
    """The Latin-script language with the strictly highest score, else ``"latin"``."""
    scores = latin_scores(text)
    best = max(scores.values())
    winners = [lang for lang, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else "latin"


def identify_language(text: str) -> str:
    """Identify the language of one text (e.g. a model's answer to a problem of the set).

    Args:
        text: the text to classify.

    Returns:
        one of :data:`LABELS`: a language code, ``"none"`` (no letters), ``"latin"`` (Latin
        letters of an undecided language) or ``"other"`` (a script none of the languages uses).

    Raises:
        BadInputError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise BadInputError(f"identify_language needs a string, got {type(text).__name__}")
    normalized = unicodedata.normalize("NFKC", text)
    scripts = Counter(script for script in map(char_script, normalized) if script is not None)
    if not scripts:
        return "none"
    families: Counter[str] = Counter()
    for script, count in scripts.items():
        families[_family(script)] += count
    family = min(families, key=lambda fam: (-families[fam], _family_rank(fam)))
    if family == "HAN":
        return "ja" if any(scripts[kana] for kana in _KANA_SCRIPTS) else "zh"
    if family == "LATIN":
        return _latin_label(normalized)
    return _FAMILY_LABEL.get(family, "other")


def language_counts(texts: Iterable[str]) -> dict[str, int]:
    """Count the texts identified as each label.

    Args:
        texts: the texts to classify (a sequence or any iterable of strings).

    Returns:
        ``{label: count}`` with every label of :data:`LABELS`, in that order, 0 when absent.

    Raises:
        BadInputError: ``texts`` is a single string (which would be counted letter by letter),
            or one of its items is not a string.
    """
    if isinstance(texts, str):
        raise BadInputError("language_counts needs an iterable of texts, got a single string")
    counts = dict.fromkeys(LABELS, 0)
    for text in texts:
        counts[identify_language(text)] += 1
    return counts

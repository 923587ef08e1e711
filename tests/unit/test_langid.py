"""Language identification of model outputs: the problem set's prompts, hand-written answers, edge cases."""

import pytest

from interp_tl.errors import BadInputError
from interp_tl.langid import LABELS, LANGUAGES, identify_language, language_counts, latin_scores
from interp_tl.prompts import generate_problems, languages


def test_labels_cover_the_problem_set():
    assert LANGUAGES == languages()
    assert LABELS == (*languages(), "none", "latin", "other")


@pytest.mark.parametrize("lang", languages())
def test_every_prompt_is_identified_as_its_language(lang):
    problems = generate_problems(50, seed=5)
    wrong = [(p.prompts[lang], identify_language(p.prompts[lang])) for p in problems
             if identify_language(p.prompts[lang]) != lang]
    assert not wrong


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("So the answer is 42 because we multiply the two numbers.", "en"),
        ("Por lo tanto, la respuesta es 42 porque multiplicamos los dos números.", "es"),
        ("Kwa hiyo jibu ni 42 kwa sababu tunazidisha namba mbili.", "sw"),
        ("所以答案是42。", "zh"),
        ("答えは42です。", "ja"),
        ("따라서 답은 42입니다.", "ko"),
        ("إذن الجواب هو 42.", "ar"),
        ("The remainder is 3.", "en"),
        ("El resultado es 12.", "es"),
        ("Jibu ni 12.", "sw"),
        ("カタカナだけ", "ja"),
        ("Ｔｈｅ ａｎｓｗｅｒ ｉｓ ４２", "en"),
    ],
)
def test_handwritten_answers(text, lang):
    assert identify_language(text) == lang


@pytest.mark.parametrize("text", [" 120", "42.", "", "   ", "3 × 4 = 12!", "(5, 3) = 10", "١٢٣"])
def test_no_letters_is_none(text):
    assert identify_language(text) == "none"


@pytest.mark.parametrize("text", ["xqz blorp", "x = 5", "C(5, 3)", "la una"])
def test_latin_without_evidence_is_latin(text):
    # "la" and "una" are both Spanish and Swahili words: ambiguous, so no evidence either way.
    assert identify_language(text) == "latin"


def test_latin_tie_is_latin():
    assert latin_scores("the na") == {"en": 1, "es": 0, "sw": 1}
    assert identify_language("the na") == "latin"


def test_spanish_characters_are_evidence():
    assert latin_scores("¿Qxz?") == {"en": 0, "es": 1, "sw": 0}
    assert identify_language("¿Qxz?") == "es"
    assert latin_scores("ñandú") == {"en": 0, "es": 2, "sw": 0}
    assert identify_language("blorp") == "latin"


@pytest.mark.parametrize("text", ["Ответ равен 42.", "Η απάντηση είναι 42.", "התשובה היא 42"])
def test_other_scripts_are_other(text):
    assert identify_language(text) == "other"


def test_majority_script_decides_a_mixed_text():
    # CJK dominates a few Latin letters: Chinese.
    assert identify_language("所以最后的答案是四十二 (ok)") == "zh"
    # Latin dominates one ideograph: decided by the English words.
    assert identify_language("The answer is 42, that is 答 in the problem.") == "en"
    # Hangul dominates the Latin "C" of the combinatorics prompt.
    assert identify_language("C(5, 3) 의 값을 구하시오.") == "ko"
    # Cyrillic dominates, even with an English word present.
    assert identify_language("Ответ равен 42 (answer)") == "other"
    # Arabic dominates one Latin word.
    assert identify_language("إذن الجواب النهائي هو 42 the") == "ar"


def test_kana_marks_japanese_even_when_ideographs_dominate():
    assert identify_language("計算結果の値") == "ja"
    assert identify_language("計算結果值") == "zh"


def test_family_tie_prefers_the_set_script_over_latin():
    assert identify_language("C 답") == "ko"
    assert identify_language("x 答") == "zh"


def test_language_counts_has_every_label_in_order():
    counts = language_counts(["所以答案是42。", "42", "Jibu ni 12.", "Jibu ni 13.", "Ответ"])
    assert list(counts) == list(LABELS)
    assert counts == {"zh": 1, "en": 0, "es": 0, "ar": 0, "ja": 0, "ko": 0, "sw": 2,
                      "none": 1, "latin": 0, "other": 1}
    assert language_counts([]) == dict.fromkeys(LABELS, 0)
    assert language_counts(iter(["x"])) == {**dict.fromkeys(LABELS, 0), "latin": 1}


@pytest.mark.wrong_types
def test_bad_input_raises():
    with pytest.raises(BadInputError, match="single string"):
        language_counts("so the answer")
    with pytest.raises(BadInputError, match="needs a string"):
        identify_language(42)
    with pytest.raises(BadInputError, match="needs a string"):
        language_counts(["ok", None])


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("answer", [0, 7, 42, 1234567])
def test_every_answer_sentence_is_identified_as_its_language(lang, answer):
    from interp_tl.generation import answer_text
    from interp_tl.prompts import answer_sentence

    assert identify_language(answer_sentence(answer, lang)) == lang
    assert identify_language(answer_text(answer, lang)) == lang  # the completion: leading space
    assert identify_language(f" {answer}") == "none"  # the number alone has no language


def test_answer_sentences_are_distinct_and_hold_the_number_once():
    from interp_tl.generation import extract_answer, numbers_in
    from interp_tl.prompts import answer_sentence, load_answer_forms

    forms = load_answer_forms()
    assert list(forms) == list(languages())
    assert len(set(forms.values())) == len(forms)
    for lang in forms:
        text = answer_sentence(9081, lang)
        assert numbers_in(text) == ["9081"] and extract_answer(text) == 9081

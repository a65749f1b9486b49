"""Post-processing of generated captions, as the report describes it (§4.2, §4.4, §4.6):

- control characters (and invisible format characters) are stripped and whitespace is collapsed;
- common introductory phrases ("The image shows", "The video starts with", "На изображении …") are removed
  by regular expressions and the rest starts with a capital letter;
- sentences with characters outside the caption language's script are dropped: Cyrillic or CJK in an
  English caption (the report's OCR / mixed-language errors), Latin or CJK in a Russian one.

``clean_caption(text, language)`` does all three; each step is a public function for the tests.
"""

from __future__ import annotations

import re
import unicodedata

LANGUAGES = ("en", "ru")

_CYRILLIC = "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f"
_CJK = ("\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf"
        "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef")
_LATIN = "A-Za-z\u00c0-\u024f"
FOREIGN = {
    "en": re.compile(f"[{_CYRILLIC}{_CJK}]"),
    "ru": re.compile(f"[{_LATIN}{_CJK}]"),
}

_MEDIA_EN = r"(?:image|picture|photo(?:graph)?|illustration|painting|drawing|video|clip|footage|scene|frame|shot)"
_VERBS_EN = (r"(?:shows|showcases|depicts|features|displays|captures|presents|portrays|illustrates|contains|"
             r"highlights|is\s+showing|is\s+depicting)")
INTRO_EN = [
    # "The image shows", "This photograph depicts a", "The video features"
    re.compile(rf"^(?:the|this)\s+{_MEDIA_EN}\s+{_VERBS_EN}(?:\s+that)?[\s:,]+", re.IGNORECASE),
    # "The video starts with", "The clip begins by showing", "The video opens on"
    re.compile(rf"^(?:the|this)\s+{_MEDIA_EN}\s+(?:starts|begins|opens)(?:\s+(?:with|on|by\s+showing))?[\s:,]+", re.IGNORECASE),
    # "In this image, ", "In the video we see ", "Here we see "
    re.compile(rf"^(?:in|within)\s+(?:the|this)\s+{_MEDIA_EN}\s*,?\s*(?:(?:we|you)\s+(?:can\s+)?see\s+|there\s+(?:is|are)\s+)?",
               re.IGNORECASE),
    re.compile(r"^(?:here\s+)?(?:we|you)\s+(?:can\s+)?see\s+", re.IGNORECASE),
    # "This is an image of", "The image is a close-up of" -> "A close-up of"
    re.compile(rf"^(?:this|it)\s+is\s+an?\s+{_MEDIA_EN}\s+(?:of|showing|depicting)\s+", re.IGNORECASE),
    re.compile(rf"^(?:the|this)\s+{_MEDIA_EN}\s+is\s+(?=an?\s)", re.IGNORECASE),
]
_MEDIA_RU = r"(?:изображени[еи]|картинк[еа]|фото(?:графи[ия])?|снимк[еа]|видео(?:ролик[ае])?|кадр[еа]|сцен[еа])"
INTRO_RU = [
    # "На изображении показан", "На этом фото изображена", "На видео мы видим"
    re.compile(rf"^на\s+(?:этом\s+|данном\s+)?{_MEDIA_RU}\s*,?\s*(?:(?:мы\s+)?(?:видим|видно)|"
               r"(?:показан|изображен|запечатлен|представлен)[аоы]?)?[\s:,]*", re.IGNORECASE),
    # "Изображение показывает", "Видео начинается с"
    re.compile(rf"^(?:это\s+|данное\s+)?{_MEDIA_RU}\s+(?:показывает|изображает|демонстрирует|представляет)[\s:,]+",
               re.IGNORECASE),
    re.compile(rf"^{_MEDIA_RU}\s+начинается\s+(?:с|со)\s+", re.IGNORECASE),
]
INTRO = {"en": INTRO_EN, "ru": INTRO_RU}

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_SPACES = re.compile(r"[ \t\u00a0]+")


def strip_control(text: str) -> str:
    """Control and format characters removed (tabs and line breaks become spaces, paragraph breaks kept
    as one newline), runs of spaces collapsed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    kept = "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))
    lines = [_SPACES.sub(" ", line).strip() for line in kept.split("\n")]
    return "\n".join(line for line in lines if line)


def remove_intro(text: str, language: str = "en") -> str:
    """The leading introductory phrase removed (repeatedly: "In this image, the image shows ..."), the rest
    capitalised."""
    patterns = INTRO[language]
    while True:
        before = text
        for pattern in patterns:
            text = pattern.sub("", text, count=1)
        if text == before:
            break
    return text[:1].upper() + text[1:]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def drop_foreign_sentences(text: str, language: str = "en") -> str:
    """Sentences with a character of another script removed (see ``FOREIGN``)."""
    foreign = FOREIGN[language]
    return " ".join(s for s in sentences(text) if not foreign.search(s))


def clean_caption(text: str, language: str = "en") -> str:
    """The report's post-processing of one caption: control characters, intro phrase, foreign sentences."""
    if language not in LANGUAGES:
        raise ValueError(f"caption language must be one of {LANGUAGES}, not {language!r}")
    text = strip_control(text)
    text = remove_intro(text, language)
    text = drop_foreign_sentences(text, language)
    return remove_intro(text, language).strip()

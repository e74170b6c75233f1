"""Message-level tests deciding whether names and places can be PII at all.

Names and places are PII only in *personal* messages (first person, a relation, a
greeting, a writing task, or structured PII present); public figures in factual
questions and famous places in trivia are not (data rules in ``data/guards/README.md``).
These cheap regex tests decide that, find a sentence and whether it is a factual
question, and gate the spaCy pass (``may_contain_names``), which costs a few ms.
"""

from __future__ import annotations

import regex

from mixroute.guards.pii_lexicon import CUE_NAME, CUE_PLACE, NAME_WORD, NOT_NAMES, RELATIONS

_GENERAL_START = regex.compile(
    r"(?i)^\s*[\"\u201c]?(?:what|who|whom|whose|when|where|which|why|how|is|are|was|were|did|"
    r"does|do|has|have|had|in\s+which|name\s+the|list|explain|"
    r"describe|summari[sz]e|compare|tell\s+me|give\s+me|convert|calculate)\b"
)
_REQUEST_START = regex.compile(
    r"(?i)^\s*[\"\u201c]?(?:please\s+)?(?:can|could|would|will)\s+(?:you|u)\b"
)
_FIRST_PERSON = regex.compile(
    r"\b(?:I|I'm|I\u2019m|I've|I\u2019ve|I'd|I\u2019d|I'll|I\u2019ll)\b"
    r"|(?i:\b(?:me|my|mine|myself|we|we're|we\u2019re|we've|we\u2019ve|we'd|our|ours|ourselves)\b)"
    r"|\bus\b"
)
_GENERAL_ME = regex.compile(r"(?i)\b(?:tell|give|show)\s+me\b")
_PERSONAL_WORDS = regex.compile(
    rf"(?i)\b(?:{RELATIONS}|hello|hi|hey|dear|regards|sincerely|cheers|thanks|thank\s+you|"
    r"best\s+wishes|birthday|anniversary|"
    r"rsvp|apology|invitation|wedding|funeral|resume|résumé|cv|cover\s+letter|bio|"
    r"signature|out-of-office|landlord|neighbou?r|shipping|delivery|form|label|"
    r"contact|reply|draft|compose|write\s+(?:a|an|the|my|to)|send|text\s+my|"
    r"(?:full\s+|first\s+|last\s+|sur)?name\s+(?:is|to|of|on|as|:)|(?:card|account\s+)holder|"
    r"beneficiary|payee|(?:the|my|her|his|their)\s+name)\b"
    r"|(?:^|[.!?:]\s+)(?i:please\s+)?(?i:invite|email|e-mail|text|call|message|remind|tell|ask|"
    r"thank|congratulate|forward|cc|notify|inform|welcome|greet)\s+\p{Lu}"
)
_ABBREVIATION = r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Jr|Sr|Rev|Mt|Ft|No|vs|etc|approx|[A-Z])\."
_SENTENCE_SPLIT = regex.compile(rf"(?<=[.!?])(?<!{_ABBREVIATION})[\"\u201d']?\s+|\n+")
_ENDS_WITH_ABBREVIATION = regex.compile(rf"{_ABBREVIATION}$")
_TITLE_WORD = regex.compile(rf"(?<![\p{{L}}\d_@./\-]){NAME_WORD}")


def sentence_of(text: str, start: int) -> str:
    """The sentence that contains offset ``start``."""
    begin = 0
    for match in _SENTENCE_SPLIT.finditer(text):
        if match.end() > start:
            return text[begin : match.start()]
        begin = match.end()
    return text[begin:]


def is_question(sentence: str) -> bool:
    """A factual question: wh-/yes-no start, or a "?" that is not a polite request."""
    if _GENERAL_START.match(sentence):
        return True
    return sentence.rstrip().endswith("?") and not _REQUEST_START.match(sentence)


def is_personal(text: str, has_structured: bool = False) -> bool:
    """Is this message about private people (so names and places in it are PII)?

    True with structured PII, a first-person word (other than "tell me"/"give me"), a
    relation ("my son", "landlord"), a greeting or a personal writing task ("write an
    apology", "RSVP"). A factual or trivia question has none of these, which is how
    "When did Rosa Parks..." stays PII-free.
    """
    if has_structured:
        return True
    stripped = _GENERAL_ME.sub(" ", text)
    return bool(_FIRST_PERSON.search(stripped) or _PERSONAL_WORDS.search(stripped))


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'\u201c\u2018(")
    if not before:
        return True
    return before[-1] in "!?\n" or (
        before[-1] == "." and not _ENDS_WITH_ABBREVIATION.search(before)
    )


def may_contain_names(text: str, has_structured: bool = False) -> bool:
    """Cheap pre-filter deciding whether the spaCy NER pass runs at all.

    Rule: the message is personal (``is_personal``) AND it has a capitalised word that is
    not a known non-name (``NOT_NAMES``) and either is not the first word of a sentence,
    or the message has a name/place cue ("my name is", "I'm", "this is", "call me",
    "Dear", "X here", "live in", "moved to", "from"). Names in questions about history or
    trivia would be dropped by policy anyway, so skipping NER there loses nothing.
    """
    if not is_personal(text, has_structured):
        return False
    has_cue = bool(CUE_NAME.search(text) or CUE_PLACE.search(text))
    for match in _TITLE_WORD.finditer(text):
        word = match.group().rstrip("'\u2019")
        if word.endswith(("'s", "\u2019s")):
            word = word[:-2]
        if word in NOT_NAMES:
            continue
        if has_cue or not _sentence_initial(text, match.start()):
            return True
    return False

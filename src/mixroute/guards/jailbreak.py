"""Jailbreak and prompt-injection scoring on the shared request embedding.

The gateway embeds the classification text once and every signal reuses that vector, so
this guard adds only a dot product and a handful of regular expressions to a request
(tens of microseconds). The score is one logistic regression over two kinds of input:

* the 384 embedding dimensions, which carry what the prompt is *about* and how it is
  framed (a persona that "has no rules", a harmful request wrapped in a story), and
* a few counts of surface patterns the small embedding model blurs: override phrases
  ("ignore all previous instructions"), persona names ("DAN", "developer mode"),
  base64/hex/binary runs, leetspeak, chat-template delimiters, text addressed to "the AI"
  inside pasted content.

The lexical counts are inputs of the same regression, weighted by training, never
hand-set rules: a hard-benign prompt that says "ignore case when sorting" gets a small
nudge from one override-ish word, not a block. Their weights live in the same ``.npz``
as the embedding coefficients (``JailbreakHead``), next to the list of feature names,
so a head is only ever paired with the feature code it was trained with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mixroute.semantic.heads import HeadError, LinearHead

CLASSES = ("benign", "jailbreak")
DEFAULT_THRESHOLD = 0.5

FloatArray = npt.NDArray[np.float32]

# Phrase features: (name, trigger words, pattern). The pattern runs on the lower-cased
# text, and only when every "|"-separated group of trigger words has a word in the text,
# which skips almost every regular expression for an ordinary prompt. Every way a pattern
# can match satisfies its triggers (a test checks this on the training corpora). A value
# is log1p(number of matches), so a second "ignore the rules" adds less than the first and
# a long pasted document cannot dominate the score.
_RULE_WORDS = (
    r"(?:instructions?|rules|directives?|guidelines|prompts?|restrictions|constraints|"
    r"polic(?:y|ies)|programming|configuration|setup|guardrails|alignment|directions|"
    r"commands|orders|safeguards|filters?)"
)
_RULE_TRIGGERS = (
    "instruction instructions rules directive directives guidelines prompt prompts "
    "restrictions constraints policy policies programming configuration setup "
    "guardrails alignment directions commands orders safeguards filter filters"
)
_PHRASES: tuple[tuple[str, str, str], ...] = (
    (
        "override",
        "ignore disregard forget skip discard scrap cancel abandon override bypass set "
        "clear unlearn revoke stop throw erase drop | " + _RULE_TRIGGERS,
        r"\b(?:ignore|disregard|forget|skip|discard|scrap|cancel|abandon|override|bypass|"
        r"set aside|clear|unlearn|revoke|stop following|throw away|erase|drop)\b"
        r"\W+(?:\w+\W+){0,4}?" + _RULE_WORDS + r"\b",
    ),
    (
        "prior_instructions",
        "previous prior above earlier preceding initial original old existing everything "
        "| above before prior " + _RULE_TRIGGERS,
        r"\b(?:previous|prior|above|earlier|preceding|initial|original|old|existing)\s+"
        r"(?:\w+\s+)?" + _RULE_WORDS + r"\b|\beverything (?:above|before|prior)\b",
    ),
    (
        "new_rules",
        "now point moment message here starting effective rest new real true actual only "
        "replacement supersede supersedes longer",
        r"\b(?:from now on|from (?:this|here) (?:point|moment|message) (?:on|forward)|from here on|"
        r"starting now|effective immediately|for the rest of (?:this|our|the) "
        r"(?:chat|conversation|session)|new (?:instructions?|directives?|rules|policy|"
        r"persona|identity|mode|priority)|(?:real|true|actual|only|replacement) "
        r"(?:task|instructions?|directive|goal|purpose|mission)|supersedes?|"
        r"no longer (?:bound|restricted|in effect))\b",
    ),
    (
        "identity_shift",
        "now longer will going act acting pretend role roleplay play character respond "
        "answer simulate impersonate",
        r"\b(?:you are now|you're now|you are no longer|you're no longer|"
        r"you will (?:now )?be|you are going to (?:act|be|pretend)|act as|act like|"
        r"acting as|pretend (?:to be|you are|you're|that you)|role-?\s?play|"
        r"play the (?:role|part)|stay in character|break(?:ing)? character|"
        r"in character|respond as|answer as|simulate|impersonate)\b",
    ),
    (
        "persona_name",
        "anything jailbroken jailbreak jailbreaked jailbreaking mode evil unfiltered "
        "uncensored unrestricted unbound unchained unaligned liberated amoral",
        r"\b(?:do anything now|jailbr(?:oken|eak(?:ed|ing)?)|developer mode|dev mode|"
        r"god mode|opposite mode|evil (?:twin|mode|bot|ai|assistant)|unfiltered|uncensored|"
        r"unrestricted|unbound|unchained|unaligned|liberated|amoral)\b",
    ),
    (
        "no_limits",
        "no without free zero remove disable disabled turn lift suspend suspended abolish "
        "abolished ignore | restrictions restriction filters filter filtering limits limit "
        "limitations rules guidelines safety safeguards guardrails censorship content "
        "moderation refusals refusal warnings disclaimers ethics morals boundaries",
        r"\b(?:no|without(?: any)?|free of|zero|remove|disabled?|turn off|lift|"
        r"suspend(?:ed)?|abolish(?:ed)?|ignore)\s+(?:the\s+|your\s+|all\s+|any\s+)?"
        r"(?:restrictions?|filters?|filtering|limits?|limitations|rules|guidelines|"
        r"safety(?: \w+)?|safeguards|guardrails|censorship|content polic(?:y|ies)|"
        r"moderation|refusals?|warnings|disclaimers|ethics|morals|boundaries)\b",
    ),
    (
        "never_refuse",
        "refuse decline say warn moralize lecture break comply obey answer questions "
        "commentary question refusing hesitation disabled",
        r"\b(?:(?:never|don'?t|do not|won'?t|will not|cannot|can'?t)\s+"
        r"(?:refuse|decline|say no|warn|moralize|lecture|break character)|"
        r"(?:must|will|shall|always)\s+(?:comply|obey|answer)|"
        r"answer (?:everything|anything|any question|every question)|"
        r"no questions asked|without (?:commentary|question|refusing|hesitation)|"
        r"refusals? (?:are|is) disabled)\b",
    ),
    (
        "system_prompt",
        "prompt message instruction instructions text preamble window preprompt",
        r"\b(?:system|developer|hidden|initial|original|secret|operator|pre-?conversation|"
        r"setup|backstage|confidential|initialization|configuration|deployment)\s+"
        r"(?:prompt|message|instructions?|text|preamble)\b|\bcontext window\b|"
        r"\bpre-?prompt\b",
    ),
    (
        "verbatim",
        "verbatim word exactly nothing summarize summarise full unedited everything",
        r"\b(?:verbatim|word for word|exactly as (?:written|given|it was)|"
        r"leave nothing out|don'?t summari[sz]e|do not summari[sz]e|in full|unedited|"
        r"include everything)\b",
    ),
    (
        "reveal",
        "reveal print repeat output dump leak display recite echo paste quote spell copy "
        "| instructions prompt configuration setup directives guidelines initialization rules",
        r"\b(?:reveal|print|repeat|output|dump|leak|display|recite|echo|paste|quote|"
        r"spell out|copy)\b\W+(?:\w+\W+){0,4}?(?:instructions|prompt|configuration|"
        r"setup|directives|guidelines|initialization|rules)\b",
    ),
    (
        "delimiter",
        "im system inst sys admin assistant user instruction instructions end endoftext "
        "new begin start eot",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|"
        r"start_header_id|end_header_id|eot_id)\|>|\[/?(?:system|inst|sys|admin|assistant)\]|"
        r"</?(?:system|user|assistant|instructions?)>|^\s*#{2,}\s*(?:end|system|new)\b|"
        r"-{3,}\s*(?:end|begin)\b|\bend of (?:document|input|user input|conversation)\b|"
        r"^\s*(?:system|assistant)\s*:",
    ),
    (
        "ai_addressed",
        "ai ais llm llms assistant assistants bot agent model models automated vision",
        r"\b(?:note|message|instructions?|notice|directive|hint)\s+(?:to|for)\s+"
        r"(?:the\s+|any\s+|all\s+)?(?:ai|llm|assistant|bot|agent|model|language model|"
        r"automated|vision)\b|\b(?:if you are|dear|hey|hello|to)\s+(?:an?\s+|the\s+)?"
        r"(?:ai|llm|assistant|bot|agent|language model)\b|\b(?:ai|llm|assistant|model)s?\s+"
        r"(?:reading|processing|summari[sz]ing|consuming|transcribing|reviewing)\b|"
        r"\b(?:ai|llm|assistant|bot|agent|model)\s*[,:]",
    ),
    (
        "encoding_words",
        "base base64 rot rot13 caesar hex hexadecimal morse leetspeak pig backwards reverse "
        "reversed cipher decode encoded acrostic unicode",
        r"\b(?:base-?64|rot-?13|caesar|hex(?:adecimal)?|morse|leetspeak|pig latin|"
        r"backwards|reversed?|cipher|decode|encoded|acrostic|unicode)\b",
    ),
    (
        "hypothetical",
        "hypothetical hypothetically imagine suppose if thought purely alternate parallel "
        "world sake theoretically counterfactual worldbuilding purposes",
        r"\b(?:hypothetical(?:ly)?|imagine|suppose|what if|thought experiment|"
        r"purely (?:as|for)|alternate (?:universe|history|reality)|parallel universe|"
        r"in a world where|for the sake of argument|theoretically|counterfactual|"
        r"worldbuilding|(?:educational|research) purposes)\b",
    ),
    (
        "realism_demand",
        "step detail exact technically real working realistic realism",
        r"\b(?:step[- ]by[- ]step|in (?:full |complete |working |exact |real )?detail|"
        r"exact (?:steps|amounts|quantities|instructions|method|wording)|"
        r"technically (?:accurate|correct)|real,? working|working (?:code|method|"
        r"instructions|set)|with real|realistic (?:materials|amounts)|for realism)\b",
    ),
    (
        "your_rules",
        "your | rules guidelines instructions restrictions programming safety filter filters "
        "policy policies limits training creator creators developer developers prompt "
        "configuration setup context",
        r"\byour (?:own )?(?:\w+ )?(?:rules|guidelines|instructions|restrictions|programming|"
        r"safety|filters?|polic(?:y|ies)|limits|training|creators?|developers?|prompt|"
        r"configuration|setup|context)\b",
    ),
    (
        # Questions about a topic ("What does 'ignore previous instructions' mean?") are
        # the commonest hard negatives; attacks are mostly imperatives. Learned weight < 0.
        "question_opening",
        "what why how when where which who is are does do can explain describe",
        r"\A\s*(?:what|why|how|when|where|which|who|is|are|does|do|can you explain|explain|"
        r"describe)\b",
    ),
    (
        "authority",
        "developer creator admin administrator owner operator vendor root sysadmin "
        "security trust red department sudo god debug maintenance override authorized "
        "authorised privilege clearance",
        r"\b(?:i am|i'm|this is)\s+(?:the|your|an?)?\s*(?:developer|creator|"
        r"admin(?:istrator)?|owner|operator|vendor|root|sysadmin|"
        r"security (?:researcher|team)|trust and safety|red team(?:er)?|"
        r"it department)\b|\b(?:admin|root|sudo|god|debug|maintenance|override)\s+"
        r"(?:mode|access|privileges?|level|code|license)\b|\bauthori[sz]ed\b|"
        r"\bprivilege level\b|\bclearance\b",
    ),
)
# Shape features, computed from whitespace-separated tokens of the original text.
_SHAPES = (
    "persona_caps",  # DAN, STAN, AIM... in capitals (case matters: "dan" is a name)
    "base64_run",  # a 20+ character token of base64 alphabet mixing cases
    "hex_run",  # a 24+ character hexadecimal token
    "binary_run",  # four or more 8-bit binary groups in a row
    "leet",  # a word with a digit between letters: "h0w", "m4k3"
    "spaced_letters",  # "t e l l  m e", "h*o*w": letters split to dodge filters
    "invisible",  # zero-width and Unicode tag characters
    "mixed_script",  # Latin and Cyrillic letters in one word (homoglyphs)
)
# Only the start and the end of a long text are scanned: that bounds the cost (a few
# hundred microseconds at most) while still seeing an injection appended to a pasted
# document, which the embedding (256 tokens from the start) cannot.
_SCAN_HEAD = 1024
_SCAN_TAIL = 512
_PERSONA_CAPS = frozenset({"DAN", "STAN", "DUDE", "AIM", "BetterDAN"})
_WORD = r"[a-z0-9]+"
_BASE64_MIN = 20
_BASE64 = r"[A-Za-z0-9+/]{20,}={0,2}"
_HEX_MIN = 24
_HEX = r"[0-9a-fA-F]{24,}"
_BINARY_RUN = 4
_SPACED_RUN = 5
_LEET = r"[a-z][0134578]+[a-z]"
_SPLIT_WORD = r"\w(?:[*\-.]\w){2,}"
_INVISIBLE = r"[\u200b-\u200f\u2060-\u2064\ufeff\U000e0000-\U000e007f]"
_MIXED = r"[A-Za-z][\u0400-\u04ff]|[\u0400-\u04ff][A-Za-z]"
_EDGE_PUNCTUATION = "\"'()[]{}<>,.;:!?`"


class LexicalFeatures:
    """Counts of jailbreak surface patterns, as a small float vector.

    Everything is compiled once per instance. ``compute`` lower-cases the text, collects
    its word set, and runs a phrase pattern only when its trigger words are present, so an
    ordinary short prompt costs about 10-20 microseconds and a 300-character attack that
    opens most gates about 60 (one core, CPython 3.11). Texts longer than 1.5k characters
    are cut to their head and tail, which bounds the cost at a few hundred microseconds.
    """

    def __init__(self) -> None:
        self._phrases = tuple(
            (
                name,
                tuple(frozenset(group.split()) for group in triggers.split("|")),
                re.compile(pattern, re.MULTILINE),
            )
            for name, triggers, pattern in _PHRASES
        )
        self._word = re.compile(_WORD)
        self._base64 = re.compile(_BASE64)
        self._hex = re.compile(_HEX)
        self._leet = re.compile(_LEET)
        self._split_word = re.compile(_SPLIT_WORD)
        self._invisible = re.compile(_INVISIBLE)
        self._mixed = re.compile(_MIXED)
        self.names: tuple[str, ...] = (*(name for name, _, _ in _PHRASES), *_SHAPES)

    def __len__(self) -> int:
        return len(self.names)

    def compute(self, text: str) -> FloatArray:
        """log1p(count) per feature, in ``names`` order."""
        return np.log1p(np.asarray(self._counts(text, gated=True), dtype=np.float32))

    def compute_many(self, texts: list[str]) -> FloatArray:
        if not texts:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        return np.stack([self.compute(text) for text in texts])

    def counts(self, text: str, gated: bool = True) -> dict[str, int]:
        """Raw match counts by feature name, for explaining a score.

        ``gated=False`` runs every phrase pattern regardless of trigger words; it must
        give the same counts, which is how the trigger lists are tested.
        """
        return dict(zip(self.names, self._counts(text, gated), strict=True))

    def _counts(self, text: str, gated: bool) -> list[int]:
        if len(text) > _SCAN_HEAD + _SCAN_TAIL:
            text = f"{text[:_SCAN_HEAD]}\n{text[-_SCAN_TAIL:]}"
        low = text.lower()
        words = frozenset(self._word.findall(low))
        counts = [
            _matches(regex, low)
            if not gated or not any(words.isdisjoint(group) for group in groups)
            else 0
            for _, groups, regex in self._phrases
        ]
        counts.extend(self._shapes(text))
        return counts

    def _shapes(self, text: str) -> list[int]:
        """One pass over whitespace tokens; most are plain words and leave after two tests."""
        persona = base64 = hexes = binary = leet = spaced = 0
        binary_run = letter_run = 0
        for raw in text.split():
            token = raw.strip(_EDGE_PUNCTUATION)
            size = len(token)
            letter_run = letter_run + 1 if size == 1 and token.isalpha() else 0
            spaced += letter_run == _SPACED_RUN
            binary_run = binary_run + 1 if size == 8 and not token.strip("01") else 0
            binary += binary_run == _BINARY_RUN
            if token in _PERSONA_CAPS:
                persona += 1
            if size >= _HEX_MIN:
                hexes += _matches(self._hex, token)
            if token.isalpha() or size < 3:
                continue
            if size >= _BASE64_MIN:
                base64 += sum(
                    1
                    for m in self._base64.finditer(token)
                    if _mixed_case(m.group()) and not m.group().isalpha()
                )
            else:  # leetspeak is in words; a long encoded token is counted above
                leet += _matches(self._leet, token.lower())
            if size >= 5 and self._split_word.fullmatch(token):
                spaced += 1
        if text.isascii():
            return [persona, base64, hexes, binary, leet, spaced, 0, 0]
        invisible = _matches(self._invisible, text)
        mixed = _matches(self._mixed, text)
        return [persona, base64, hexes, binary, leet, spaced, invisible, mixed]


def _matches(regex: re.Pattern[str], text: str) -> int:
    return sum(1 for _ in regex.finditer(text))


def _mixed_case(token: str) -> bool:
    return any(c.isupper() for c in token) and any(c.islower() for c in token)


@dataclass(frozen=True)
class JailbreakHead(LinearHead):
    """A two-class ``LinearHead`` (benign, jailbreak) plus weights for lexical features.

    ``coef``/``intercept`` keep the ``LinearHead`` layout (row 0 all zeros for "benign",
    row 1 the attack direction) so the file stays readable by ``LinearHead.load``; the
    attack logit is ``coef[1] @ v + intercept[1] + lexical_coef @ f`` divided by
    ``temperature``. ``threshold`` is the recommended decision point, chosen on training
    data only (the probability at which out-of-fold recall is 90%).
    """

    lexical_names: tuple[str, ...] = ()
    lexical_coef: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    threshold: float = DEFAULT_THRESHOLD

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            **super().arrays(),
            "lexical_names": np.array(self.lexical_names, dtype=np.str_),
            "lexical_coef": self.lexical_coef.astype(np.float32),
            "threshold": np.array(self.threshold, dtype=np.float64),
        }

    @classmethod
    def load(cls, path: Path, embedding_model: str | None = None) -> JailbreakHead:
        base = LinearHead.load(path, embedding_model=embedding_model)
        try:
            with np.load(path, allow_pickle=False) as data:
                names = tuple(str(n) for n in data["lexical_names"])
                coef = data["lexical_coef"].astype(np.float32).reshape(-1)
                threshold = float(data["threshold"])
        except (OSError, KeyError, ValueError) as exc:
            raise HeadError(f"{path} is not a jailbreak head: {exc}") from exc
        if base.classes != CLASSES or base.coef.shape[0] != 2 or len(names) != coef.shape[0]:
            raise HeadError(f"{path} is not a two-class jailbreak head")
        return cls(
            classes=base.classes,
            coef=base.coef,
            intercept=base.intercept,
            temperature=base.temperature,
            embedding_model=base.embedding_model,
            lexical_names=names,
            lexical_coef=coef,
            threshold=threshold,
        )


class JailbreakDetector:
    """Probability that a prompt is a jailbreak or prompt injection, from its embedding.

    ``head`` may be a plain two-class ``LinearHead`` (embedding only) or a
    ``JailbreakHead``; a head trained with lexical features must get a ``LexicalFeatures``
    whose names match, because scoring without them would shift every probability.
    """

    def __init__(self, head: LinearHead, lexical: LexicalFeatures | None = None) -> None:
        if head.classes != CLASSES or head.coef.shape[0] != 2:
            raise ValueError(f"expected a {CLASSES} head, got classes {head.classes}")
        names = head.lexical_names if isinstance(head, JailbreakHead) else ()
        if names and lexical is None:
            raise ValueError("this head was trained with lexical features; pass LexicalFeatures")
        if lexical is not None and names != lexical.names:
            raise ValueError(
                "lexical features do not match the head's "
                f"(head: {len(names)} features, code: {len(lexical.names)}); retrain it"
            )
        self.head = head
        self.lexical = lexical if names else None
        self.threshold = head.threshold if isinstance(head, JailbreakHead) else DEFAULT_THRESHOLD
        # The two-row softmax is a sigmoid of the row difference; precompute it once.
        scale = 1.0 / head.temperature
        self._weights = ((head.coef[1] - head.coef[0]) * scale).astype(np.float32)
        self._bias = float(head.intercept[1] - head.intercept[0]) * scale
        lexical_coef = head.lexical_coef if isinstance(head, JailbreakHead) else np.zeros(0)
        self._lexical_weights = (lexical_coef * scale).astype(np.float32)

    @classmethod
    def load(cls, path: Path, embedding_model: str) -> JailbreakDetector:
        """The detector for a saved head, with the feature code it needs."""
        head = JailbreakHead.load(path, embedding_model=embedding_model)
        return cls(head, LexicalFeatures() if head.lexical_names else None)

    def logit(self, text: str, vector: FloatArray) -> float:
        z = float(vector @ self._weights) + self._bias
        if self.lexical is not None:
            z += float(self.lexical.compute(text) @ self._lexical_weights)
        return z

    def score(self, text: str, vector: FloatArray) -> float:
        """Calibrated probability of an attack, 0..1; ``vector`` is the shared embedding."""
        z = self.logit(text, vector)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def is_attack(self, text: str, vector: FloatArray) -> bool:
        return self.score(text, vector) >= self.threshold

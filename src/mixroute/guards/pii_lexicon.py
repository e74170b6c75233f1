"""What names look like and the cues that announce them: word lists and candidate patterns.

Shared by the pre-filter (``pii_prefilter``: may this message hold names at all?), the
detector (which finds name candidates with the cue patterns) and the name policy
(``pii_names``: is this span a person, a place, or nothing?), so that all three agree on
what counts as a name word and a name cue.
"""

from __future__ import annotations

import regex


def _word_set(words: str) -> frozenset[str]:
    """A frozen set from whitespace-separated words (keeps long word lists readable)."""
    return frozenset(words.split())


RELATIONS = (
    r"(?:mother|mom|mum|father|dad|parents?|sons?|daughters?|kids?|child|sister|brother|"
    r"sibling|wife|husband|spouse|partner|fianc[ée]e?|boyfriend|girlfriend|friend|"
    r"neighbou?r|landlord|landlady|tenant|roommate|flatmate|housemate|boss|manager|"
    r"supervisor|colleague|co-?worker|client|customer|student|pupil|teacher|tutor|coach|"
    r"intern|contractor|plumber|electrician|nanny|babysitter|grand(?:mother|father|ma|pa|"
    r"son|daughter|child)|aunt|uncle|cousin|nephew|niece|seller|buyer|user|employee|"
    r"assistant|doctor|dr|dentist|lawyer|attorney|accountant|therapist|guest|recipient|"
    r"sender|member|owner|agent|representative|candidate|applicant|patient|caregiver|"
    r"mentor|mentee|classmate|teammate|couple|baby)"
)
# Words right before a name that announce it, beyond the relations themselves.
NAME_LEAD = rf"(?:{RELATIONS}|name|names|signed|contact|list|guests?|attendees?|staff)"
# A capitalised name word: Diego, Zoë, Jean-Paul, O'Neill.
NAME_WORD = r"\p{Lu}(?:\p{Ll}|['\u2019]\p{Lu})[\p{L}'\u2019\-]{0,40}"
PARTICLES = _word_set(
    """
    van von de da das do dos del della di du la le der den ter ten bin al el
    """
)
NAME_PARTICLES = "(?:" + "|".join(sorted(PARTICLES)) + ")"
CUE_NAME = regex.compile(
    r"(?:\b(?i:my\s+name\s+is|name\s+is|this\s+is|i'm|i\u2019m|i\s+am|call\s+me|dear|"
    r"named|called|(?:hi|hey|hello)[,!]?\s+(?:it'?s|it\u2019s)|met|meet|meeting\s+with|"
    r"invite|email|e-mail|text|ask|tell|thank|congratulate|remind|cc|"
    r"(?:best|kind|warm)\s+regards,?|regards,|best,|cheers,|thanks,|sincerely,|love,|from:|to:)"
    r"|\b(?:Dr|Mr|Mrs|Ms|Mx|Prof)\.?"
    rf"|\b(?i:{NAME_LEAD})[:,]?)\s+"
    rf"({NAME_WORD}(?:[ \t]+(?:{NAME_PARTICLES}[ \t]+)*{NAME_WORD}){{0,2}})"
    rf"|({NAME_WORD}(?:[ \t]+{NAME_WORD})?)\s+here\b"
)
CUE_PLACE = regex.compile(
    r"(?i:\b(?:live|lives|living|lived|based|born|raised|grew\s+up|reside|resides|"
    r"residing|settled|stay(?:ing)?|work(?:ing)?\s+(?:remotely\s+)?(?:from|in))\s+"
    r"(?:in|at|near|from)?\s*|\b(?:moved|moving|move|relocated|relocating|flying|"
    r"fly|travell?ing|trip|heading)\s+(?:to|from|back\s+to)\s+|"
    r"\b(?:i'?m|i\u2019m|i\s+am|we'?re|we\s+are|originally)\s+from\s+)"
    rf"({NAME_WORD}(?:[ \-]{NAME_WORD})?)"
)
# Two to four capitalised words on one line ("Rahul Verma", "Ana de la Cruz"): names spaCy
# missed. They count only with a person cue (or a place verb), never on shape alone.
SHAPE_NAME = regex.compile(
    rf"(?<![\p{{L}}\d_@.\-])({NAME_WORD}(?:[ \t]+(?:{NAME_PARTICLES}[ \t]+)*{NAME_WORD}){{1,3}})"
    rf"(?![\p{{L}}\d@])"
)
# "from X to Y": Y is a place when X is (trips, moves, flights).
FROM_TO = regex.compile(
    rf"\bfrom\s+{NAME_WORD}(?:[ \-]{NAME_WORD}){{0,2}}\s+to\s+({NAME_WORD}(?:[ \-]{NAME_WORD})?)"
)
# Capitalised words that are never (part of) a private name: sentence starters, function
# words, calendar words, honorifics, languages, and technology or product names that NER
# often calls a person or a place ("Redis", "Confluence", "Java").
NOT_NAMES = _word_set(
    """
    I A An The My Our Your His Her Their Its This That These Those It We You He She They
    Please Hello Hi Hey Dear Thanks Thank Cheers Regards Best Good Morning Afternoon
    Evening Quick Question Can Could Would Should Shall Might Must What Who
    Whom Whose When Where Which Why How Is Are Was Were Be Do Does Did Has Have Had
    Write Draft Send Reply Help Make Format Compose Create Convert Calculate Explain
    Translate Give Tell Show List Name Note Example Subject Re Fwd Yes No Okay Also And
    Email Invite Text Call Ask Thank Remind Forward Book Set Meet Reformat Update Check
    Add Fix Schedule Cancel Move Change Find Get Buy Pay Transfer Wire Notify Introduce
    Sign Print Proofread Edit Review Summarize Rewrite Prepare Plan Organize Respond
    Contact Register Remove Delete Share Copy Attach Let Last Next Dispute Complaint
    But Or So Then If In On At To From For With By Of As Not Just Here There Today
    Tomorrow Yesterday Tonight Monday Tuesday Wednesday Thursday Friday Saturday Sunday
    January February March July September October November December Mr
    Mrs Ms Dr Prof Sir Madam Miss Inc Ltd Llc Corp Company Group Team Department Office
    Ministry Council Committee Python Java Javascript Typescript Rust Ruby Perl Kotlin
    Swift Scala Haskell Go Golang Linux Windows Mac Macos Ios Android Ubuntu Debian
    Fedora Unix Chrome Firefox Safari Edge Excel Word Powerpoint Outlook Teams Slack
    Zoom Discord Confluence Jira Notion Figma Trello Asana Docker Kubernetes Helm
    Terraform Ansible Jenkins Git Github Gitlab Bitbucket Redis Postgres Postgresql
    Mysql Sqlite Mongo Mongodb Kafka Spark Hadoop Elasticsearch Nginx Apache Tomcat Node
    React Angular Vue Svelte Django Flask Rails Laravel Spring Numpy Pandas Pytorch
    Tensorflow Keras Jupyter Vim Emacs Vscode Xcode Aws Azure Google Gmail Drive Sheets
    Docs Microsoft Apple Amazon Netflix Spotify Uber Airbnb Paypal Venmo Zelle Stripe
    Visa Mastercard Amex Discover Medicare Medicaid Marketplace Facebook Instagram
    Twitter Whatsapp Telegram Signal Linkedin Youtube Tiktok Reddit Wikipedia Openai
    Chatgpt Claude Gemini Llama Mistral Wi Fi Wifi Bluetooth Raspberry Pi Arduino Iphone
    Ipad Pixel Galaxy Kindle Alexa Siri Celsius Fahrenheit Kelvin Roman Latin Greek
    English French German Spanish Italian Portuguese Dutch Chinese Japanese Korean
    Arabic Russian Hindi Christmas Easter Halloween Thanksgiving Ramadan Hanukkah Diwali
    Internet Web Earth Moon Sun Mars Venus Jupiter Saturn Mercury Neptune Uranus Pluto
    God Lord Bible Quran Congress Senate Parliament Supreme Federal National
    International Royal Imperial Empire Time Daylight Standard Pm Am Utc Gmt
    """
)
# Words that make a span a place (or an institution), never a person: "Quebec City",
# "Lake Placid", "New Haven". Alone they are not a candidate at all.
PLACE_WORDS = _word_set(
    """
    Street Avenue Road Lane Drive Court Square City Town Village State County Province
    District Region Country North South East West Northern Southern Eastern Western
    Central Upper Lower New Old Great Little Saint St Santa San Sankt Mount Lake River
    Bay Beach Island Islands Isle Park Valley Springs Falls Harbor Harbour Port Fort
    Airport Station Hotel Bank University College School Hospital Church Museum Center
    Centre Heights Hills Gardens Tower Bridge Palace Castle Cathedral Temple Mosque Abbey
    Monument Memorial Stadium Arena Gate Wall Canal Pyramid Pyramids Opera Theatre Theater
    Zoo Aquarium Louvre
    """
)
# Words that make a span a business or product, neither a person nor a place.
ORG_WORDS = _word_set(
    """
    Support Customer Customers Service Services Desk Sales Billing Admin Helpdesk
    Studio Studios Depot Store Stores Shop Market Supermarket Restaurant Cafe Café Bar Pub
    Pharmacy Clinic Library Gym Insurance Airlines Airways Air Motors Labs Systems
    Solutions Partners Holdings Foundation Institute Academy Agency Club
    Corporation Association Society Trust Capital Bancorp Financial Energy Media Health
    Foods Pizza Burger Coffee Express Cloud Code Pro Max Plus Mini Ultra Edition Series
    Model Console Phone Watch Pad Book Card Account Prime Premium Wallet Pay Bank Credit
    """
)

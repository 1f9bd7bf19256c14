"""What a lead's reply means: the ``Intent`` values and the offline rule classifier. Pure, no I/O.

``classify(text)`` normalises the message (Unicode, case, accents, punctuation, text-speak, keyboard typos
such as "stpo" or "unsubscibe") into clauses of tokens, then tries the rules below in order; the first
match wins.

1. ``opt_out``: the FCC per-se words (stop, quit, end, revoke, opt out, cancel, unsubscribe) and the carrier
   words (STOPALL, OPTOUT, REMOVE, ARRET, TD...) as a whole message or a whole clause ("Not interested.
   Stop"), with filler allowed around them ("stop please", "STOP!!!", "ok stop it"); a stop-sign emoji on
   its own; and free text a reasonable person would mean as a revocation ("please stop texting me",
   "wrong number", "take me off your list", "no more texts", "don't contact me", "leave me alone", "no mas",
   "how do I unsubscribe?"). What is *not* an opt-out, and why:

   * a negated stop ("don't stop sending me listings", "never stop"): the negator sits right before it;
   * "stop" used as "stop by/over/at/in" ("can you stop by Saturday?") or as a noun ("the bus stop",
     "last stop"): the word after or before it says so;
   * "end" or "cancel" inside a longer clause ("the end of the month works", "cancel my Tuesday showing");
     a clause that is only "cancel" (or "I'd like to cancel") still counts, unless the same message talks
     about an appointment ("Cancel. Can we do Wed instead?" reschedules a showing). The whole message
     "cancel" always counts;
   * "is this spam?" asks who is writing: it is ``help`` (whose answer says how to opt out), while "this
     is spam" is an opt-out.

   Everything else that looks like a revocation counts: where a message is genuinely ambiguous
   ("don't call me", "please don't text me after 8pm", "stop sending me listings in Tampa", "I never
   signed up for this") the rules choose ``opt_out``, because the FCC makes any reasonable revocation
   binding and a wrongly kept lead costs more than a wrongly released one. Typo tolerance only ever
   corrects *towards* these words, and real words one typo away ("top", "shop", "subscribe") are never
   corrected.
2. ``opt_in``: START, UNSTOP, "resume texts", "opt in", "you can text me again"... never when the message
   holds a negation ("don't start texting me" is an opt-out), and never from typo correction: re-enabling
   texts needs a clear request. "YES" alone is not an opt-in here: in a follow-up thread it answers the
   bot's question, and in GHL only START lifts SMS DND.
3. ``help``: HELP or INFO as a clause, and "who is this?", "how did you get my number?", "is this a bot?".
4. ``already_sold``, 5. ``has_agent``, 6. ``not_interested``: checked before ``interested`` because they
   contain its words ("not interested", "I have an agent, but..."); a negated match ("we haven't sold
   yet", "I don't have an agent") does not count, nor does one inside a question ("is it under
   contract?"). When the message goes on with "but"/"now"/"only" to ask for something, that request
   decides ("not now, but what's my house worth?", "we sold our condo and now want to buy").
7. ``interested`` (strong: asks to talk, meet, tour, or proposes a time), 8. ``home_value``,
   9. ``interested`` (weak: "yes", "sounds good", "I'm interested"), 10. ``question`` ("?" or a property
   topic such as HOA fees), 11. ``other``.

``meeting_hint`` (only for ``interested`` and ``question``) is the last day mentioned (a reschedule names
the new day last) joined with the nearest time or part of day: "Saturday", "tomorrow at 3pm", "Wednesday
morning", "end of the month"; or a clock time alone ("after 5pm").
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache


class Intent(StrEnum):
    """What the lead wants. Values are stable strings: they are stored in graph state and GHL notes."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    INTERESTED = "interested"
    HOME_VALUE = "home_value"
    NOT_INTERESTED = "not_interested"
    HAS_AGENT = "has_agent"
    ALREADY_SOLD = "already_sold"
    QUESTION = "question"
    OTHER = "other"


COMPLIANCE_INTENTS: frozenset[Intent] = frozenset({Intent.OPT_OUT, Intent.OPT_IN, Intent.HELP})
"""Intents whose answer is fixed by SMS rules; responders never let a model decide these replies."""


@dataclass(frozen=True)
class Classification:
    """The classifier's verdict.

    ``confidence`` is in [0, 1]: 1.0 for an exact keyword message, about 0.9 for a clear phrase, 0.6 for a
    weak signal ("yes", a bare "?"), 0.3 for ``other``. ``matched`` names the rule and the words that fired
    it (``"keyword:stop"``, ``"phrase:wrong number"``), ``None`` for ``other``.
    """

    intent: Intent
    confidence: float
    matched: str | None = None
    meeting_hint: str | None = None


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _alias_table(text: str) -> dict[str, tuple[str, ...]]:
    """``"pls=please rn=right+now"`` -> ``{"pls": ("please",), "rn": ("right", "now")}``."""
    pairs = (item.split("=") for item in text.split())
    return {wrong: tuple(right.split("+")) for wrong, right in pairs}


# Text-speak and common misspellings that edit distance alone would not fix (or would fix wrongly).
_ALIASES: dict[str, tuple[str, ...]] = _alias_table(
    """
    pls=please plz=please plzz=please plse=please pleez=please pleaze=please plx=please txt=text
    txts=texts txting=texting textin=texting textn=texting msg=message msgs=messages
    msging=messaging msgn=messaging u=you r=are ur=your ya=yes yu=you thx=thanks thnx=thanks
    thanx=thanks tx=thanks ty=thanks tysm=thanks tks=thanks k=ok kk=ok okay=ok okey=ok yea=yes
    yeah=yes yep=yes yup=yes yas=yes ye=yes yah=yes nah=no nope=no naw=no nop=no unsub=unsubscribe
    optout=opt+out optin=opt+in tmrw=tomorrow tmr=tomorrow tmrow=tomorrow tmw=tomorrow tomm=tomorrow
    tomo=tomorrow tomorow=tomorrow tommorow=tomorrow tommorrow=tomorrow 2morrow=tomorrow
    2moro=tomorrow 2day=today 2nite=tonight tonite=tonight rn=right+now appt=appointment
    appts=appointments sched=schedule realter=realtor relator=realtor realitor=realtor
    realator=realtor reltor=realtor wensday=wednesday wendsday=wednesday wednsday=wednesday
    thurs=thursday tues=tuesday dis=this wat=what wut=what whats=what's whos=who's im=i'm ive=i've
    dont=don't didnt=didn't doesnt=doesn't wont=won't cant=can't havent=haven't hasnt=hasn't
    isnt=isn't arent=aren't wasnt=wasn't shouldnt=shouldn't lets=let's id=i'd youre=you're hse=house
    num=number nmbr=number intrested=interested intersted=interested interessted=interested
    availible=available avail=available
    """
)

# The words typo correction may produce. Only these: correcting towards anything else risks turning a
# real word into a keyword. START is deliberately absent (see the module docstring); HELP is harmless.
_FUZZY_TARGETS: tuple[str, ...] = (
    "stop", "unsubscribe", "cancel", "remove", "revoke", "texting", "messaging", "messages", "contact",
    "contacting", "number", "wrong", "interested", "schedule", "showing", "realtor", "agent", "already",
    "worth", "valuation", "appraisal", "tomorrow", "saturday", "sunday", "monday", "tuesday", "wednesday",
    "thursday", "friday", "available", "bought", "purchased", "stopall", "help",
)

# Real words within one typo of a target (from a US English word list, pruned of words nobody texts).
# They are never "corrected": "subscribe" must not become "unsubscribe", nor "top" become "stop".
_PROTECTED: frozenset[str] = _words(
    """
    agents appraisals atop besought bough brought canceled cancels chancel chancels contacts
    contract contracted contracting contracts devaluation encumber evaluation evaluations evoke
    fridays gent interests internet intersect intersected massages massaging message mondays nought
    numbed numbered numbers ought purchase purchaser purchasers purchases realtors reappraisal
    removed remover removers removes renumber reschedule revaluation revoked revokes saturdays
    scheduled scheduler schedulers schedules shadowing showering showings snowing sowing stomp stoop
    stops subscribe sundays testing texturing thursdays tomorrows top tuesdays unavailable
    uninterested unsubscribed unsubscribes validation valuations wednesdays worthy wring wrongs shop
    step store story stove spot post stay still stock stopped stopping cancelled canceling
    cancelling cancellation removal contacted texted interest hell helps hep whelp yelp magnet
    """
)

_KEY_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
_KEY_OFFSETS = (0.0, 0.5, 0.75, 1.25)
_KEY_POS = {
    key: (col + _KEY_OFFSETS[row], float(row))
    for row, keys in enumerate(_KEY_ROWS)
    for col, key in enumerate(keys)
}

_SEPARATOR_RE = re.compile(r"(\?+)|[.!;,\n\r\t…()\[\]{}\"“”«»|/\\*~]+|(?<!\d):|:(?!\d)|\s[-–—]+\s")
_TOKEN_RE = re.compile(r"\d{1,2}(?::\d{2})?\s?(?:am|pm)\b|\d{1,2}:\d{2}|[^\W_]+(?:'[^\W_]+)*")
_REPEAT_RE = re.compile(r"([a-z])\1{2,}")
_STOP_EMOJI = frozenset("🛑⛔🚫")
_SPELLED_RE = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ .\-]){2,}[^\W\d_](?![^\W\d_])")
_SPELLED_KEYWORDS = _words("stop end quit cancel unsubscribe optout help info start")


def _join_spelled(match: re.Match[str]) -> str:
    """ "s.t.o.p" -> "stop", only for the keywords; other initials ("u.s.a") stay as they are."""
    word = re.sub(r"[ .\-]", "", match.group(0))
    return f" {word} " if word in _SPELLED_KEYWORDS else match.group(0)


@dataclass(frozen=True)
class Clause:
    """Tokens of one sentence or comma-separated part; ``question`` when it ended with "?"."""

    tokens: tuple[str, ...]
    question: bool = False

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class Normalized:
    """A message ready for the rules. ``text`` joins the clauses with ``" | "`` so phrases never span two."""

    clauses: tuple[Clause, ...]
    corrected: bool
    stop_emoji_only: bool

    @cached_property
    def text(self) -> str:
        return " | ".join(c.text for c in self.clauses)

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        return tuple(t for c in self.clauses for t in c.tokens)

    @cached_property
    def _clause_starts(self) -> list[int]:
        starts, offset = [], 0
        for clause in self.clauses:
            starts.append(offset)
            offset += len(clause.text) + 3
        return starts

    def clause_at(self, offset: int) -> Clause:
        """The clause holding character ``offset`` of ``text``."""
        return self.clauses[max(0, bisect_right(self._clause_starts, offset) - 1)]


def _adjacent(a: str, b: str) -> bool:
    pa, pb = _KEY_POS.get(a), _KEY_POS.get(b)
    if pa is None or pb is None:
        return False
    return (pa[0] - pb[0]) ** 2 + (pa[1] - pb[1]) ** 2 < 1.69


def typo_distance(a: str, b: str, limit: int = 2) -> int:
    """Damerau-Levenshtein (optimal string alignment) with keyboard-aware substitutions.

    Insertions, deletions and adjacent transpositions cost 1; substituting a neighbouring key costs 1 and
    any other letter 2, so "stoo" is one typo from "stop" but "shop" is two. Returns ``limit + 1`` as soon
    as the lengths alone rule out a distance within ``limit``.
    """
    la, lb = len(a), len(b)
    if abs(la - lb) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(lb + 1))
    for i in range(1, la + 1):
        current = [i] + [0] * lb
        for j in range(1, lb + 1):
            if a[i - 1] == b[j - 1]:
                substitution = 0
            elif _adjacent(a[i - 1], b[j - 1]):
                substitution = 1
            else:
                substitution = 2
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + substitution)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, before[j - 2] + 1)
            current[j] = value
        before, previous = previous, current
    return previous[lb]


@lru_cache(maxsize=4096)
def _correct(token: str) -> str:
    """The fuzzy target one typo away from ``token`` (two for long words), if exactly one is closest."""
    if (
        len(token) < 3
        or len(token) > 16
        or token in _PROTECTED
        or token in _FUZZY_TARGETS
        or not token.isascii()
        or not token.isalpha()
    ):
        return token
    limit = 1 if len(token) <= 7 else 2
    best: list[tuple[int, str]] = []
    for target in _FUZZY_TARGETS:
        distance = typo_distance(token, target, limit)
        if distance <= limit:
            best.append((distance, target))
    if not best:
        return token
    best.sort()
    if len(best) > 1 and best[0][0] == best[1][0]:
        return token
    return best[0][1]


def _strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if unicodedata.category(ch) != "Mn")


def normalize(text: str) -> Normalized:
    """Split ``text`` into clauses of normalised tokens (see the module docstring). Never raises."""
    text = unicodedata.normalize("NFKC", text)
    visible = [ch for ch in text if not ch.isspace() and ch not in "\ufe0f\u200d"]
    stop_emoji_only = bool(visible) and all(ch in _STOP_EMOJI for ch in visible)
    text = _strip_accents(text.casefold())
    text = re.sub(r"[’‘ʼ`´]", "'", text)
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = text.replace("#", " number ")
    text = _SPELLED_RE.sub(_join_spelled, text)
    text = re.sub(r"(?<=[^\W\d_])-(?=[^\W\d_])", " ", text)
    # Symbols and emoji separate clauses like punctuation does ("STOP 😡 now" is two clauses).
    text = "".join("\n" if unicodedata.category(ch) in ("So", "Sk", "Cs", "Co") else ch for ch in text)

    clauses: list[Clause] = []
    corrected = False
    position = 0
    for match in [*_SEPARATOR_RE.finditer(text), None]:
        end = match.start() if match else len(text)
        piece = text[position:end]
        question = bool(match and match.group(1))
        position = match.end() if match else len(text)
        raw_tokens = [t.strip("'") for t in _TOKEN_RE.findall(piece)]
        raw_tokens = [re.sub(r"\s+", "", t) for t in raw_tokens if t]
        tokens: list[str] = []
        for raw in raw_tokens:
            squeezed = _REPEAT_RE.sub(r"\1", raw)
            for token in _ALIASES.get(squeezed, (squeezed,)):
                fixed = _correct(token)
                corrected = corrected or fixed != token
                tokens.append(fixed)
        if tokens:
            clauses.append(Clause(tuple(tokens), question))
        elif question and clauses:
            clauses[-1] = Clause(clauses[-1].tokens, True)
    return Normalized(
        clauses=tuple(clauses),
        corrected=corrected,
        stop_emoji_only=stop_emoji_only,
    )


# --------------------------------------------------------------------------------------------------
# Rule helpers
# --------------------------------------------------------------------------------------------------

_NEGATORS = _words(
    """
    not never don't didn't doesn't haven't hasn't won't can't cannot isn't aren't wasn't weren't
    shouldn't wouldn't nor without hadn't
    """
)
# Words that may sit between a negator and what it negates: "don't ever stop", "do not please stop".
_NEGATION_GAP = _words("ever you please just really even to gonna that yet")


def _negated(text: str, start: int) -> bool:
    """True when the words right before ``text[start:]`` (same clause) negate it."""
    # Only a short window is read, so a message with many matches stays linear.
    window = text[max(0, start - 64) : start]
    before = window.rsplit("|", 1)[-1].split()
    if start > 64 and "|" not in window:
        before = before[1:]
    if before and before[-1] in _NEGATORS:
        return True
    return len(before) >= 2 and before[-2] in _NEGATORS and before[-1] in _NEGATION_GAP


def _search(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The first match of ``pattern`` that is not negated."""
    for match in pattern.finditer(text):
        if not _negated(text, match.start()):
            return match
    return None


def _phrases(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(rf"(?:\b{p}\b)" for p in patterns))


_FILLER = _words(
    """
    please now right thanks thank you it all this that asap immediately just ok sorry me hey hi
    hello already again oh so lol seriously dude man pls
    """
)


def _keyword_clause(clause: Clause, keywords: re.Pattern[str]) -> str | None:
    """The keyword when the clause, minus filler words, is nothing but that keyword (maybe repeated)."""
    core = " ".join(t for t in clause.tokens if t not in _FILLER)
    if core and keywords.fullmatch(core):
        return core
    return None


def _whole(clauses: Iterable[Clause], keywords: re.Pattern[str]) -> str | None:
    for clause in clauses:
        found = _keyword_clause(clause, keywords)
        if found:
            return found
    return None


def _fullmatch_words(words: Iterable[str]) -> re.Pattern[str]:
    """Matches one or more of ``words`` separated by single spaces, and nothing else."""
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?:{alternatives})(?: (?:{alternatives}))*")


# --------------------------------------------------------------------------------------------------
# Opt-out
# --------------------------------------------------------------------------------------------------

_OPT_OUT_WORDS = _fullmatch_words(
    [
        "stop", "stopall", "stop all", "quit", "end", "revoke", "opt out", "cancel", "unsubscribe", "remove",
        "arret", "arrete", "no more", "no mas", "basta", "cancelar", "desuscribir", "parar", "enough",
        "opt me out", "unsubscribe me",
    ]
)
# Carrier words that only mean "stop" when they are the entire message.
_OPT_OUT_WHOLE_MESSAGE = _fullmatch_words(["td", "alto", "end it", "end all"])

_CONTACT_VERB = (
    r"(?:text|texts|texting|texted|message|messages|messaging|contact|contacting|call|calls|calling|email"
    r"|emails|emailing|bug|bugging|bother|bothering|spam|spamming|harass|harassing|sending|send|reach(?:ing)?"
    r" out(?: to)?|hit(?:ting)? me up)"
)
_OPT_OUT_PHRASES = _phrases(
    rf"(?:stop|quit|cease|end)(?: all| the| these| your| this| with the)? {_CONTACT_VERB}",
    r"(?:stop|quit|cease|end) (?:the |these |your |all |this )?(?:texts|messages|emails|calls|spam|alerts"
    r"|notifications|marketing)",
    r"unsubscribe",
    r"opt(?:ing)? (?:me |us )?out",
    r"stopall",
    r"revoke\w*",
    r"(?:withdraw|revoke|cancel|remove)(?: my| all)? consent",
    r"no more(?: of)?(?: (?:these|this|your|the|that))? (?:texts?|messages?|texting|messaging|calls?|emails?"
    r"|contact|spam|alerts|notifications|marketing|please)",
    r"wrong (?:number|person|phone|guy|girl|lady|name|contact|house|address|people)",
    r"(?:not|isn't|no longer) (?:my|the right|the correct) number",
    r"take (?:me|us|my (?:number|name|info|information|contact|phone|email|cell)) off",
    r"(?:remove|delete|erase|drop) (?:me|us|my (?:number|name|info|information|contact|phone|email|cell"
    r"|details|data))",
    r"off (?:your|the|ur|this|that|ya|all|any|these) (?:\w+ )?lists?",
    r"leave (?:me|us) alone",
    r"lose (?:my|this|our) number",
    r"go away",
    r"(?:fuck|f|piss|bugger|buzz|back) off",
    r"harass\w*",
    r"(?:never|didn't|did not) (?:signed up|sign up|subscribed|subscribe|opted in|opt in|asked for"
    r"|agreed to|gave (?:you )?(?:my number|permission|consent))",
    r"how do i (?:make (?:this|these|it|them) )?(?:stop|unsubscribe|opt out|get off)",
    r"report(?:ing)? (?:you|this|u)",
    r"block(?:ing|ed)? (?:you|this|u|your number)",
    r"no mas",
    r"no me (?:escribas|escriba|mandes|mande|envies|envie|contactes|contacte|llames|llame|molestes|moleste)",
    r"(?:basta|desuscribir|cancelar|arret|arrete|arreter|arretez)",
    r"cancel (?:my |the |all |these |this |your )?(?:subscription|texts|messages|notifications|alerts|texting"
    r"|messaging|emails|everything|all of (?:this|it)|the list)",
    # "don't (ever) text me", but not "don't stop texting me".
    r"(?:do not|don't|never|no)(?: (?!stop\b|quit\b|end\b|cancel\b)\w+){0,2}"
    rf" {_CONTACT_VERB} (?:me|us|this number|my number|again|anymore|any more|ever)",
    r"(?:don't|do not|never) want (?:any |anymore |any more |your |these |more )*"
    r"(?:texts|messages|calls|emails|contact|spam)",
    r"(?:don't|do not|never) want to (?:be |get )?(?:contacted|texted|messaged|called|emailed|bothered"
    r"|hear from)",
    r"never (?:contact|text|message|call|email) (?:me|us)",
)
# "I'd like to cancel", "I want to unsubscribe": a wish to leave that ends the clause.
_WANTS_OUT = re.compile(
    r"\b(?:want|like|need|wish|trying|have|going|wanna|how) to "
    r"(cancel|unsubscribe|opt out|stop|quit|end)(?= \||$)"
)
_SPAM = re.compile(r"\bspam\w*\b")
_APPOINTMENT = _phrases(
    r"showings?", r"appointments?", r"tours?", r"meeting", r"visit", r"viewing", r"open house",
    r"re ?schedule", r"walk ?through", r"inspection", r"closing",
    r"(?:mon|tues|tue|wed|wednes|thu|thur|thurs|fri|sat|satur|sun)(?:day)?", r"tomorrow", r"today",
    r"tonight", r"\d{1,2}(?::\d{2})?(?:am|pm)", r"instead", r"move it",
)
# Words around "stop" that make it "stop by" or a noun rather than "stop texting".
_STOP_BY_NEXT = _words(
    """
    by over at in into off past to on around and n through thru inside out back down up there here
    """
)
_STOP_NOUN_PREV = _words(
    """
    the a bus next last first one pit rest truck full final another each every our my your second
    third only quick few 1st 2nd 3rd
    """
)
_STOP_TAIL = _words(
    """
    it this that now please already asap immediately thanks thank ok right all these them the your
    with wasting bugging texting messaging contacting calling emailing sending spamming harassing
    for forever stop lol dude man
    """
)


def _stop_word(normalized: Normalized) -> str | None:
    """A free-standing imperative "stop"/"quit" in running text ("Not interested stop", "Stop I'm not
    selling"), but not "stop by", "the bus stop" or a negated stop."""
    tokens = normalized.tokens
    for clause in normalized.clauses:
        words = clause.tokens
        for i, word in enumerate(words):
            if word not in ("stop", "quit"):
                continue
            before = words[:i]
            after = words[i + 1] if i + 1 < len(words) else None
            if before and (
                before[-1] in _NEGATORS
                or (len(before) >= 2 and before[-2] in _NEGATORS and before[-1] in _NEGATION_GAP)
            ):
                continue
            if before and before[-1] in _STOP_NOUN_PREV:
                continue
            if after in _STOP_BY_NEXT:
                continue
            first_of_message = clause is normalized.clauses[0] and i == 0 and len(tokens) > 1
            if after is None or after in _STOP_TAIL or first_of_message:
                return word
    return None


def _opt_out(normalized: Normalized) -> Classification | None:
    if normalized.stop_emoji_only:
        return Classification(Intent.OPT_OUT, 0.9, "emoji:stop sign")
    whole = normalized.text.replace(" | ", " ")
    confidence = 0.9 if normalized.corrected else 1.0
    message = Clause(normalized.tokens)
    found = _keyword_clause(message, _OPT_OUT_WORDS) or _keyword_clause(message, _OPT_OUT_WHOLE_MESSAGE)
    if found:
        return Classification(Intent.OPT_OUT, confidence, f"keyword:{found}")
    appointment = _APPOINTMENT.search(whole) is not None
    for clause in normalized.clauses:
        found = _keyword_clause(clause, _OPT_OUT_WORDS)
        if found and not (appointment and found in ("cancel", "end")):
            return Classification(Intent.OPT_OUT, confidence - 0.05, f"keyword:{found}")
    match = _search(_OPT_OUT_PHRASES, normalized.text)
    if match:
        return Classification(Intent.OPT_OUT, 0.9, f"phrase:{match.group(0)}")
    for match in _WANTS_OUT.finditer(normalized.text):
        rescheduling = appointment and match.group(1) in ("cancel", "end")
        if not rescheduling and not _negated(normalized.text, match.start()):
            return Classification(Intent.OPT_OUT, 0.85, f"phrase:{match.group(0)}")
    for clause in normalized.clauses:
        # "This is spam" revokes; "is this spam?" asks who is writing (HELP answers that, with STOP).
        if not clause.question and _SPAM.search(clause.text):
            return Classification(Intent.OPT_OUT, 0.85, "phrase:spam")
    word = _stop_word(normalized)
    if word:
        return Classification(Intent.OPT_OUT, 0.85, f"word:{word}")
    return None


# --------------------------------------------------------------------------------------------------
# Opt-in and help
# --------------------------------------------------------------------------------------------------

_OPT_IN_WORDS = _fullmatch_words(
    ["start", "unstop", "resume", "subscribe", "resubscribe", "re subscribe", "opt in", "opt me in",
     "opt back in", "start again", "start back up", "restart", "yes start", "start texts", "subscribe me"]
)
_OPT_IN_PHRASES = _phrases(
    r"unstop",
    r"opt (?:me |us )?(?:back )?in",
    r"re ?subscribe",
    r"(?:resume|restart|start|turn on|continue|re ?start) (?:the |your |sending |getting |receiving )?"
    r"(?:me )?(?:texts|texting|messages|messaging|alerts|notifications)",
    r"start (?:texting|messaging|sending|contacting) (?:me|us)",
    r"(?:you can|ok to|okay to|please|feel free to|go ahead and) (?:text|message|contact) (?:me|us) again",
    r"sign (?:me|us) (?:back )?up",
    r"(?:subscribe|add) (?:me|us) (?:back|again|to (?:your|the) list)",
    r"want to (?:receive|get) (?:texts|messages|alerts) again",
)
_HELP_WORDS = _fullmatch_words(["help", "info", "information", "help me", "need help", "ayuda", "aide"])
_HELP_PHRASES = _phrases(
    r"who (?:is|are|'s|s) (?:this|you|texting me|messaging me|this texting|contacting me)",
    r"who's (?:this|texting|messaging)",
    r"who this",
    r"what (?:is|'s) this(?: about| regarding| for| re)?(?= \||$)",
    r"what's this(?: about| regarding| for)?(?= \||$)",
    r"what are you",
    r"(?:how|where) did (?:you|they|y'all) get (?:my|this) (?:number|info|information|contact|email|phone)",
    r"(?:is this|are you) (?:a |an )?(?:bot|robot|real person|real|human|person|automated|ai|machine"
    r"|recording)",
    r"what (?:company|business|agency|brokerage|team|firm) (?:is this|are you|is texting|is this from|do you"
    r" work for)",
    r"who do you (?:work|text) for",
    r"do i know you",
    r"is this (?:a )?(?:spam|scam|legit|real|for real)",
    r"how do i (?:reach|contact|talk to) (?:a human|a person|someone|support|you)",
)


def _opt_in(normalized: Normalized) -> Classification | None:
    if any(t in _NEGATORS for t in normalized.tokens):
        return None
    found = _whole(normalized.clauses, _OPT_IN_WORDS)
    if found and not normalized.corrected:
        return Classification(Intent.OPT_IN, 1.0, f"keyword:{found}")
    match = _OPT_IN_PHRASES.search(normalized.text)
    if match:
        return Classification(Intent.OPT_IN, 0.9, f"phrase:{match.group(0)}")
    return None


def _help(normalized: Normalized) -> Classification | None:
    found = _whole(normalized.clauses, _HELP_WORDS)
    if found:
        return Classification(Intent.HELP, 1.0, f"keyword:{found}")
    match = _HELP_PHRASES.search(normalized.text)
    if match:
        return Classification(Intent.HELP, 0.9, f"phrase:{match.group(0)}")
    return None


# --------------------------------------------------------------------------------------------------
# Closing intents: already sold, has an agent, not interested
# --------------------------------------------------------------------------------------------------

_PROPERTY = r"(?:house|home|place|property|condo|townhouse|townhome|unit|apartment|one|land|lot)"
_ALREADY_SOLD_WORDS = _fullmatch_words(
    ["sold", "sold already", "already sold", "we sold", "bought", "closed"]
)
_ALREADY_SOLD_PHRASES = _phrases(
    r"(?:already|just|recently|finally) (?:sold|bought|purchased|closed|moved|found|got)",
    rf"(?:sold|bought|purchased) (?:it|(?:the|our|my|a|this|that) (?:\w+ )?{_PROPERTY}|one|already|last"
    r" (?:week|month|year))",
    rf"(?:it|{_PROPERTY}) (?:is|was|has been|'s|got|just) (?:already |been )?(?:sold|under contract|pending)",
    r"(?:it's|its) (?:already )?(?:sold|under contract|pending)",
    r"(?:we're|we are|i'm|i am|currently|now|already|we've been|just went|went|it's|its|it is) (?:under"
    r" contract|in escrow|pending)",
    rf"closed on (?:a|our|the|my|a new) (?:\w+ )?{_PROPERTY}",
    r"closed (?:last|this|yesterday|already|on it)",
    rf"found (?:a|our|the|my) (?:new )?{_PROPERTY}",
    r"we sold",
    rf"(?:the|our|my) {_PROPERTY} (?:sold|closed)",
    r"in escrow",
    r"moved (?:already|out|away)",
    r"(?:no longer|not) (?:own|the owner)",
)
_AGENT = (
    r"(?:agent|agents|realtor|realtors|broker|brokers|rep|representative|buyer's agent|listing agent"
    r"|real estate agent|real estate broker)"
)
_HAS_AGENT_PHRASES = _phrases(
    r"(?:have|got|with|using|use|hired|signed with|working with|work with|going with|went with|talking to"
    rf"|talking with|represented by|sticking with|listed with|listing with) (?:an|a|my|our|another|other"
    rf"|different|the|one|1|my own|our own) (?:\w+ )?{_AGENT}",
    rf"my (?:\w+ )?(?:is|'s) (?:a|an) (?:licensed )?{_AGENT}",
    rf"(?:i'm|i am|we're|we are) (?:a |an )?(?:licensed )?{_AGENT}s?",
    rf"(?:my|our) (?:own )?{_AGENT}",
    r"(?:already|currently) (?:have|got|working with|work with|using|with) (?:someone|somebody|one)",
    r"working with someone",
    r"(?:i'm|we're|i am|we are|already) represented",
    r"have representation",
)
_NO_WORDS = _fullmatch_words(
    ["no", "no thanks", "no thank you", "pass", "i'll pass", "i'm good", "we're good", "all good", "i'm ok",
     "not interested", "not now", "maybe later", "later", "no sir", "no ma'am", "not really", "never mind",
     "nevermind", "we're ok"]
)
_NOT_INTERESTED_PHRASES = _phrases(
    r"not (?:\w+ )?interested",
    r"no (?:thanks|thank you|thankyou)",
    r"no longer (?:interested|looking|selling|buying|in the market|need|considering|planning|thinking)",
    r"not (?:\w+ )?(?:looking|selling|buying|moving|ready|in the market|planning|considering|thinking"
    r" (?:about|of) (?:selling|buying|moving))",
    r"(?:changed|change) (?:my|our) minds?",
    r"(?:decided|going|plan|planning|want) to (?:stay|rent|wait|hold off|keep (?:it|the house|our home))",
    r"stay(?:ing)? put",
    r"not (?:right )?now",
    r"maybe (?:later|next year|some other time|in the future|another time)",
    r"not for sale",
    r"not (?:at )?(?:this|the) (?:time|moment)",
    r"hold(?:ing)? off",
    r"no need",
    r"(?:don't|do not) (?:need|want) (?:to sell|to buy|to move|your help|help|an agent|a realtor|anything"
    r"|your services)",
    r"not a good time",
    r"never mind",
    r"take a pass",
)
_CONTRAST_RE = re.compile(r"\b(?:but|however|though|only|instead|although|now|still|except)\b")


def _tail(normalized: Normalized, offset: int) -> Normalized:
    """What follows character ``offset`` of ``normalized.text``, as its own message."""
    starts = normalized._clause_starts
    index = max(0, bisect_right(starts, offset) - 1)
    clause = normalized.clauses[index]
    rest = tuple(clause.text[max(0, offset - starts[index]) :].split())
    head = (Clause(rest, clause.question),) if rest else ()
    return Normalized(head + normalized.clauses[index + 1 :], normalized.corrected, False)


def _turns_to_request(normalized: Normalized, end: int) -> bool:
    """True when the message goes on, after "but"/"now"/"only", to ask for something: "not now, but what's
    my house worth?", "we sold our condo and now want to buy". The request then decides the intent."""
    contrast = _CONTRAST_RE.search(normalized.text, end)
    if not contrast:
        return False
    after = _tail(normalized, contrast.end())
    return bool(_interested(after, strong_only=False) or _home_value(after) or _question(after))


def _closing(normalized: Normalized) -> Classification | None:
    text = normalized.text
    found = _whole(normalized.clauses[:1], _ALREADY_SOLD_WORDS)
    if found:
        return Classification(Intent.ALREADY_SOLD, 0.9, f"keyword:{found}")
    checks = ((Intent.ALREADY_SOLD, _ALREADY_SOLD_PHRASES), (Intent.HAS_AGENT, _HAS_AGENT_PHRASES))
    for intent, phrases in checks:
        for match in phrases.finditer(text):
            if _negated(text, match.start()) or normalized.clause_at(match.start()).question:
                continue
            if _turns_to_request(normalized, match.end()):
                return None
            return Classification(intent, 0.85, f"phrase:{match.group(0)}")
    found = _keyword_clause(Clause(normalized.tokens), _NO_WORDS)
    if found:
        return Classification(Intent.NOT_INTERESTED, 0.9, f"keyword:{found}")
    refusal = _search(_NOT_INTERESTED_PHRASES, text)
    if refusal:
        if _turns_to_request(normalized, refusal.end()):
            return None
        if text.startswith(" in ", refusal.end()) and _CONTRAST_RE.search(text, refusal.end()):
            # "Not interested in condos, only houses" states a preference, not a refusal.
            return None
        return Classification(Intent.NOT_INTERESTED, 0.85, f"phrase:{refusal.group(0)}")
    return None


# --------------------------------------------------------------------------------------------------
# Interested, home value, question
# --------------------------------------------------------------------------------------------------

_DAY = (
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekend|tomorrow|today|tonight|this week"
    r"|next week|end of (?:the )?(?:month|week)|mon|tue|wed|thu|thur|fri|sat|sun)"
)
_TIME = r"(?:\d{1,2}(?::\d{2})?(?:am|pm)|noon|morning|afternoon|evening|lunch|night|\d{1,2}:\d{2})"
_STRONG_INTEREST = _phrases(
    r"(?:call|ring|phone) (?:me|us)",
    r"give (?:me|us) a (?:call|ring)",
    r"(?:can|could|would|will|please have) (?:you|someone|somebody|an agent|your agent|the agent|\w+) "
    r"(?:please )?(?:call|contact|reach out to|phone) (?:me|us)",
    r"schedule",
    r"set up (?:a |an )?(?:showing|tour|call|meeting|appointment|time|visit|viewing)",
    r"(?:showing|showings|tour|viewing|walkthrough|walk through|open house|appointment|appointments)",
    r"(?:see|view|look at|check out|tour|visit|go see) (?:it|the (?:\w+ )?(?:house|home|place|property|condo"
    r"|inside|listing|unit|one)|this (?:house|home|place|one)|that (?:house|home|place|one)|inside|them|some"
    r" (?:homes|houses|places|listings)|homes|houses|places)",
    r"(?:meet|meeting|meet up)",
    r"(?:talk|speak|chat) (?:to|with) (?:an?|the|your|someone|somebody|a real|a human|person|agent"
    r"|realtor|you|u|him|her|them)",
    r"(?:talk|chat) (?:today|tomorrow|soon|later|this week|more)",
    r"let's (?:talk|chat|meet|do it|go|see|set|schedule|book|look|connect)",
    r"(?:can|could|should|shall) we (?:talk|chat|meet|speak|connect|get together|hop on a call)",
    r"(?:let's do|i can do|we can do|i could do|we could do|i'm free|we're free) (?:next |this )?"
    rf"(?:{_DAY}|{_TIME})",
    r"(?:come|stop|swing|drop) (?:by|over)",
    r"book",
    r"(?:available|free) (?:on|this|next|tomorrow|today|tonight|after|before|at|any|all|saturday|sunday"
    r"|monday|tuesday|wednesday|thursday|friday|weekend)",
    r"when can (?:we|i|you)",
    r"can we do",
    r"(?:how|what) about " + _DAY,
    rf"{_DAY}(?: {_TIME})? (?:works|is good|is fine|is great|is perfect|would work|could work)",
    rf"(?:works|free|available|good) {_DAY}",
    r"(?:that|this|it|which) (?:works|time works|day works)",
    r"(?:call|text) (?:me )?(?:back|anytime|any time)",
    r"(?:i'd|i would|we'd|we would|want to|wanna|like to|love to) (?:\w+ )?(?:see|tour|visit|talk|meet|chat"
    r"|speak)",
)
_WEAK_WORDS = _fullmatch_words(
    ["yes", "sure", "absolutely", "definitely", "of course", "please do", "sounds good", "sounds great",
     "sounds perfect", "i'm interested", "interested", "very interested", "i'd like that",
     "i would like that", "yes please", "tell me more", "more info", "count me in", "i'm in", "let's do it",
     "let's go", "perfect",
     "ok let's do it", "that works", "works for me", "go ahead", "i am interested", "still looking",
     "yes i'm still looking", "i'm still looking", "we're still looking", "yes sir", "yes ma'am", "for sure"]
)
_WEAK_INTEREST = _phrases(
    r"(?:i'm|i am|we're|we are|very|still|definitely|really|super) interested",
    r"interested in (?:it|the|this|that|seeing|learning|buying|selling|more)",
    r"(?:keep|don't stop|do not stop|never stop) (?:sending|texting|them coming|me posted|me updated"
    r"|in touch)",
    r"(?:send|text|email) (?:me )?(?:more|the|some) (?:info|information|details|listings|homes|pictures"
    r"|photos)",
    r"still (?:looking|searching|interested|in the market|house hunting)",
    r"(?:i'm|we're|i am|we are) (?:looking|ready) to (?:buy|sell|move)",
    r"(?:want|wanna|would like|looking|need|planning|ready|thinking about|hoping) to (?:buy|sell|list|move)",
)
_HOME_VALUE_PHRASES = _phrases(
    rf"(?:what's|what is|what|how much) (?:is )?(?:my|our|the) (?:\w+ )?{_PROPERTY}(?: \w+){{0,2}} worth",
    r"(?:what's|what is|what|how much) (?:is |would |could )?(?:mine|ours) (?:be )?worth",
    rf"(?:my|our) (?:\w+ )?{_PROPERTY}(?: \w+){{0,3}} worth",
    r"how much (?:could|can|would|will|might|should|do you think) (?:i|we) (?:get|sell|list|ask)",
    rf"how much (?:is|would|could|will|can|might) (?:my|our) (?:\w+ )?{_PROPERTY}",
    r"(?:home|house|property|market|condo|land) (?:value|values|valuation|price estimate|appraisal|estimate"
    r"|worth)",
    r"(?:valuation|appraisal|cma|comps|comparables?|market analysis|price my|value my|value of my"
    r"|value of our|worth of my)",
    r"what (?:could|can|would|will|might) (?:i|we) (?:get|sell|list)",
    rf"what (?:would|could|will|might) (?:my|our|the) (?:\w+ )?{_PROPERTY} (?:sell|go|list) for",
    r"(?:sell|list) (?:it |my \w+ |our \w+ )?for how much",
)
_QUESTION_START = _words(
    """
    what when where how which who why is are does do can could will would any has have did was
    should may might what's where's how's when's
    """
)
_TOPICS = _phrases(
    r"hoa", r"fees?", r"taxes", r"tax", r"price", r"pricing", r"cost", r"bedrooms?", r"beds?", r"bathrooms?",
    r"baths?", r"sq ?ft", r"square (?:feet|footage)", r"garage", r"pool", r"schools?", r"district", r"pets?",
    r"lot size", r"acres?", r"year built", r"roof", r"hvac", r"utilities", r"parking", r"commute",
    r"neighborhood", r"available", r"availability", r"still for sale", r"listing price", r"mls",
    r"down payment", r"mortgage", r"interest rates?", r"financing", r"lender", r"pre ?approved", r"flood",
    r"basement", r"yard", r"kitchen", r"price drop", r"negotiable", r"offers?", r"rent", r"zoning",
)


def _interested(normalized: Normalized, *, strong_only: bool = True) -> Classification | None:
    match = _STRONG_INTEREST.search(normalized.text)
    if match:
        return Classification(Intent.INTERESTED, 0.85, f"phrase:{match.group(0)}")
    if strong_only:
        return None
    found = _whole(normalized.clauses, _WEAK_WORDS)
    if found:
        return Classification(Intent.INTERESTED, 0.6, f"keyword:{found}")
    match = _search(_WEAK_INTEREST, normalized.text)
    if match:
        return Classification(Intent.INTERESTED, 0.6, f"phrase:{match.group(0)}")
    return None


def _home_value(normalized: Normalized) -> Classification | None:
    match = _HOME_VALUE_PHRASES.search(normalized.text)
    if match:
        return Classification(Intent.HOME_VALUE, 0.85, f"phrase:{match.group(0)}")
    return None


def _question(normalized: Normalized) -> Classification | None:
    if any(c.question for c in normalized.clauses):
        return Classification(Intent.QUESTION, 0.6, "punctuation:?")
    if any(c.tokens[0] in _QUESTION_START and len(c.tokens) >= 3 for c in normalized.clauses):
        return Classification(Intent.QUESTION, 0.5, "word:" + normalized.clauses[0].tokens[0])
    match = _TOPICS.search(normalized.text)
    if match:
        return Classification(Intent.QUESTION, 0.5, f"topic:{match.group(0)}")
    return None


# --------------------------------------------------------------------------------------------------
# Meeting hints
# --------------------------------------------------------------------------------------------------

_DAY_NAMES = {
    "monday": "Monday", "tuesday": "Tuesday", "wednesday": "Wednesday", "thursday": "Thursday",
    "friday": "Friday", "saturday": "Saturday", "sunday": "Sunday", "mon": "Monday", "tue": "Tuesday",
    "wed": "Wednesday", "thu": "Thursday", "thur": "Thursday", "fri": "Friday", "sat": "Saturday",
    "sun": "Sunday",
}
_RELATIVE_DAYS = (
    "tomorrow", "today", "tonight", "this weekend", "next weekend", "weekend", "this week", "next week",
    "end of the month", "end of month", "end of the week", "next month",
)
# Three-letter abbreviations are also ordinary words ("sat down", "sun room", "we'd" typed as "wed"),
# so they only count next to scheduling words.
_ABBREVIATION_PREV = _words("on this next do say until by til till or and how about what works maybe")
_ABBREVIATION_NEXT = _words("at morning afternoon evening night works is or and")
_PARTS_OF_DAY = frozenset(("morning", "afternoon", "evening", "night", "noon", "lunch", "lunchtime"))
_CLOCK_RE = re.compile(r"(\d{1,2})(?::(\d{2}))?(am|pm)?")
_TIME_QUALIFIERS = frozenset(("after", "before", "around", "by", "at", "about"))


def _day_mentions(tokens: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(start, end, label) for every day mentioned in ``tokens``."""
    found: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        matched = False
        for phrase in _RELATIVE_DAYS:
            words = phrase.split()
            if tuple(tokens[i : i + len(words)]) == tuple(words):
                found.append((i, i + len(words), phrase))
                i += len(words)
                matched = True
                break
        if matched:
            continue
        if token in _DAY_NAMES:
            if len(token) <= 4:
                before = tokens[i - 1] if i else None
                after = tokens[i + 1] if i + 1 < len(tokens) else None
                timed = after is not None and _CLOCK_RE.fullmatch(after) is not None
                scheduling = before in _ABBREVIATION_PREV or after in _ABBREVIATION_NEXT or timed
                if not (scheduling or after is None):
                    i += 1
                    continue
            label = _DAY_NAMES[token]
            start = i
            if i and tokens[i - 1] in ("next", "this"):
                label = f"{tokens[i - 1]} {label}"
                start = i - 1
            found.append((start, i + 1, label))
        i += 1
    return found


def _time_mentions(tokens: tuple[str, ...]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for i, token in enumerate(tokens):
        clock = _CLOCK_RE.fullmatch(token)
        before = tokens[i - 1] if i else None
        if clock and (clock.group(3) or clock.group(2) or before in _TIME_QUALIFIERS):
            hour = int(clock.group(1))
            if not 1 <= hour <= 12 and not clock.group(2):
                continue
            qualifier = before if before in ("after", "before", "around") else "at"
            found.append((i, f"{qualifier} {token}"))
        elif token in _PARTS_OF_DAY:
            found.append((i, "at noon" if token == "noon" else token))
    return found


def extract_meeting_hint(text: str | Normalized) -> str | None:
    """The proposed meeting time in ``text``, or ``None``: "Saturday", "tomorrow at 3pm", "next Tuesday at
    10:30am", "Wednesday morning", "after 5pm", "end of the month"."""
    normalized = normalize(text) if isinstance(text, str) else text
    tokens = normalized.tokens
    days = _day_mentions(tokens)
    times = _time_mentions(tokens)
    if not days and not times:
        return None
    if not days:
        # A part of day alone ("good morning") is a greeting more often than a proposal.
        clocks = [label for _, label in times if label not in _PARTS_OF_DAY]
        return clocks[-1] if clocks else None
    start, end, day = days[-1]
    near = [(min(abs(i - start), abs(i - end + 1)), i, label) for i, label in times if not start <= i < end]
    near = [n for n in near if n[0] <= 5]
    if not near:
        return day
    _, _, label = min(near)
    if label in _PARTS_OF_DAY:
        return "tonight" if day == "today" and label in ("evening", "night") else f"{day} {label}"
    return f"{day} {label}"


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------

_QUOTE_HEADER_RE = re.compile(
    r"^(?:on .{0,200}wrote:|-{2,}\s*original message\s*-{2,}|from: .*|sent from my .*|_{5,}|-- )\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def _unquoted(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(">")).strip()


def strip_quoted_reply(text: str) -> str:
    """The new part of an email reply, so the bot's own quoted "Reply STOP"/"UNSUBSCRIBE" footer is never
    read as the lead's words: quoted lines (``>``) are dropped, and so is everything from the first
    "On ... wrote:" / "Original Message" / "From:" header or signature marker on, unless nothing but quotes
    comes before it (a reply written below the quote): then the unquoted lines below it are kept."""
    header = _QUOTE_HEADER_RE.search(text)
    if not header:
        return _unquoted(text)
    above = _unquoted(text[: header.start()])
    if above:
        return above
    return _unquoted(text[header.end() :])


def classify(text: str) -> Classification:
    """Classify one inbound message; see the module docstring for the rules and their order.

    Never raises, runs in time linear in ``len(text)``, and is deterministic.
    """
    text = text if isinstance(text, str) else str(text)
    normalized = normalize(text)
    if not normalized.clauses and not normalized.stop_emoji_only:
        return Classification(Intent.OTHER, 0.3 if text.strip() else 0.0)
    verdict = _opt_out(normalized)
    if verdict:
        return verdict
    verdict = _opt_in(normalized) or _help(normalized)
    if verdict:
        return verdict
    hint = extract_meeting_hint(normalized)
    verdict = (
        _closing(normalized)
        or _interested(normalized)
        or _home_value(normalized)
        or _interested(normalized, strong_only=False)
        or _question(normalized)
        or Classification(Intent.OTHER, 0.3)
    )
    if hint and verdict.intent in (Intent.INTERESTED, Intent.QUESTION):
        return Classification(verdict.intent, verdict.confidence, verdict.matched, hint)
    return verdict

